"""Percentile math on hand-computed samples and the metric definitions on synthetic records."""

from __future__ import annotations

import math

import pytest

from medusa_trt.bench.metrics import RequestRecord, compute_metrics
from medusa_trt.bench.stats import percentile, pstd, summarize


def test_percentiles_match_hand_computed_linear_interpolation() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose; sorted 1,2,3,4
    assert percentile(xs, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(xs, 90) == pytest.approx(3.7)  # rank 2.7 -> 3 + 0.7
    assert percentile(xs, 99) == pytest.approx(3.97)  # rank 2.97
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    ys = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(ys, 90) == pytest.approx(46.0)  # rank 3.6 -> 40 + 0.6 * 10
    assert percentile(ys, 50) == 35.0
    assert pstd(xs) == pytest.approx(math.sqrt(1.25))  # population std, numpy's default


def test_summarize_single_and_empty() -> None:
    s = summarize([7.0])
    assert s["mean"] == s["median"] == s["p99"] == 7.0 and s["std"] == 0.0 and s["count"] == 1
    e = summarize([])
    assert e["count"] == 0 and e["mean"] is None and e["p90"] is None
    with pytest.raises(ValueError):
        percentile([], 50)


def _rec(
    i: int, ttft: float, e2el: float, out: int, chunks: list[float], steps: int | None = None, prompt: int = 5
) -> RequestRecord:
    return RequestRecord(
        index=i,
        ttft_s=ttft,
        e2el_s=e2el,
        output_tokens=out,
        chunk_times=chunks,
        decoding_steps=steps,
        prompt_tokens=prompt,
    )


def test_metric_definitions_on_synthetic_records() -> None:
    # TPOT = (1.1 - 0.1) / (11 - 1) = 100 ms; 1/TPOT = 10 tokens/s; chunks carry several tokens each.
    a = _rec(0, 0.1, 1.1, 11, [0.1, 0.5, 1.1], steps=4)
    # TPOT = (2.2 - 0.2) / (5 - 1) = 500 ms; 2 tokens/s
    b = _rec(1, 0.2, 2.2, 5, [0.2, 2.2], steps=1)
    failed = RequestRecord(index=2, error_kind="http_5xx", error="HTTP 500")
    m = compute_metrics([a, b, failed], duration_s=4.0)
    assert m["completed"] == 2 and m["failed"] == 1 and m["errors"] == {"http_5xx": 1}
    assert m["total_output_tokens"] == 16 and m["total_input_tokens"] == 10
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["output_throughput"] == pytest.approx(4.0)
    assert m["total_token_throughput"] == pytest.approx(6.5)
    assert m["mean_ttft_ms"] == pytest.approx(150.0) and m["median_ttft_ms"] == pytest.approx(150.0)
    assert m["mean_tpot_ms"] == pytest.approx(300.0) and m["std_tpot_ms"] == pytest.approx(200.0)
    assert m["mean_e2el_ms"] == pytest.approx(1650.0)
    # ITL = every inter-chunk gap: 400, 600 (a) and 2000 (b)
    assert m["mean_itl_ms"] == pytest.approx(1000.0) and m["median_itl_ms"] == pytest.approx(600.0)
    assert m["p90_itl_ms"] == pytest.approx(600 + 0.8 * 1400)
    u = m["output_tokens_per_s_per_user"]
    assert u["mean"] == pytest.approx(6.0) and u["p50"] == pytest.approx(6.0)
    # each request's first token comes from prefill: (10 + 4) tokens over 4 + 1 decoding steps
    assert m["tokens_per_step"] == pytest.approx(14 / 5) and m["total_decoding_steps"] == 5


def test_unknown_steps_and_single_token_requests() -> None:
    one = _rec(0, 0.05, 0.05, 1, [0.05])  # one token: no TPOT, no per-user rate
    m = compute_metrics([one], duration_s=1.0)
    assert m["tokens_per_step"] is None and m["total_decoding_steps"] is None
    assert m["mean_tpot_ms"] is None and m["output_tokens_per_s_per_user"]["mean"] is None
    assert m["mean_ttft_ms"] == pytest.approx(50.0)
