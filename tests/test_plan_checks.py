"""`preflight_report`: every shipped profile plans; each check passes and fails where it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from medusa_trt.config.model import PRESETS
from medusa_trt.config.profile import MedusaSection, Parallelism, load_profile
from medusa_trt.errors import IncompatibleError, InvalidInputError, TreeError
from medusa_trt.plan import checks as ck
from medusa_trt.plan import predict, preflight_report

M70, M405 = PRESETS["llama-3.1-70b"], PRESETS["llama-3.1-405b"]


def _check(report, name: str) -> ck.Check:  # type: ignore[no-untyped-def]
    return next(c for c in report.checks if c.name == name)


@pytest.mark.parametrize("name", ["hgx-h100-fp8-tp8", "hgx-h200-bf16-tp8", "hgx-h200-fp8-tp8", "hgx-h100-bf16-tp8"])
def test_gpu_profiles_plan_70b(name: str) -> None:
    r = preflight_report(name, "llama-3.1-70b")
    assert r.fits, r.failures
    assert {c.verdict for c in r.checks if c.name != "prediction"} <= {"pass", "warn"}
    assert _check(r, "prediction").verdict == "estimate"  # it rests on the default tokens/step
    assert r.prediction.medusa.tokens_per_s_per_user > r.prediction.baseline.tokens_per_s_per_user


@pytest.mark.parametrize("name", ["cpu", "cpu-tp2"])
def test_cpu_profiles_plan_a_tiny_model(name: str, tiny_llama: Path) -> None:
    r = preflight_report(name, str(tiny_llama))
    assert r.fits, r.failures
    assert _check(r, "disk").verdict == "pass"
    assert 0 < r.disk_gib["hf_checkpoint"] < 0.1  # measured from the directory, not estimated
    assert r.memory_gib["total"] < 1.0


def test_done_when_405b() -> None:
    h200 = preflight_report("hgx-h200-fp8-tp8", "llama-3.1-405b")
    assert h200.fits and _check(h200, "memory").verdict == "pass"
    h100 = preflight_report("hgx-h100-fp8-tp8", "llama-3.1-405b")
    assert h100.fits and 50 < h100.memory_gib["total"] < h100.memory_gib["available"]  # FP8 405B fits 8x 80 GB
    bf16 = preflight_report("hgx-h100-bf16-tp8", "llama-3.1-405b")
    assert not bf16.fits
    mem = _check(bf16, "memory")
    assert mem.verdict == "fail" and "short by" in mem.reason
    with pytest.raises(IncompatibleError, match=r"does not fit profile hgx-h100-bf16-tp8: memory: short by \d"):
        bf16.raise_if_not_fits()
    h200.raise_if_not_fits()  # no error


def test_memory_components() -> None:
    r = preflight_report("hgx-h200-fp8-tp8", "llama-3.1-405b")
    m = r.memory_gib
    parts = ("linear_weights", "embedding", "lm_head", "medusa_heads", "kv_cache", "activations", "runtime_reserve")
    assert m["total"] == pytest.approx(sum(m[k] for k in parts))
    assert m["embedding"] == pytest.approx(128256 * 16384 * 2 / 2**30)  # replicated bf16 on every rank
    assert m["lm_head"] == pytest.approx(m["embedding"] / 8)  # split by vocab
    assert m["kv_cache"] == pytest.approx(2 * 126 * 1 * 128 * 1 * (131072 + 15) / 2**30)  # FP8 KV, 1 head/rank
    bf16 = preflight_report("hgx-h200-bf16-tp8", "llama-3.1-405b").memory_gib
    assert bf16["linear_weights"] == pytest.approx(2 * m["linear_weights"], rel=0.01)


def test_memory_verdicts() -> None:
    assert ck.check_memory({"a": 50.0, "total": 50.0, "available": 80.0}, "cuda").verdict == "pass"
    assert ck.check_memory({"a": 75.0, "total": 75.0, "available": 80.0}, "cuda").verdict == "warn"
    fail = ck.check_memory({"a": 90.0, "total": 90.0, "available": 80.0}, "cuda")
    assert fail.verdict == "fail" and fail.reason.startswith("short by 10.0 GiB per GPU")


def test_parallelism_check() -> None:
    p = load_profile("hgx-h200-fp8-tp8")
    assert ck.check_parallelism(p).verdict == "pass"
    assert ck.check_parallelism(p.model_copy(update={"parallelism": Parallelism(tp=16)})).verdict == "fail"
    assert ck.check_parallelism(p.model_copy(update={"parallelism": Parallelism(tp=4)})).verdict == "warn"
    assert ck.check_parallelism(p.model_copy(update={"parallelism": Parallelism(tp=4, pp=2)})).verdict == "fail"


def test_tp_checks() -> None:
    verdicts = {c.name: c.verdict for c in ck.check_tp(M70, 8)}
    assert set(verdicts.values()) == {"pass"} and len(verdicts) == 4
    replicated = {c.name: c for c in ck.check_tp(M70, 16)}["tp_kv_heads"]
    assert replicated.verdict == "pass" and "replicated 2x" in replicated.reason
    odd = M70.model_copy(
        update={"num_attention_heads": 60, "num_key_value_heads": 3, "intermediate_size": 28670, "vocab_size": 128257}
    )
    got = {c.name: c.verdict for c in ck.check_tp(odd, 8)}
    assert got == {"tp_attention_heads": "fail", "tp_kv_heads": "fail", "tp_intermediate": "fail", "tp_vocab": "warn"}
    assert {c.name: c.verdict for c in ck.check_tp(M70.model_copy(update={"num_key_value_heads": 12}), 8)}[
        "tp_kv_heads"
    ] == "fail"


def test_tree_check_and_heads_override() -> None:
    with pytest.raises(TreeError, match="depth 3 needs 3 Medusa heads"):  # a head that does not exist: exit 2
        preflight_report("hgx-h200-fp8-tp8", M70, num_medusa_heads=2)
    three = preflight_report("hgx-h200-fp8-tp8", M70, num_medusa_heads=3)  # NVIDIA's 8B Medusa: the tree fits
    assert _check(three, "medusa_tree").verdict == "pass" and three.num_medusa_heads == 3
    more = preflight_report("hgx-h200-fp8-tp8", M70, num_medusa_heads=5).memory_gib
    base = preflight_report("hgx-h200-fp8-tp8", M70).memory_gib  # the profile's 4 heads
    assert more["medusa_heads"] == pytest.approx(base["medusa_heads"] * 5 / 4)
    # logits buffers: the base lm_head + one per head, float32, 16 tokens, V/tp columns
    logits = 16 * 128256 / 8 * 4 / 2**30
    assert more["activations"] - base["activations"] == pytest.approx(logits)
    ok = ck.check_tree([[0], [0, 0], [1]], num_heads=2, max_draft_len=3)
    assert ok.verdict == "pass"
    assert ck.check_tree([[0], [0, 0], [1]], num_heads=2, max_draft_len=2).verdict == "fail"
    assert ck.check_tree([[0], [1, 0]], num_heads=2, max_draft_len=8).verdict == "fail"  # not prefix-closed
    assert ck.check_tree([[0], [10]], num_heads=2, max_draft_len=8).verdict == "fail"  # rank >= 10


def test_waste_when_max_draft_len_exceeds_the_tree() -> None:
    p = load_profile("hgx-h200-fp8-tp8")
    padded = p.model_copy(update={"medusa": MedusaSection(num_heads=4, max_draft_len=63, tree="nvidia_low_latency_15")})
    waste = ck.check_waste(padded, M70, padded.tree, 4, 1024)
    assert waste.verdict == "warn" and "48 wasted" in waste.reason and "set max_draft_len to 15" in waste.reason
    assert ck.check_waste(p, M70, p.tree, 4, 1024).verdict == "pass"
    ref = load_profile("cpu")  # the reference runtime verifies only the tree's nodes
    assert ck.check_waste(ref, M70, [[0]], 3, 1024).verdict == "pass"


def test_limits_check(tiny_llama: Path) -> None:
    assert _check(preflight_report("hgx-h200-fp8-tp8", M70), "limits").verdict == "pass"
    tiny = _check(preflight_report("cpu", str(tiny_llama)), "limits")  # 512 > the tiny model's 256 positions
    assert tiny.verdict == "warn" and "max_position_embeddings 256" in tiny.reason


def test_disk_check() -> None:
    need = {"hf_checkpoint": 100.0, "trtllm_checkpoint": 50.0, "engine": 50.0, "total": 200.0}
    assert ck.check_disk(need, 500.0, "/data", target_here=True).verdict == "pass"
    fail = ck.check_disk(need, 150.0, "/data", target_here=True)
    assert fail.verdict == "fail" and fail.reason.startswith("short by 50.0 GiB")
    assert ck.check_disk(need, 150.0, "/data", target_here=False).verdict == "warn"
    r = preflight_report("cpu", "llama-3.1-405b", target_here=True)
    assert r.disk_gib["total"] > 1500 and not r.fits  # 405B does not fit the CPU profile's memory either


def test_prediction_check_and_tokens_per_step() -> None:
    p = load_profile("hgx-h200-fp8-tp8")
    assert ck.check_prediction(predict(p, M70, 2.0), default_tokens_per_step=False).verdict == "pass"
    assert ck.check_prediction(predict(p, M70, 2.0), default_tokens_per_step=True).verdict == "estimate"
    slower = ck.check_prediction(predict(p, M70, 1.0), default_tokens_per_step=False)
    assert slower.verdict == "warn"  # verifying costs more than it gains
    given = preflight_report(p, M70, tokens_per_step=3.0)
    assert given.tokens_per_step_source == "given" and given.prediction.medusa.tokens_per_step == 3.0
    assert _check(given, "prediction").verdict == "pass" and "not measured" not in _check(given, "prediction").reason
    default = preflight_report(p, M70)
    assert default.prediction.medusa.tokens_per_step == pytest.approx(2.176)
    assert "default" in default.tokens_per_step_source
    assert (
        _check(default, "prediction").verdict == "estimate" and "not measured" in _check(default, "prediction").reason
    )
    with pytest.raises(InvalidInputError, match=r"outside 1\.\.4"):
        preflight_report(p, M70, tokens_per_step=4.5)


def test_json_document_shape() -> None:
    d = preflight_report("hgx-h200-fp8-tp8", "llama-3.1-405b").to_dict()
    assert d["fits"] is True
    assert {"linear_weights", "kv_cache", "total", "available"} <= set(d["memory_gib"])
    assert all(set(c) == {"name", "verdict", "reason"} for c in d["checks"])
    for k in ("medusa", "baseline"):
        pred = d["prediction"][k]
        assert pred["step_ms"] > 0 and pred["tokens_per_s_per_user"] == pytest.approx(
            pred["tokens_per_step"] * 1e3 / pred["step_ms"]
        )
    assert d["profile"]["name"] == "hgx-h200-fp8-tp8" and len(d["profile"]["id"]) == 12
