"""`build --dry-run --json` for every shipped TensorRT-LLM profile, against TensorRT-LLM's interface."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from medusa_trt.cli import run as cli
from medusa_trt.config.profile import load_profile, profile_paths
from medusa_trt.config.trtllm_flags import TRTLLM_BUILD_FLAGS, TRTLLM_SERVE_FLAGS
from medusa_trt.medusa.trees import load_tree

TRTLLM_PROFILES = sorted(n for n, p in profile_paths().items() if load_profile(p).engine == "trtllm")


def test_shipped_trtllm_profiles_found() -> None:
    assert {"hgx-h200-fp8-tp8", "hgx-h200-bf16-tp8", "hgx-h100-fp8-tp8", "hgx-h100-bf16-tp8"} <= set(TRTLLM_PROFILES)


@pytest.fixture(scope="module")
def tiny8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama that divides over tp 8 (8 query heads, 2 KV heads: replicated 4x)."""
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny8"), seed=1, num_attention_heads=8, num_key_value_heads=2)


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    rc = cli(["build", *args, "--dry-run", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc: dict[str, Any] = json.loads(captured.out)
    return doc


def flags(argv: list[str]) -> dict[str, str]:
    """--name value pairs of an argv (every flag these tools take here has a value)."""
    out: dict[str, str] = {}
    rest = argv[1:]
    i = 0
    while i < len(rest):
        if rest[i].startswith("--"):
            assert rest[i] not in out, f"{rest[i]} given twice"
            out[rest[i]] = rest[i + 1]
            i += 2
        else:
            i += 1
    return out


@pytest.mark.parametrize("name", TRTLLM_PROFILES)
def test_dry_run_plan_matches_trtllm_interface(
    name: str, tiny8: Path, tiny_heads4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = load_profile(name)
    out = tmp_path / "engine-out"
    doc = dry_run(capsys, "--profile", name, "--model", str(tiny8), "--medusa", str(tiny_heads4), "-o", str(out))
    assert not out.exists(), "a dry run writes nothing"
    steps = {s["name"]: s for s in doc["steps"]}
    order = [s["name"] for s in doc["steps"]]
    world = profile.parallelism.tp * profile.parallelism.pp

    build = steps["build"]
    assert build["argv"][0] == "trtllm-build"
    f = flags(build["argv"])
    assert all(k[2:] in TRTLLM_BUILD_FLAGS for k in f), f
    assert f["--speculative_decoding_mode"] == "medusa"
    assert f["--workers"] == str(world)
    assert "--max_draft_len" not in f, "max_draft_len is inherited from the checkpoint"
    for key, value in profile.limits.model_dump().items():
        assert f[f"--{key}"] == str(value)
    for key, value in profile.trtllm_build.items():
        want = ("enable" if value else "disable") if isinstance(value, bool) else str(value)
        assert f[f"--{key}"] == want
    assert f["--checkpoint_dir"] == str(out.resolve() / "checkpoint")
    assert f["--output_dir"] == str(out.resolve() / "engine")
    assert build["outputs"] == ["engine"]

    if profile.precision.quantization == "fp8":  # a BF16 source: quantize first, heads unquantized
        q = steps["quantize"]
        assert order.index("quantize") < order.index("build") and "convert" not in steps
        qf = flags(q["argv"])
        assert q["argv"][1].endswith("quantization/quantize.py")
        assert qf["--qformat"] == "fp8" and qf["--kv_cache_dtype"] == "fp8"
        assert qf["--medusa_model_dir"] == str(tiny_heads4.resolve())
        assert qf["--num_medusa_heads"] == "4" and qf["--tp_size"] == str(profile.parallelism.tp)
        assert qf["--num_medusa_layers"] == str(doc["spec"]["num_medusa_layers"])
        assert "--quant_medusa_head" not in q["argv"]
        assert qf["--output_dir"] == f["--checkpoint_dir"]
        assert q["needs"]["gpus"] >= 1 and "GPU host" in q["needs"]["host"]
        assert any("quantize.py" in n for n in doc["notes"])
    else:
        assert "quantize" not in steps and order.index("convert") < order.index("build")
        c = steps["convert"]["argv"]
        assert c[c.index("--tp") + 1] == str(profile.parallelism.tp)
        assert c[c.index("--dtype") + 1] == profile.precision.dtype

    tree = load_tree(profile.medusa.tree)
    spec_cfg = doc["medusa_yaml"]["speculative_config"]
    assert spec_cfg == {
        "decoding_type": "Medusa",
        "max_draft_len": profile.medusa.max_draft_len,
        "num_medusa_heads": 4,
        "medusa_choices": tree,
    }  # 3: counted from the heads' tensors
    assert doc["spec"]["sources"]["num_medusa_heads"] == "heads tensors"

    serve = steps["serve"]
    assert serve["kind"] == "serve" and serve["argv"][:4] == [
        "trtllm-serve",
        str(out.resolve() / "engine"),
        "--backend",
        "tensorrt",
    ]
    sf = flags(serve["argv"][1:])
    assert all(k[2:] in TRTLLM_SERVE_FLAGS for k in sf), sf
    assert sf["--tp_size"] == str(profile.parallelism.tp)
    assert sf["--config"] == str(out.resolve() / "medusa.yaml")
    assert sf["--tokenizer"] == str(out.resolve())
    assert serve["env"] == profile.env
    assert steps["manifest"]["outputs"] == ["medusa-trt.json"]


def test_modelopt_fp8_checkpoint_converts_directly(
    tiny8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "modelopt"
    shutil.copytree(tiny8, src)
    (src / "hf_quant_config.json").write_text(
        json.dumps(
            {
                "producer": {"name": "modelopt", "version": "0.19"},
                "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
            }
        )
    )
    doc = dry_run(capsys, "--profile", "hgx-h200-fp8-tp8", "--model", str(src), "-o", str(tmp_path / "o"))
    names = [s["name"] for s in doc["steps"]]
    assert "quantize" not in names and names.index("convert") < names.index("build")
    convert = next(s for s in doc["steps"] if s["name"] == "convert")
    assert "--medusa" not in convert["argv"]
    assert doc["spec"]["model"]["format"] == "modelopt-fp8"
    assert any("converted directly" in n for n in doc["notes"])


def test_modelopt_combined_checkpoint_heads_are_counted(
    tiny8: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The heads inside a ModelOpt combined checkpoint set num_medusa_heads (5 here; the profile says 4).
    Fewer heads than the profile declares are used as they are (tests/test_head_count.py)."""
    from tests.helpers.modelopt import make_modelopt_fp8
    from tests.helpers.models import make_medusa_heads

    heads5 = make_medusa_heads(tmp_path / "heads5", hidden_size=64, vocab_size=320, num_heads=5)
    src = make_modelopt_fp8(tiny8, tmp_path / "fp8", heads_dir=heads5)
    doc = dry_run(capsys, "--profile", "hgx-h200-fp8-tp8", "--model", str(src), "-o", str(tmp_path / "o"))
    assert load_profile("hgx-h200-fp8-tp8").medusa.num_heads == 4
    assert doc["spec"]["num_medusa_heads"] == 5 and doc["spec"]["sources"]["num_medusa_heads"] == "heads tensors"
    convert = next(s for s in doc["steps"] if s["name"] == "convert")["argv"]
    assert convert[convert.index("--num-medusa-heads") + 1] == "5"
    assert doc["medusa_yaml"]["speculative_config"]["num_medusa_heads"] == 5


def test_hub_source_fp8_plan_fetches_then_quantizes(
    tiny_heads4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = dry_run(
        capsys,
        "--profile",
        "hgx-h200-fp8-tp8",
        "--model",
        "meta-llama/Llama-3.1-70B-Instruct",
        "--medusa",
        str(tiny_heads4),
        "-o",
        str(tmp_path / "o"),
    )
    names = [s["name"] for s in doc["steps"]]
    assert names[:3] == ["fetch-model", "quantize", "build"]
    q = next(s for s in doc["steps"] if s["name"] == "quantize")
    assert flags(q["argv"])["--model_dir"] == str((tmp_path / "o").resolve() / "sources" / "model")
    # sizes come from `plan` for the 70B preset: an FP8 TP8 checkpoint is tens of GiB
    assert 50 < q["needs"]["disk_gib"] < 120
    assert doc["checks"]["fits"] is True


@pytest.mark.parametrize("profile,host", [("cpu", "1x cpu"), ("hgx-h200-fp8-tp8", "8x H200")])
def test_a_model_of_unknown_shape_plans_each_step_on_its_host(
    profile: str, host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No preset for the hub id: no sizes and no `plan` checks, but every step still says where it runs."""
    args = ("--profile", profile, "--model", "acme/unknown-model", "--medusa", "acme/heads", "-o", str(tmp_path / "o"))
    doc = dry_run(capsys, *args)
    needs = {s["name"]: s["needs"] for s in doc["steps"]}
    assert doc["checks"] is None and needs["serve"] == {"host": host}
    gpu_steps = {"quantize", "build"} & set(needs)
    assert all(needs[n] == {"host": "GPU host"} for n in gpu_steps) and (profile == "cpu") != bool(gpu_steps)
    others = set(needs) - gpu_steps - {"serve", "manifest"}  # fetch, convert, runtime files, validate, ...
    assert others and all(needs[n]["host"] == "any" and not needs[n].get("disk_gib") for n in others)


def test_reference_plan_validates_instead_of_building(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = dry_run(
        capsys,
        "--profile",
        "cpu-tp2",
        "--model",
        str(tiny_llama),
        "--medusa",
        str(tiny_heads),
        "-o",
        str(tmp_path / "o"),
    )
    names = [s["name"] for s in doc["steps"]]
    assert names == ["convert", "runtime-files", "validate", "manifest", "serve"]
    assert doc["layout"]["engine_dir"] is None
    serve = doc["steps"][-1]["argv"]
    assert serve[:3] == ["medusa-trt", "run", str((tmp_path / "o").resolve())]


def test_tree_flag_overrides_profile_and_is_validated(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = dry_run(
        capsys,
        "--profile",
        "cpu",
        "--model",
        str(tiny_llama),
        "--medusa",
        str(tiny_heads),
        "-o",
        str(tmp_path / "o"),
        "--tree",
        "[[0], [1], [0, 0]]",
    )
    assert doc["spec"]["tree"] == [[0], [1], [0, 0]] and "medusa_yaml" not in doc  # no trtllm-serve here
    assert next(s for s in doc["steps"] if s["name"] == "runtime-files")["inputs"]["tree"] == [[0], [1], [0, 0]]
    assert doc["spec"]["sources"]["tree"] == "flag --tree"
    capsys.readouterr()
    rc = cli(
        [
            "build",
            "--profile",
            "cpu",
            "--model",
            str(tiny_llama),
            "--medusa",
            str(tiny_heads),
            "--dry-run",
            "--tree",
            "[[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]",
        ]
    )  # depth 4 > 3 heads
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err


def test_medusa_yaml_round_trips(tiny_llama: Path, tiny_heads: Path, tmp_path: Path) -> None:
    from medusa_trt.engines.trtllm import commands as trtllm

    text = trtllm.dump_medusa_yaml(
        trtllm.medusa_yaml_doc(max_draft_len=63, num_medusa_heads=4, tree=load_tree("mc_sim_7b_63"), extra={"a": 1})
    )
    doc = yaml.safe_load(text)
    assert doc["a"] == 1 and doc["speculative_config"]["medusa_choices"] == load_tree("mc_sim_7b_63")
    assert "- [0, 0]" in text  # one path per line, as NVIDIA's examples write it


def test_output_from_environment_records_its_source(
    tiny_llama: Path,
    tiny_heads: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MEDUSA_TRT_OUTPUT", str(tmp_path / "from-env"))
    doc = dry_run(capsys, "--profile", "cpu", "--model", str(tiny_llama), "--medusa", str(tiny_heads))
    assert doc["spec"]["output"] == str(tmp_path / "from-env")
    assert doc["spec"]["sources"]["output"] == "env MEDUSA_TRT_OUTPUT"
    assert doc["spec"]["sources"]["tp"] == "profile parallelism.tp"


def test_build_argv_guards_workers_and_managed_flags(tmp_path: Path) -> None:
    from medusa_trt.engines.trtllm import commands as trtllm
    from medusa_trt.errors import ProfileError

    kw = {
        "checkpoint_dir": tmp_path / "c",
        "output_dir": tmp_path / "e",
        "world_size": 8,
        "limits": {"max_batch_size": 1},
    }
    argv = trtllm.build_argv(**kw, profile_flags=["--gemm_plugin", "auto"])
    assert argv.count("--workers") == 1 and argv[argv.index("--workers") + 1] == "8"
    with pytest.raises(ProfileError, match="set by medusa-trt"):
        trtllm.build_argv(**kw, profile_flags=["--workers", "4"])
    with pytest.raises(ProfileError, match="set by medusa-trt"):
        trtllm.build_argv(**kw, profile_flags=["--max_batch_size", "4"])
    with pytest.raises(ProfileError, match="not one TensorRT-LLM"):
        trtllm.build_argv(**kw, profile_flags=["--tp_size", "8"])
