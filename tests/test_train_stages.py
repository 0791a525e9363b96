"""`heads train` at scale, on a tiny real Llama: tp hidden states, DDP, teacher distillation, kills
in every stage, shared lm_head heads through convert and the runtime, data formats, dry-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HANG_S

PROMPTS = [
    "def add(a, b):\n",
    "import os\n",
    "class A:\n",
    "x = 1\ny = 2\n",
    "while True:\n",
    "return None\n",
    "for i in range(10):\n",
    "The quick brown fox",
]


def _cfg(**kw: Any) -> Any:
    from medusa_trt.train.trainer import TrainConfig

    base: dict[str, Any] = dict(
        num_heads=3, steps=16, lr=3e-3, batch_size=4, seq_len=48, gen_tokens=24, log_every=8,
        checkpoint_every=4, progress=False, shard_mib=0.02,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _heads(d: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(d / "medusa_lm_head.safetensors"))


def _max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_hidden_states_at_tp2_equal_transformers(tmp_path: Path, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from medusa_trt.steps import Stage
    from medusa_trt.train.hidden import HiddenCache, run_hidden
    from tests.helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck", tp=2)
    seqs = [[0, 5, 9, 33, 7, 120, 64], list(range(3, 40)), [1, 2]]
    stage = Stage.at(tmp_path, "hidden", {"t": 1})
    run_hidden(stage, ckpt, seqs, device="cpu", per_shard=2, advance=lambda: None)
    assert sorted(p.name for p in stage.dir.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    cache = HiddenCache(stage.dir, len(seqs), 2)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    for i, s in enumerate(seqs):
        with torch.no_grad():
            want = hf(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0]  # after the final norm
        got = cache[i]
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Any]:
    """The same training at tp 1, at tp 2 (hidden stage), and with 2 DDP processes."""
    from medusa_trt.train.trainer import train_heads

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, kw in (("tp1", {}), ("tp2", {"tp": 2}), ("ddp2", {"train_devices": 2})):
        out[name] = (root / name, train_heads(tiny_llama, root / name, data=PROMPTS, config=_cfg(**kw)))
    return out


def test_heads_equal_at_tp1_and_tp2(three_runs: dict[str, Any]) -> None:
    (a, ra), (b, rb) = three_runs["tp1"], three_runs["tp2"]
    assert json.loads((Path(rb.checkpoint) / "config.json").read_text())["mapping"]["tp_size"] == 2
    assert _max_diff(_heads(a), _heads(b)) < 1e-4
    assert ra.final_loss < ra.initial_loss  # it trained: equal heads are not two untouched inits


def test_two_ddp_processes_equal_one_with_the_same_global_batch(three_runs: dict[str, Any]) -> None:
    (a, ra), (c, rc) = three_runs["tp1"], three_runs["ddp2"]
    assert _max_diff(_heads(a), _heads(c)) < 1e-4
    assert [h["step"] for h in ra.history] == [h["step"] for h in rc.history]
    for x, y in zip(ra.history, rc.history, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-4)  # the global batch's loss


def test_quality_table_and_expected_tokens(three_runs: dict[str, Any]) -> None:
    from medusa_trt.medusa.tree_builder import expected_tokens_per_step, parse_accuracy_csv
    from medusa_trt.medusa.trees import load_tree

    out, res = three_runs["tp1"]
    table = parse_accuracy_csv((out / "accuracy.csv").read_text())
    assert len(table) == 3 and all(len(r) == 10 for r in table)
    assert [r[0] for r in table] == pytest.approx(res.top1, abs=1e-6)  # the CSV keeps 6 decimals
    assert [sum(r[:5]) for r in table] == pytest.approx(res.top5, abs=1e-5)
    assert res.expected_tokens_per_step == pytest.approx(expected_tokens_per_step(table, load_tree(res.tree)), abs=1e-4)
    doc = json.loads((out / "training.json").read_text())
    assert doc["tree"] == res.tree and doc["expected_tokens_per_step"] == pytest.approx(res.expected_tokens_per_step)


def test_teacher_url_distils_the_same_tokens_as_local(tmp_path: Path, tiny_llama: Path) -> None:
    from medusa_trt.bench.server import engine_server
    from medusa_trt.steps import Stage
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.data import encode_prompt
    from medusa_trt.train.distil import distil_jobs, local_generator, run_distil, teacher_generator
    from tests.helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck")
    tok = load_tokenizer(ckpt)
    jobs = distil_jobs([encode_prompt(tok, p) for p in PROMPTS], gen_tokens=24, seq_len=48, max_pos=256)
    local = run_distil(Stage.at(tmp_path, "local", {}), jobs, local_generator(ckpt, "cpu"), lambda: None)
    with engine_server(ckpt, start_timeout_s=120) as url:
        remote = run_distil(
            Stage.at(tmp_path, "teacher", {}), jobs, teacher_generator(url, tok, api_key=None, concurrency=3),
            lambda: None,
        )  # fmt: skip
    assert remote.sequences == local.sequences and remote.starts == local.starts
    assert sum(len(s) - st for s, st in zip(local.sequences, local.starts, strict=True)) > 3 * len(PROMPTS)


# --- SIGKILL in every stage -------------------------------------------------------------------------


def _argv(model: Path, out: Path) -> list[str]:
    prompts = out.parent / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return [
        sys.executable, "-m", "medusa_trt", "heads", "train", "--model", str(model), "--output", str(out),
        "--data", str(prompts), "--num-heads", "2", "--steps", "30", "--batch-size", "4", "--seq-len", "48",
        "--gen-tokens", "24", "--checkpoint-every", "3", "--shard-mib", "0.01", "--json",
        "--distil-batch", "4",  # 16 prompts: the kill lands after a batch's lines, before the next batch's
    ]  # fmt: skip


def _stage_dir(out: Path, name: str) -> Path | None:
    found = sorted((out / ".train").glob(f"{name}-*"))
    return found[0] if found else None


def _kill_when(argv: list[str], ready: Any, env: dict[str, str]) -> None:
    """Start the command, SIGKILL it as soon as ``ready()`` holds (within 5 ms), wait for it to die."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HANG_S
        while not ready():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_in_every_stage_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"

    def in_stage(name: str, marker: str) -> Any:
        def ready() -> bool:  # the marker file exists and holds something
            d = _stage_dir(out, name)
            return d is not None and any(p.stat().st_size > 0 for p in d.glob(marker))

        return ready

    _kill_when(_argv(ckpt, out), in_stage("distil", "sequences.jsonl"), env)
    distil = _stage_dir(out, "distil")
    assert distil is not None and not (distil / "done.json").exists()
    _kill_when(_argv(ckpt, out), in_stage("hidden", "shard-00001.safetensors"), env)
    hidden = _stage_dir(out, "hidden")
    assert (distil / "done.json").exists() and hidden is not None and not (hidden / "done.json").exists()
    _kill_when(_argv(ckpt, out), in_stage("train", "state.pt"), env)
    train = _stage_dir(out, "train")
    assert (hidden / "done.json").exists() and train is not None and not (train / "done.json").exists()
    assert not (out / "config.json").exists()  # no heads directory that looks complete

    done = subprocess.run(_argv(ckpt, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads(done.stdout)
    assert resumed["resumed_from"] > 0 and resumed["stages"]["distil"]["cached"]
    # the same command's settings, uninterrupted, in this process
    from medusa_trt.train.trainer import TrainConfig, train_heads

    straight = TrainConfig(num_heads=2, steps=30, batch_size=4, seq_len=48, gen_tokens=24, checkpoint_every=3,
                           shard_mib=0.01, progress=False)  # fmt: skip
    train_heads(ckpt, tmp_path / "straight", data=str(out.parent / "prompts.jsonl"), config=straight)
    a, b = _heads(out), _heads(tmp_path / "straight")
    assert _max_diff(a, b) < 1e-6


# --- shared lm_head ---------------------------------------------------------------------------------


def test_shared_lm_head_heads_convert_run_losslessly_and_accept(tmp_path: Path, tiny_llama: Path) -> None:
    import torch

    from medusa_trt.runtime import load_engine
    from medusa_trt.runtime.types import SamplingParams
    from medusa_trt.train.backbone import read_lm_head
    from medusa_trt.train.trainer import train_heads
    from tests.helpers.checkpoints import make_checkpoint

    res = train_heads(tiny_llama, tmp_path / "heads", data=PROMPTS, config=_cfg(steps=40, share_lm_head=True))
    assert res.final_loss < res.initial_loss
    state = _heads(tmp_path / "heads")
    base = read_lm_head(Path(res.checkpoint))
    assert all(torch.equal(state[f"{k}.1.weight"], base) for k in range(3))  # exact copies of the frozen lm_head
    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck", heads=tmp_path / "heads", max_draft_len=16)
    with load_engine(ckpt) as engine:
        accepted, steps = 0, 0
        for p in PROMPTS[:4]:
            ids = engine.tokenizer.encode(p)
            params = SamplingParams(max_tokens=24, temperature=0.0)
            plain = [t for c in engine.generate(ids, params, medusa=False) for t in c.token_ids]
            gen = engine.generate(ids, params, medusa=True)
            fast = [t for c in gen for t in c.token_ids]
            assert fast == plain  # greedy Medusa is lossless
            assert gen.stats is not None
            accepted += sum(gen.stats.accepted_per_depth)
            steps += gen.stats.num_steps
    assert accepted > 0 and steps > 0


# --- data and dry-run -------------------------------------------------------------------------------


def test_sharegpt_and_openai_messages_use_the_chat_template(tmp_path: Path, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    from medusa_trt.train.data import encode_prompt, load_prompts

    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}]))
    msgs = tmp_path / "messages.jsonl"
    msgs.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    a, b = load_prompts(share), load_prompts(msgs)
    assert a == b == [[{"role": "user", "content": "hi"}]]
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    ids = encode_prompt(tok, a[0])
    assert tok.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def _dry(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    from medusa_trt.cli import run

    code = run(["heads", "train", "--dry-run", "--json", *args])
    cap = capsys.readouterr()
    return code, json.loads(cap.out) if cap.out.strip() else {}, cap.err


def test_dry_run_70b_fits_hgx_h200_with_shared_lm_head(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--profile", "hgx-h200-bf16-tp8", "--num-sequences", "10000", "--seq-len", "2048"]
    code, doc, _ = _dry(["--model", "llama-3.1-70b", "--share-lm-head", *common], capsys)
    assert code == 0 and doc["fits"] is True
    assert set(doc["stages"]) == {"distil", "hidden", "train"}
    hidden, train = doc["stages"]["hidden"], doc["stages"]["train"]
    # 70.6 B bf16 parameters over 8 ranks: 16.4 GiB of backbone per GPU
    assert hidden["breakdown_gib"]["backbone_shard"] == pytest.approx(70.55e9 * 2 / 8 / 2**30, rel=0.01)
    assert hidden["disk_gib"] == pytest.approx(10000 * 2048 * 8192 * 2 / 2**30, rel=1e-3)
    assert doc["trainable_params"] == 4 * (8192 * 8192 + 8192)  # ResBlocks only
    code, more, _ = _dry(["--model", "llama-3.1-70b", "--share-lm-head", "--train-devices", "8", *common], capsys)
    assert more["stages"]["train"]["devices"] == 8
    assert more["stages"]["train"]["breakdown_gib"]["activations"] == pytest.approx(
        train["breakdown_gib"]["activations"] / 8, rel=1e-3
    )  # one sequence per process instead of eight
    code, doc, _ = _dry(["--model", "llama-3.1-70b", *common], capsys)
    assert doc["trainable_params"] == 4 * (8192 * 8192 + 8192 + 128256 * 8192)


def test_dry_run_exits_4_naming_what_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "llama-3.1-405b", "--profile", "hgx-h200-bf16-tp8", "--seq-len", "2048"]
    code, doc, err = _dry(args, capsys)
    assert code == 4 and doc["fits"] is False and doc["stages"]["train"]["fits"] is False
    assert "--share-lm-head" in err
    code, doc, _ = _dry([*args, "--share-lm-head"], capsys)
    assert code == 0 and doc["fits"] is True
    code, doc, err = _dry(["--model", "llama-3.1-405b", "--profile", "hgx-h100-bf16-tp8", "--share-lm-head"], capsys)
    assert code == 4 and doc["stages"]["hidden"]["fits"] is False and "hidden" in err


def test_tp_ranks_exit_when_their_driver_is_sigkilled(tmp_path: Path, tiny_llama: Path) -> None:
    """A killed hidden stage at tp 2 leaves no rank behind holding its shard (the rerun needs the memory)."""
    import psutil

    from tests.helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck", tp=2)
    script = (
        "import sys, time\n"
        "from medusa_trt.runtime.config import read_checkpoint\n"
        "from medusa_trt.runtime.tp import Runner\n"
        "if __name__ == '__main__':\n"
        "    r = Runner(read_checkpoint(sys.argv[1]), 'cpu')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    (tmp_path / "drive.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "drive.py"), str(ckpt)], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        ranks = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(ranks) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(ranks, timeout=15)
        assert not alive, "a tp rank outlived its killed driver"
    finally:
        proc.kill()
        proc.wait()
