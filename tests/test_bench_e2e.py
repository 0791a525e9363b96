"""The bench client against OUR real server (tiny Llama + random Medusa heads, CPU reference runtime).

Every reported figure is checked against the server's own Prometheus counters (tokens, steps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medusa_trt.bench import BenchConfig, run_benchmark
from tests.helpers.loopback import app_in_thread, engine_in_thread


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama: Path, tiny_heads: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference engine built by `medusa-trt build`'s library path (cpu profile): manifest + checkpoint."""
    from medusa_trt.engines.build import execute, prepare

    out = tmp_path_factory.mktemp("bench-e2e") / "engine"
    execute(prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out))
    return out


@pytest.fixture(scope="module")
def server_url(tiny_engine: Path) -> Iterator[str]:
    """Our real app (serve.create_app over the reference engine) under uvicorn, in a thread here."""
    with engine_in_thread(tiny_engine) as url:
        yield url


def _counters(url: str) -> dict[str, float]:
    """medusa_trt_tokens_total / decoding_steps_total by label, from /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        m = re.match(r"medusa_trt_(tokens_total|decoding_steps_total)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _delta(after: dict[str, float], before: dict[str, float], name: str, **labels: str) -> float:
    def pick(d: dict[str, float]) -> float:
        return sum(v for k, v in d.items() if k.startswith(name) and all(f'{a}="{b}"' in k for a, b in labels.items()))

    return pick(after) - pick(before)


def test_figures_match_what_the_server_did(server_url: str, tiny_engine: Path) -> None:
    before = _counters(server_url)
    rep = run_benchmark(
        BenchConfig(
            url=server_url,
            num_prompts=3,
            concurrency=(2,),
            max_tokens=10,
            warmup=0,
            compare_no_medusa=True,
            seed=0,
            input_len=80,
            tokenizer=tiny_engine,
        )
    )
    after = _counters(server_url)
    assert not rep.was_cancelled and rep.server["model"]
    for medusa in (True, False):
        flag = "true" if medusa else "false"
        runs = [r for r in rep.runs if r["medusa"] is medusa]
        assert all(r["failed"] == 0 and r["completed"] == 3 for r in runs), [r["errors"] for r in runs]
        out = sum(r["total_output_tokens"] for r in runs)
        steps = sum(r["total_decoding_steps"] for r in runs)
        assert out == _delta(after, before, "tokens_total", kind="completion", medusa=flag)
        assert sum(r["total_input_tokens"] for r in runs) == _delta(
            after, before, "tokens_total", kind="prompt", medusa=flag
        )
        assert steps == _delta(after, before, "decoding_steps_total", medusa=flag)
        for r in runs:
            done = [q for q in r["requests"] if q["ok"] and q["decoding_steps"]]
            assert r["tokens_per_step"] == pytest.approx(
                sum(q["output_tokens"] - 1 for q in done) / r["total_decoding_steps"]
            )
            for q in r["requests"]:
                assert 1 <= q["decoding_steps"] < q["output_tokens"] <= 10
                assert q["num_chunks"] <= q["output_tokens"]
                if not medusa:
                    # plain decoding: one token per step, plus the prefill's token (steps exclude prefill)
                    assert q["decoding_steps"] == q["output_tokens"] - 1
    # greedy Medusa output is token-for-token the plain output
    assert [c["identical_outputs"] for c in rep.comparisons] == [True]


def test_engine_mode_starts_and_stops_our_server(tiny_engine: Path) -> None:
    rep = run_benchmark(
        BenchConfig(
            engine=tiny_engine,
            num_prompts=2,
            max_tokens=6,
            warmup=0,
            seed=1,
            simulate="hgx-h200-fp8-tp8",
            sim_model="llama-3.1-70b",
        )
    )
    run = rep.run(1)
    assert run is not None and run["completed"] == 2 and run["tokens_per_step"] is not None
    assert rep.engine is not None and rep.engine["dir"] == str(tiny_engine.resolve())
    assert rep.engine["manifest"]["checkpoint_dir"] and rep.engine["profile"]["name"] == "cpu"
    # the simulation ran at the acceptance just measured
    sim = rep.simulation
    assert sim is not None and "error" not in sim, sim
    assert sim["tokens_per_step"] == pytest.approx(run["tokens_per_step"])
    # the prediction at that acceptance: tokens/step over the predicted step, and the ratio to the baseline
    assert sim["tokens_per_s_per_user"] == pytest.approx(run["tokens_per_step"] * 1e3 / sim["step_time_ms"])
    assert sim["speedup"] == pytest.approx(sim["tokens_per_s_per_user"] / sim["baseline_tokens_per_s_per_user"])
    # the server is gone afterwards: its URL no longer answers
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{rep.server['url']}/health", timeout=1)


def test_a_dataset_file_sets_each_requests_length_and_order(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One JSONL that vLLM, guidellm and aiperf read alike: each line's own output length (in any of their
    words) is what the server generates for it, `--disable-shuffle` sends the lines in the file's order,
    and a line without a length gets --max-tokens."""
    words = [" ".join(["apple"] * n) for n in (1, 4, 9, 16, 25)]  # prompt lengths tell the lines apart
    rows = [
        {"prompt": words[0], "output_tokens": 3},
        {"text": words[1], "output_tokens_count": 6},
        {"text": words[2], "output_length": 2},
        {"text": words[3], "output_tokens": 5, "output_tokens_count": 5, "output_length": 5},
        {"prompt": words[4]},
    ]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = ["--dataset", str(data), "--disable-shuffle", "--num-prompts", "5", "--endpoint", "completions"]
    before = _counters(server_url)
    code, doc = _bench_cli(server_url, extra, tmp_path, monkeypatch)  # --max-tokens 4
    after = _counters(server_url)
    assert code == 0 and doc is not None
    reqs = doc["runs"][0]["requests"]  # concurrency 1: in the order sent
    assert [(q["index"], q["output_tokens"]) for q in reqs] == [(0, 3), (1, 6), (2, 2), (3, 5), (4, 4)]
    assert _delta(after, before, "tokens_total", kind="completion") == 3 + 6 + 2 + 5 + 4
    assert doc["config"]["shuffle"] is False
    # the prompts the server got: the file's, in its order (their lengths as the server counts them)
    sent = [q["prompt_tokens"] for q in reqs]
    assert sent == [_prompt_tokens(server_url, w) for w in words] and sent == sorted(set(sent))


