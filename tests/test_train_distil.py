"""The distil stage on a tiny real Llama: continuations keep the stop token the model ended on (locally,
from `medusa-trt run`'s token ids, and from a text-only server that names it); batched local decoding
gives the one-at-a-time tokens at tp 1 and tp 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.loopback import app_in_thread

PROMPTS = ["def add(a, b):\n", "The quick brown fox", "x = 1\ny = 2\n"]
BUDGET = 24


def _greedy(engine: Any, ids: list[int], max_tokens: int = BUDGET) -> list[int]:
    from medusa_trt.runtime.types import SamplingParams

    return [t for c in engine.generate(ids, SamplingParams(max_tokens=max_tokens), medusa=False) for t in c.token_ids]


@pytest.fixture(scope="module")
def stopping(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, list[int], list[int], int]:
    """A checkpoint whose model stops greedily on PROMPTS[0] after a few tokens: a token it produces
    there is made a second EOS id in generation_config.json (as Llama 3.1 lists 128001/128008/128009).
    Returns (checkpoint, prompt ids, the tokens before the stop, the stop id)."""
    from medusa_trt.runtime.api import load_engine
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.data import encode_prompt
    from tests.helpers.checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("distil-stop")
    plain = make_checkpoint(tiny_llama, root / "plain")
    tok = load_tokenizer(plain)
    ids = encode_prompt(tok, PROMPTS[0])
    with load_engine(plain) as engine:
        out = _greedy(engine, ids)
    assert len(out) == BUDGET and tok.eos_token_id not in out  # the plain model runs to the budget
    k = next(i for i in range(3, len(out)) if out[i] not in out[:i])
    model = root / "hf"
    shutil.copytree(tiny_llama, model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_token_id, out[k]]}))
    return make_checkpoint(model, root / "ckpt"), ids, out[:k], out[k]


@pytest.fixture(scope="module")
def stopping_tp2(stopping: tuple[Path, list[int], list[int], int]) -> Path:
    """The same model and stop ids at tp 2."""
    from tests.helpers.checkpoints import make_checkpoint

    return make_checkpoint(stopping[0].parent / "hf", stopping[0].parent / "ckpt-tp2", tp=2)


@pytest.fixture(scope="module")
def served(stopping: tuple[Path, list[int], list[int], int]) -> Iterator[str]:
    from medusa_trt.runtime.api import load_engine
    from medusa_trt.serve import create_app

    with load_engine(stopping[0]) as engine, app_in_thread(create_app(engine, "tiny"), start_timeout_s=20) as url:
        yield url


def _jobs(tok: Any) -> list[Any]:
    from medusa_trt.train.data import encode_prompt
    from medusa_trt.train.distil import distil_jobs

    return distil_jobs([encode_prompt(tok, p) for p in PROMPTS], gen_tokens=BUDGET, seq_len=64, max_pos=256)


@pytest.mark.parametrize("batch", [1, 2])
def test_local_distil_ends_the_continuation_with_the_stop_token_produced(
    tmp_path: Path, stopping: tuple[Path, list[int], list[int], int], batch: int
) -> None:
    from medusa_trt.steps import Stage
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.distil import JOURNAL, local_generator, run_distil

    ckpt, ids, before, stop = stopping
    tok = load_tokenizer(ckpt)
    assert stop != tok.eos_token_id  # the second stop id, not the tokenizer's EOS: the one produced
    stage = Stage.at(tmp_path, "distil", {})
    got = run_distil(stage, _jobs(tok), local_generator(ckpt, "cpu", batch), lambda: None)
    assert got.sequences[0] == ids + before + [stop] and got.starts[0] == len(ids)
    lines = [json.loads(line) for line in (stage.dir / JOURNAL).read_text().splitlines()]
    assert lines[0]["ids"][-1] == stop and [r["i"] for r in lines] == [0, 1, 2]


def test_server_token_ids_end_with_the_stop_token_and_the_text_does_not(
    served: str, stopping: tuple[Path, list[int], list[int], int]
) -> None:
    from medusa_trt.train.backbone import load_tokenizer

    ckpt, ids, before, stop = stopping
    body = {"model": "tiny", "prompt": ids, "max_tokens": BUDGET, "temperature": 0.0, "return_token_ids": True}
    doc = httpx.post(f"{served}/v1/completions", json=body, timeout=60).json()
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["token_ids"] == [*before, stop]
    assert doc["usage"]["completion_tokens"] == len(choice["token_ids"])
    assert choice["text"] == load_tokenizer(ckpt).decode(before, skip_special_tokens=True)
    # a generation that ends on its budget has no stop token to add
    doc = httpx.post(f"{served}/v1/completions", json={**body, "max_tokens": len(before)}, timeout=60).json()
    assert doc["choices"][0]["finish_reason"] == "length" and doc["choices"][0]["token_ids"] == before


def test_run_prompt_json_token_ids_end_with_the_stop_token(
    stopping: tuple[Path, list[int], list[int], int], capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --prompt --json` counts and lists ids as the server does: the stop token is in token_ids."""
    from medusa_trt.cli import run

    ckpt, _ids, before, stop = stopping
    assert run(["run", str(ckpt), "--prompt", PROMPTS[0], "--max-tokens", str(BUDGET), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["finish_reason"] == "stop" and doc["token_ids"] == [*before, stop]
    assert doc["completion_tokens"] == len(doc["token_ids"])


def test_teacher_distils_the_same_tokens_as_local_with_the_stop_token(
    tmp_path: Path, served: str, stopping: tuple[Path, list[int], list[int], int]
) -> None:
    from medusa_trt.steps import Stage
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.distil import local_generator, run_distil, teacher_generator

    ckpt, _, _, stop = stopping
    tok = load_tokenizer(ckpt)
    jobs = _jobs(tok)
    local = run_distil(Stage.at(tmp_path, "local", {}), jobs, local_generator(ckpt, "cpu"), lambda: None)
    gen = teacher_generator(served, tok, api_key=None, concurrency=2)
    remote = run_distil(Stage.at(tmp_path, "teacher", {}), jobs, gen, lambda: None)
    assert remote.sequences == local.sequences and remote.sequences[0][-1] == stop


# --- batched local decoding ------------------------------------------------------------------------


@pytest.mark.parametrize("tp", [1, 2])
def test_greedy_batch_equals_one_generate_per_prompt(
    stopping: tuple[Path, list[int], list[int], int], stopping_tp2: Path, tp: int
) -> None:
    """Three prompts of different lengths: one stops early on its EOS, one hits a short budget, one
    runs to a long one; then rows retire mid-batch (their cache rows dropped on every rank)."""
    from medusa_trt.runtime.api import load_engine
    from medusa_trt.runtime.types import SamplingParams

    ckpt, ids, before, stop = stopping
    with load_engine(ckpt if tp == 1 else stopping_tp2) as engine:
        assert engine.tp == tp
        prompts = [ids, engine.tokenizer.encode("The quick brown fox jumps"), engine.tokenizer.encode("x")]
        assert len({len(p) for p in prompts}) == 3
        budgets = [BUDGET, 5, BUDGET + 6]
        got = engine.greedy_batch(prompts, budgets)
        for p, b, c in zip(prompts, budgets, got, strict=True):
            chunks = list(engine.generate(p, SamplingParams(max_tokens=b), medusa=False))
            assert c.token_ids == [t for ch in chunks for t in ch.token_ids]
            assert (c.finish_reason, c.stop_token) == (chunks[-1].finish_reason, chunks[-1].stop_token)
    assert (got[0].token_ids, got[0].finish_reason, got[0].stop_token) == (before, "stop", stop)
    assert [(len(c.token_ids), c.finish_reason) for c in got[1:]] == [(5, "length"), (BUDGET + 6, "length")]


def test_greedy_batch_refuses_bad_input_in_one_line(stopping: tuple[Path, list[int], list[int], int]) -> None:
    from medusa_trt.errors import InvalidInputError
    from medusa_trt.runtime.api import load_engine

    with load_engine(stopping[0]) as engine:
        for prompts, budgets in (([[1, 2]], [0]), ([[1, 2], []], [3, 3]), ([[1, 10**6]], [3]), ([[1]], [3, 3])):
            with pytest.raises(InvalidInputError):
                engine.greedy_batch(prompts, budgets)
        assert engine.greedy_batch([[1, 2]], [2])[0].finish_reason in ("stop", "length")  # still usable


def test_dry_run_distil_memory_grows_with_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    from medusa_trt.cli import run

    stages = []
    for batch in ("1", "16"):
        args = ["--model", "llama-3.1-70b", "--profile", "hgx-h200-bf16-tp8", "--seq-len", "2048", "--share-lm-head"]
        assert run(["heads", "train", "--dry-run", "--json", "--distil-batch", batch, *args]) == 0
        stages.append(json.loads(capsys.readouterr().out)["stages"])
    one, many = stages[0]["distil"]["breakdown_gib"], stages[1]["distil"]["breakdown_gib"]
    # 80 layers x K and V x 1 KV head per rank (8 over tp 8) x 128 x 2048 positions x 2 bytes, per sequence
    assert one["kv_cache"] == pytest.approx(2 * 80 * 128 * 2048 * 2 / 2**30, rel=1e-2)
    assert many["kv_cache"] == pytest.approx(16 * one["kv_cache"], rel=1e-2)
    assert many["backbone_shard"] == one["backbone_shard"]
    assert stages[1]["distil"]["est_seconds"] < stages[0]["distil"]["est_seconds"]  # a step serves 16 rows
    assert stages[1]["hidden"] == stages[0]["hidden"]


# --- a text-only teacher (no token ids): the stop id only where the server names it ----------------


def _text_teacher(tok: Any, text_ids: list[int], extra: dict[str, Any]) -> Any:
    """A FastAPI app answering like a server without ``return_token_ids``: text, usage one token longer
    (the stop token it counted), finish_reason "stop", and ``extra`` in the choice."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "teacher", "object": "model"}]}

    @app.post("/v1/completions")
    def complete(body: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": 0, "text": tok.decode(text_ids), "finish_reason": "stop", **extra}
        n = len(body["prompt"])
        usage = {"prompt_tokens": n, "completion_tokens": len(text_ids) + 1, "total_tokens": n + len(text_ids) + 1}
        return {"id": "cmpl-1", "object": "text_completion", "model": "teacher", "choices": [choice], "usage": usage}

    return app


@pytest.mark.parametrize(
    ("extra", "want"),
    [({"stop_reason": 7}, 7), ({"stop_reason": None}, "eos"), ({}, None), ({"stop_reason": "###"}, None)],
    ids=["stop-token-id", "primary-eos", "not-said", "stop-string"],
)
def test_text_only_teacher_appends_the_stop_token_it_names(tiny_llama: Path, extra: dict[str, Any], want: Any) -> None:
    from transformers import AutoTokenizer

    from medusa_trt.train.distil import Job, teacher_generator

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    text_ids = tok.encode("def add(a, b):", add_special_tokens=False)
    assert tok.encode(tok.decode(text_ids), add_special_tokens=False) == text_ids  # the text round-trips
    with app_in_thread(_text_teacher(tok, text_ids, extra)) as url:
        [got] = list(teacher_generator(url, tok, api_key=None, concurrency=1)([Job(0, [1, 2, 3], 16)]))
    tail = [] if want is None else [tok.eos_token_id if want == "eos" else want]
    assert got == text_ids + tail
