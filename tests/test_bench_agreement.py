"""benchmarks/bench_agreement.py's own parts: the one prompt file every tool reads (as our loader reads
it), the server's counts it compares the tools by (read from a real server's /metrics after a real
`bench` run), and verdicts computed from the figures. The tools themselves (guidellm, aiperf) live in
their own venvs; the script checks from the server's side, at every run, that they sent the file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.bench import BenchConfig, run_benchmark
from medusa_trt.bench.datasets import load_prompts, load_tokenizer
from tests.helpers.loopback import engine_in_thread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_agreement  # noqa: E402 (a script in benchmarks/, not a package)


def _args(engine: Path, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"engine": engine, "num_prompts": 6, "seed": 0, "input_len": 40, "max_tokens": 9, **kw})


def test_the_prompt_file_gives_every_tool_the_same_requests(tiny_llama: Path, tmp_path: Path) -> None:
    path = bench_agreement.write_prompts(_args(tiny_llama), tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6 and len({r["text"] for r in rows}) == 6
    # each tool's name for the output length, the same number
    assert all(r["output_tokens"] == r["output_tokens_count"] == r["output_length"] == 9 for r in rows)
    ours = load_prompts(path)  # what `bench --dataset FILE --disable-shuffle` sends, in this order
    assert [(p.text, p.max_tokens) for p in ours] == [(r["text"], 9) for r in rows]
    tok = load_tokenizer(tiny_llama)
    assert [len(tok.encode(r["text"], add_special_tokens=False)) for r in rows] == [40] * 6


@pytest.fixture(scope="module")
def server_url(tiny_llama: Path, tiny_heads: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from medusa_trt.engines.build import execute, prepare

    out = tmp_path_factory.mktemp("agreement") / "engine"
    execute(prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out))
    with engine_in_thread(out) as url:
        yield url


def test_the_servers_counts_are_what_a_run_did(server_url: str, tiny_llama: Path, tmp_path: Path) -> None:
    a = _args(tiny_llama, num_prompts=4, max_tokens=7)
    data = bench_agreement.write_prompts(a, tmp_path / "p.jsonl")
    before = bench_agreement.server_counts(server_url)
    rep = run_benchmark(
        BenchConfig(url=server_url, dataset=str(data), shuffle=False, num_prompts=4, warmup=0, endpoint="completions")
    )
    got = bench_agreement.served(before, bench_agreement.server_counts(server_url))
    run = rep.run(1)
    assert run is not None and run["completed"] == 4
    assert got["requests"] == 4 and got["completion_tokens_per_request"] == 7  # the file's length, not 128
    assert got["prompt_tokens_per_request"] == run["total_input_tokens"] / 4
    assert got["steps_per_request"] == pytest.approx(run["total_decoding_steps"] / 4, abs=0.01)
    assert got["tokens_per_step"] == pytest.approx(run["tokens_per_step"], abs=0.01)


def _run(ttft: float, tpot: float, steps: float = 30.0) -> dict[str, Any]:
    served = {"requests": 16, "prompt_tokens_per_request": 128.0, "completion_tokens_per_request": 64.0}
    figures = {"ttft_ms": ttft, "tpot_ms": tpot, "tokens_per_step": 2.0, "step_ms": 2 * tpot}
    return {**figures, **served, "steps_per_request": steps}


def test_verdicts_follow_the_numbers() -> None:
    runs = {
        "medusa-trt bench": [_run(20.0, 2.0), _run(22.0, 2.2), _run(18.0, 1.8)],
        "guidellm": [_run(22.0, 2.0), _run(23.0, 2.1), _run(21.0, 2.6)],  # medians 22 (+10%), 2.1 (+5%)
        "aiperf (paced)": [_run(19.0, 2.5), _run(19.0, 2.4), _run(30.0, 2.4)],  # 19 (-5%), 2.4 (+20%)
        "aiperf": [_run(40.0, 2.0)] * 3,  # a diagnostic: outside the verdict
    }
    doc = bench_agreement.summarize(runs, 15.0, adapt=False)
    assert doc["difference_from_ours_pct"]["guidellm"]["ttft_ms"] == 10.0
    assert doc["verdict"]["TTFT"] == {"within": True, "differences_pct": {"guidellm": 10.0, "aiperf (paced)": -5.0}}
    assert doc["verdict"]["TPOT"]["within"] is False
    assert doc["verdict"]["TPOT"]["differences_pct"]["aiperf (paced)"] == 20.0
    assert doc["verdict"]["same requests"]["within"] is True
    # round by round: guidellm's TTFT +10%, +4.5%, +16.7% against ours in the same round
    assert doc["by_round"]["guidellm"]["ttft_ms"] == {"rounds": 3, "above_ours": 3, "median_pct": 10.0}
    # a run whose requests took other steps (the whole tree, greedy: they cannot) fails the check
    runs["guidellm"][1] = _run(23.0, 2.1, steps=31.0)
    doc = bench_agreement.summarize(runs, 15.0, adapt=False)
    assert doc["verdict"]["same requests"]["within"] is False
    assert [(t, r) for t, r, _ in doc["verdict"]["same requests"]["differing"]] == [("guidellm", 1)]
    # ... which adaptive speculation may do: there only the requests and tokens must match
    assert bench_agreement.summarize(runs, 15.0, adapt=True)["verdict"]["same requests"]["within"] is True
    lines = bench_agreement.report_lines(
        {**doc, "load_average_at_each_round": [1.0], "load_average": [1.0, 1.0, 1.0], "cpus": 2}, 15.0
    )
    assert "verdict TTFT: within 15% of ours (guidellm +10.0%, aiperf (paced) -5.0%)" in lines
    assert "verdict TPOT: NOT within 15% of ours (guidellm +5.0%, aiperf (paced) +20.0%)" in lines
    assert any(line.startswith("verdict same requests: NO") for line in lines)
    assert any(
        line.startswith("round by round, guidellm: TTFT above ours in 3 of 3 rounds (median +10.0%)") for line in lines
    )