def _prompt_tokens(url: str, prompt: str) -> int:
    """The server's own count of a prompt's tokens (usage of a one-token completion)."""
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
    return int(httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["usage"]["prompt_tokens"])


KEY = "bench-key"


@pytest.fixture(scope="module")
def keyed_url(tiny_engine: Path) -> Iterator[str]:
    """Our real app requiring an API key (`run --api-key`), under uvicorn on loopback."""
    from medusa_trt.runtime import load_engine
    from medusa_trt.serve import ServeGuard, create_app

    engine = load_engine(tiny_engine)
    try:
        with app_in_thread(create_app(engine, guard=ServeGuard(api_key=KEY)), start_timeout_s=60) as url:
            yield url
    finally:
        engine.close()


def _bench_cli(
    url: str, extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any] | None]:
    """`medusa-trt bench` as a user runs it (sys.argv too: the report keeps the command line)."""
    from medusa_trt.cli import run

    out = tmp_path / "bench.json"
    argv = ["bench", "--url", url, "--num-prompts", "2", "--max-tokens", "4", "--warmup", "0", "--json-out", str(out)]
    monkeypatch.setattr("sys.argv", ["medusa-trt", *argv, *extra])
    code = run([*argv, *extra])
    return code, json.loads(out.read_text()) if out.exists() else None


def test_api_key_is_sent_and_kept_out_of_the_report(
    keyed_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEDUSA_TRT_API_KEY", raising=False)
    code, doc = _bench_cli(keyed_url, ["--api-key", f" {KEY}\n"], tmp_path, monkeypatch)
    assert code == 0 and doc is not None
    assert "stripped 2 whitespace characters" in capsys.readouterr().err
    assert doc["runs"][0]["completed"] == 2 and doc["runs"][0]["failed"] == 0
    assert KEY not in json.dumps(doc) and doc["command"][-2:] == ["--api-key", "***"]
    assert doc["config"]["api_key_sent"] is True


def test_api_key_from_the_environment(keyed_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDUSA_TRT_API_KEY", KEY)
    code, doc = _bench_cli(keyed_url, [], tmp_path, monkeypatch)
    assert code == 0 and doc is not None and doc["runs"][0]["completed"] == 2


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        (None, [], "requires an API key (HTTP 401"),
        (None, ["--api-key", "not-the-key"], "refused the API key (HTTP 401"),
        ("", [], "is empty"),
        ("  \t", [], "is empty after stripping whitespace"),
        (None, ["--api-key", "a\x01b"], "control character"),
    ],
)
def test_missing_wrong_or_bad_api_key_is_exit_2(
    keyed_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str | None,
    extra: list[str],
    message: str,
) -> None:
    if env is None:
        monkeypatch.delenv("MEDUSA_TRT_API_KEY", raising=False)
    else:
        monkeypatch.setenv("MEDUSA_TRT_API_KEY", env)
    code, doc = _bench_cli(keyed_url, extra, tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and doc is None
    assert message in err and "hint:" in err and "Traceback" not in err


def test_engine_mode_starts_the_server_with_the_key(tiny_engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench --engine DIR --api-key KEY`: the server started for the run requires KEY, and bench sends it."""
    from contextlib import contextmanager

    from medusa_trt.bench import runner, server

    refused: list[int] = []

    @contextmanager
    def watched(*args: Any, **kw: Any) -> Iterator[str]:
        with server.engine_server(*args, **kw) as url:  # the real child server
            refused.append(httpx.get(f"{url}/v1/models", timeout=30).status_code)  # no key sent here
            yield url

    monkeypatch.setattr(runner, "engine_server", watched)
    rep = run_benchmark(BenchConfig(engine=tiny_engine, num_prompts=1, max_tokens=3, warmup=0, api_key=KEY))
    run = rep.run(1)
    assert refused == [401] and run is not None and run["completed"] == 1
