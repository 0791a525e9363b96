"""The analytic step model reproduces performance-anchors.md §5 and behaves sensibly."""

from __future__ import annotations

import pytest

from medusa_trt.config.model import PRESETS
from medusa_trt.config.profile import Parallelism, load_profile
from medusa_trt.perf import default_tokens_per_step, predict, step_breakdown, step_time_ms, verify_tokens_for
from medusa_trt.perf import model as pm

M70, M405 = PRESETS["llama-3.1-70b"], PRESETS["llama-3.1-405b"]


@pytest.fixture(scope="module")
def h200():  # type: ignore[no-untyped-def]
    return load_profile("hgx-h200-fp8-tp8")


def test_weight_bytes_match_the_anchors(h200) -> None:  # type: ignore[no-untyped-def]
    # §5.1: FP8 linears + BF16 lm_head per GPU at TP8: 8.82 GB (70B), 50.73 GB (405B)
    assert pm.streamed_weight_bytes(h200, M70) / 1e9 == pytest.approx(8.82, rel=0.01)
    assert pm.streamed_weight_bytes(h200, M405) / 1e9 == pytest.approx(50.73, rel=0.01)


def test_calibration_of_section_5_2(h200) -> None:  # type: ignore[no-untyped-def]
    # eta 0.8, t_AR 8 us, 20 us/layer, 0.1 ms host -> 5.28 ms (70B) and 17.85 ms (405B)
    assert step_time_ms(h200, M70, 1, 0) == pytest.approx(5.28, rel=0.01)
    assert step_time_ms(h200, M405, 1, 0) == pytest.approx(17.85, rel=0.01)
    # ... within 10% of NVIDIA's implied baselines (5.67 ms and 17.6 ms per token)
    assert step_time_ms(h200, M70, 1, 1024) == pytest.approx(5.67, rel=0.10)
    assert step_time_ms(h200, M405, 1, 1024) == pytest.approx(17.6, rel=0.10)


def test_medusa_overhead_in_the_measured_range(h200) -> None:  # type: ignore[no-untyped-def]
    # Medusa paper: verify-step overhead 1.18-1.27x; anchors §1.1 assume 1.1-1.3
    for m in (M70, M405):
        ratio = step_time_ms(h200, m, 16, 1024) / step_time_ms(h200, m, 1, 1024)
        assert 1.1 <= ratio <= 1.3


def test_step_grows_with_verify_tokens_and_context(h200) -> None:  # type: ignore[no-untyped-def]
    times = [step_time_ms(h200, M70, n, 1024, num_medusa_heads=4) for n in (2, 16, 64, 256)]
    assert times == sorted(times) and times[-1] > times[0]
    assert step_time_ms(h200, M70, 1, 128_000) > step_time_ms(h200, M70, 1, 1024) + 0.3  # §5.1: ~0.5 ms of KV at FP8
    b = step_breakdown(h200, M70, 16, 1024)
    assert b["total"] == pytest.approx(sum(v for k, v in b.items() if k != "total"))
    assert b["medusa_heads"] > 0 and step_breakdown(h200, M70, 1, 1024)["medusa_heads"] == 0


def test_hardware_and_precision_move_the_prediction(h200) -> None:  # type: ignore[no-untyped-def]
    h100 = load_profile("hgx-h100-fp8-tp8")
    bf16 = load_profile("hgx-h200-bf16-tp8")
    assert step_time_ms(h100, M405, 1, 0) > step_time_ms(h200, M405, 1, 0)
    assert step_time_ms(bf16, M405, 1, 0) > step_time_ms(h200, M405, 1, 0)
    tp1 = h200.model_copy(update={"parallelism": Parallelism(tp=1)})
    assert step_breakdown(tp1, M70, 16, 0)["allreduce"] == 0.0


def test_predict_and_defaults(h200) -> None:  # type: ignore[no-untyped-def]
    assert default_tokens_per_step(0) == 1.0
    assert default_tokens_per_step(3) == pytest.approx(1 + 0.6 + 0.36 + 0.216)
    assert verify_tokens_for(h200, 15) == 16
    assert verify_tokens_for(load_profile("cpu"), 7) == 8  # the reference runtime verifies only the tree
    p = predict(h200, M405, 2.4)
    assert p.medusa.verify_tokens == 16 and p.baseline.verify_tokens == 1
    assert p.medusa.tokens_per_s_per_user == pytest.approx(2.4 * 1e3 / p.medusa.step_ms)
    assert p.speedup == pytest.approx(p.medusa.tokens_per_s_per_user / p.baseline.tokens_per_s_per_user)
    # NVIDIA: 108 tok/s/user for 405B with Medusa; at the anchors' 2.1-2.5 tokens/step the model lands within 15%
    assert 108 * 0.85 <= predict(h200, M405, 2.3).medusa.tokens_per_s_per_user <= 108 * 1.15
