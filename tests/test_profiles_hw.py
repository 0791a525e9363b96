"""GPU detection and 'can this machine run the profile'."""

from __future__ import annotations

from medusa_trt.config.profile import load_profile
from medusa_trt.plan.hw import Gpu, can_run, detect_gpus, parse_nvidia_smi


def test_parse_nvidia_smi_csv() -> None:
    text = "NVIDIA H200, 143771 MiB\nNVIDIA H100 80GB HBM3, 81559 MiB\n\ngarbage\n"
    gpus = parse_nvidia_smi(text)
    assert [g.name for g in gpus] == ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]
    assert abs(gpus[0].memory_gib - 140.4) < 0.05 and abs(gpus[1].memory_gib - 79.6) < 0.05
    assert [g.index for g in gpus] == [0, 1]


def test_detect_never_raises_and_is_consistent() -> None:
    gpus = detect_gpus()
    assert isinstance(gpus, tuple) and all(isinstance(g, Gpu) for g in gpus)


def test_can_run_matches_model_count_and_memory() -> None:
    p = load_profile("hgx-h200-fp8-tp8")
    ok, why = can_run(p, [])
    assert not ok and "no NVIDIA GPU" in why
    h100s = [Gpu(i, "NVIDIA H100 80GB HBM3", 79.6) for i in range(8)]
    ok, why = can_run(p, h100s)
    assert not ok and "found 0 matching of 8" in why
    four = [Gpu(i, "NVIDIA H200", 140.4) for i in range(4)]
    assert not can_run(p, four)[0]
    eight = [Gpu(i, "NVIDIA H200", 140.4) for i in range(8)]
    ok, why = can_run(p, eight)
    # With the GPUs present, only TensorRT-LLM itself can be missing.
    assert ok or "TensorRT-LLM is not installed" in why


def test_cpu_profiles_check_ram() -> None:
    p = load_profile("cpu-tp2")
    assert can_run(p, ram_gib=64.0)[0]
    ok, why = can_run(p, ram_gib=2.0)
    assert not ok and "needs 8 GiB RAM" in why
