"""Hardware profiles: every shipped one loads; bad YAML is reported as path:line: key: message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medusa_trt.config.profile import list_profiles, load_profile, profile_paths
from medusa_trt.errors import ProfileError
from medusa_trt.medusa.trees import load_tree

SHIPPED = ["cpu", "cpu-tp2", "hgx-h100-bf16-tp8", "hgx-h100-fp8-tp8", "hgx-h200-bf16-tp8", "hgx-h200-fp8-tp8"]
CPU_YAML = (Path(__file__).resolve().parents[1] / "profiles" / "cpu.yaml").read_text()


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> ProfileError:
    with pytest.raises(ProfileError) as ei:
        load_profile(path)
    return ei.value


def test_every_shipped_profile_loads() -> None:
    profiles = {p.name: p for p in list_profiles()}
    assert set(SHIPPED) <= set(profiles)
    for name in SHIPPED:
        p = profiles[name]
        assert p.source is not None and p.source.stem == name
        assert re.fullmatch(r"[0-9a-f]{12}", p.id)
        assert p.parallelism.tp * p.parallelism.pp <= p.hardware.count
        assert len(p.tree) <= p.medusa.max_draft_len
    assert len({profiles[n].id for n in SHIPPED}) == len(SHIPPED)  # distinct contents, distinct ids


def test_flagship_profile_is_nvidias_recipe() -> None:
    p = load_profile("hgx-h200-fp8-tp8")
    assert (p.engine, p.hardware.gpu, p.hardware.count, p.parallelism.tp) == ("trtllm", "H200", 8, 8)
    assert (p.precision.quantization, p.precision.kv_dtype, p.limits.max_batch_size) == ("fp8", "fp8", 1)
    assert p.tree == load_tree("nvidia_low_latency_15") and p.medusa.max_draft_len == 15
    args = p.trtllm_build_args()
    # TRT-LLM's perf-benchmarking.md, the low-latency Medusa 70B TP8 recipe (limits, workers and the Medusa mode come from
    # other sections: medusa-trt sets those flags itself)
    assert dict(zip(args[::2], args[1::2], strict=True)) == {
        "--gpt_attention_plugin": "bfloat16",
        "--use_fused_mlp": "enable",
        "--kv_cache_type": "paged",
        "--use_paged_context_fmha": "disable",
        "--multiple_profiles": "enable",
        "--reduce_fusion": "enable",
        "--use_fp8_context_fmha": "enable",
        "--low_latency_gemm_plugin": "fp8",
    }
    assert (p.limits.max_seq_len, p.limits.max_batch_size) == (131072, 1)
    assert p.env == {
        "TRTLLM_ENABLE_PDL": "1",
        "UB_ONESHOT": "1",
        "UB_TP_SIZE": "8",
        "TRTLLM_PDL_OVERLAP_RATIO": "0.15",
        "TRTLLM_PREFETCH_RATIO": "-1",
    }


@pytest.mark.parametrize("name", ["hgx-h200-fp8-tp8", "hgx-h200-bf16-tp8", "hgx-h100-fp8-tp8", "hgx-h100-bf16-tp8"])
def test_gpu_profiles_carry_the_reference_hardware_numbers(name: str) -> None:
    # datasheets (docs/sources.md, GPUs and interconnect): H200 141 GB / 4.8 TB/s, H100 80 GB / 3.35 TB/s; both 1,979 FP8 and 989 BF16
    # dense TFLOPS and 900 GB/s NVLink 4; memory as nvidia-smi reports it (143771 / 81559 MiB)
    p = load_profile(name)
    gpu = name.split("-")[1].upper()
    mem, bw = {"H200": (143771 / 1024, 4.8), "H100": (81559 / 1024, 3.35)}[gpu]
    hw = p.hardware
    assert (hw.gpu, hw.count, p.parallelism.tp, p.parallelism.pp) == (gpu, 8, 8, 1)
    assert hw.memory_gib == pytest.approx(mem, abs=0.05) and hw.hbm_bandwidth_tbps == bw
    assert (hw.dense_tflops.fp8, hw.dense_tflops.bf16, hw.interconnect_bandwidth_gbps) == (1979, 989, 900)
    assert (p.limits.max_batch_size, p.medusa.max_draft_len, p.tree) == (1, 15, load_tree("nvidia_low_latency_15"))
    fp8 = "fp8" in name
    assert (p.precision.quantization, p.precision.kv_dtype) == (("fp8", "fp8") if fp8 else ("none", "bfloat16"))
    args = p.trtllm_build_args()
    assert ("--low_latency_gemm_plugin" in args) == fp8 and ("--use_fp8_context_fmha" in args) == fp8
    if fp8:  # the recipe's flags and run env, the same on both GPUs (TRT-LLM's perf-benchmarking.md)
        assert args == load_profile("hgx-h200-fp8-tp8").trtllm_build_args()
        assert p.env == load_profile("hgx-h200-fp8-tp8").env


def test_cpu_profiles_run_the_reference_engine() -> None:
    for name, tp in (("cpu", 1), ("cpu-tp2", 2)):
        p = load_profile(name)
        assert (p.engine, p.hardware.device, p.parallelism.tp, p.precision.dtype) == ("reference", "cpu", tp, "float32")
        assert p.medusa.num_heads == 3 and max(len(x) for x in p.tree) <= 3


def test_id_is_a_content_hash(tmp_path: Path) -> None:
    base = load_profile(_write(tmp_path, CPU_YAML, "a.yaml"))
    same = load_profile(_write(tmp_path, CPU_YAML.replace("description: ", "description: renamed "), "b.yaml"))
    other = load_profile(_write(tmp_path, CPU_YAML.replace("max_batch_size: 4", "max_batch_size: 2"), "c.yaml"))
    assert base.id == same.id == load_profile("cpu").id
    assert other.id != base.id


def test_syntax_error_names_path_and_line(tmp_path: Path) -> None:
    text = CPU_YAML.replace("limits:\n", "limits: [\n")
    path = _write(tmp_path, text)
    msg = _error(path).message
    m = re.fullmatch(rf"{re.escape(str(path))}:(\d+): YAML syntax error: .+", msg)
    assert m, msg
    assert abs(int(m.group(1)) - _line_of(text, "limits: [")) <= 2  # the parser notices a line or two later


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    text = CPU_YAML.replace("  memory_gib: 8 ", "  memroy_gib: 8 ")
    path = _write(tmp_path, text)
    err = _error(path)
    line = _line_of(text, "memroy_gib")
    assert err.message.startswith(f"{path}:{line}: hardware.memroy_gib: unknown key"), err.message
    assert err.hint is not None and "memory_gib" in err.hint


def test_wrong_type_names_line_and_key(tmp_path: Path) -> None:
    text = CPU_YAML.replace("  max_seq_len: 512", "  max_seq_len: lots")
    path = _write(tmp_path, text)
    msg = _error(path).message
    assert msg.startswith(f"{path}:{_line_of(text, 'max_seq_len: lots')}: limits.max_seq_len: "), msg
    assert "'lots'" in msg


def test_union_fields_report_the_real_problem(tmp_path: Path) -> None:
    # medusa.tree is `str | list[list[int]]`: the bad element is named, not "should be a valid string"
    text = CPU_YAML.replace("tree: nvidia_low_latency_15", 'tree: [[0], [0, "x"]]')
    path = _write(tmp_path, text)
    msg = _error(path).message
    assert msg.startswith(f"{path}:{_line_of(text, 'tree: [[0]')}: medusa.tree[1][1]: "), msg
    assert "valid integer" in msg and "'x'" in msg and "more problem" not in msg
    # every member of `str | int | float | bool` failed: one error that names them all
    text = CPU_YAML.replace("OMP_NUM_THREADS: 2", "OMP_NUM_THREADS: [2]")
    path = _write(tmp_path, text, "env.yaml")
    msg = _error(path).message
    assert (
        msg == f"{path}:{_line_of(text, 'OMP_NUM_THREADS')}: runtime_env.OMP_NUM_THREADS: "
        "Input should be one of: str, int, float, bool"
    ), msg


def test_missing_key_points_at_its_section(tmp_path: Path) -> None:
    text = CPU_YAML.replace("  max_num_tokens: 1024\n", "")
    path = _write(tmp_path, text)
    msg = _error(path).message
    assert msg == f"{path}:{_line_of(text, 'max_batch_size')}: limits.max_num_tokens: missing required key"


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert _error(missing).message == f"{missing}: no such profile file"
    with pytest.raises(ProfileError) as ei:
        load_profile("hgx-h200-fp8-tp9")
    assert ei.value.message == "unknown profile 'hgx-h200-fp8-tp9'"
    assert ei.value.hint is not None and "hgx-h200-fp8-tp8" in ei.value.hint


def test_trtllm_build_keys_are_checked_against_the_flag_list(tmp_path: Path) -> None:
    text = CPU_YAML + "trtllm_build:\n  use_fused_mlp: enable\n  use_fusd_mlp: enable\n"
    path = _write(tmp_path, text)
    err = _error(path)
    assert err.message.startswith(
        f"{path}:{_line_of(text, 'use_fusd_mlp')}: trtllm_build.use_fusd_mlp: 'use_fusd_mlp' is not a trtllm-build flag"
    ), err.message
    assert err.hint is not None and "use_fused_mlp" in err.hint
    managed = _write(tmp_path, CPU_YAML + "trtllm_build:\n  max_batch_size: 8\n", "m.yaml")
    err = _error(managed)
    assert "is set by medusa-trt" in err.message and err.hint is not None and "limits.max_batch_size" in err.hint


@pytest.mark.parametrize(("value", "emitted"), [("enable", "paged"), ("true", "paged"), ("disable", "continuous")])
def test_deprecated_paged_kv_cache_is_emitted_in_the_current_spelling(tmp_path: Path, value: str, emitted: str) -> None:
    """trtllm-build 1.x warns that --paged_kv_cache is deprecated for --kv_cache_type: a profile may still
    say it, but the command line never carries it, and every emitted flag is on the allow-list."""
    from medusa_trt.config.trtllm_flags import TRTLLM_BUILD_FLAGS

    p = load_profile(_write(tmp_path, CPU_YAML + f"trtllm_build:\n  paged_kv_cache: {value}\n"))
    assert p.trtllm_build_args() == ["--kv_cache_type", emitted]
    assert "paged_kv_cache" not in TRTLLM_BUILD_FLAGS and "kv_cache_type" in TRTLLM_BUILD_FLAGS
    for name in SHIPPED:
        args = load_profile(name).trtllm_build_args()
        assert "--paged_kv_cache" not in args
        assert all(a[2:] in TRTLLM_BUILD_FLAGS for a in args if a.startswith("--")), name


def test_deprecated_flag_conflicts_and_bad_values_are_refused(tmp_path: Path) -> None:
    both = CPU_YAML + "trtllm_build:\n  kv_cache_type: paged\n  paged_kv_cache: enable\n"
    err = _error(_write(tmp_path, both))
    assert "'paged_kv_cache' and 'kv_cache_type' both set" in err.message and err.hint == "Keep 'kv_cache_type' only."
    bad = _write(tmp_path, CPU_YAML + "trtllm_build:\n  paged_kv_cache: maybe\n", "v.yaml")
    err = _error(bad)
    assert "'paged_kv_cache' takes enable or disable" in err.message and "kv_cache_type" in (err.hint or "")


def test_tree_is_validated_against_heads(tmp_path: Path) -> None:
    text = CPU_YAML.replace("  num_heads: 3", "  num_heads: 2")
    path = _write(tmp_path, text)
    msg = _error(path).message
    assert msg.startswith(f"{path}:{_line_of(text, '  tree: ')}: medusa.tree: depth 3 needs 3 Medusa heads"), msg
    unknown = _write(tmp_path, CPU_YAML.replace("tree: nvidia_low_latency_15", "tree: no_such_tree"), "t.yaml")
    assert "unknown tree 'no_such_tree'" in _error(unknown).message
    inline = load_profile(
        _write(tmp_path, CPU_YAML.replace("tree: nvidia_low_latency_15", "tree: [[0], [0, 0], [1]]"), "i.yaml")
    )
    assert inline.tree == [[0], [0, 0], [1]]


def test_engine_and_precision_rules(tmp_path: Path) -> None:
    fp8 = _write(tmp_path, CPU_YAML.replace("quantization: none", "quantization: fp8"))
    assert "the reference engine runs unquantized checkpoints" in _error(fp8).message
    trt = _write(tmp_path, CPU_YAML.replace("engine: reference", "engine: trtllm"), "t.yaml")
    assert "engine trtllm needs device cuda" in _error(trt).message
    enum = _write(tmp_path, CPU_YAML.replace("dtype: float32", "dtype: float8"), "e.yaml")
    assert ": precision.dtype: " in _error(enum).message


def test_userbuffer_size_follows_tp(tmp_path: Path) -> None:
    flagship = load_profile("hgx-h200-fp8-tp8")
    text = flagship.source.read_text().replace("parallelism: {tp: 8, pp: 1}", "parallelism: {tp: 4, pp: 1}")
    path = _write(tmp_path, text)
    msg = _error(path).message
    assert msg.startswith(
        f"{path}:{_line_of(text, 'UB_TP_SIZE')}: runtime_env.UB_TP_SIZE: UB_TP_SIZE 8 differs from parallelism.tp 4"
    ), msg


def test_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- just\n- a list\n")
    assert _error(path).message == f"{path}:1: a profile is a YAML mapping of sections"


def test_profiles_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.yaml").write_text(CPU_YAML.replace("name: cpu", "name: mine"))
    (tmp_path / "other.yaml").write_text(CPU_YAML)  # name 'cpu' in a file called other.yaml
    monkeypatch.setenv("MEDUSA_TRT_PROFILES_DIR", str(tmp_path))
    assert profile_paths()["mine"] == tmp_path / "mine.yaml"
    assert load_profile("mine").name == "mine"
    assert "hgx-h200-fp8-tp8" in profile_paths()  # shipped ones still found
    with pytest.raises(ProfileError, match=r"differs from the file name 'other\.yaml'"):
        load_profile("other")


def test_tree_follows_a_copied_medusa_section() -> None:
    from medusa_trt.config.profile import MedusaSection

    p = load_profile("cpu")
    assert len(p.tree) == 15
    q = p.model_copy(update={"medusa": MedusaSection(num_heads=3, max_draft_len=3, tree=[[0], [0, 0], [1]])})
    assert q.tree == [[0], [0, 0], [1]] and q.id != p.id and len(p.tree) == 15
