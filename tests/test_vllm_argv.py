"""The vLLM server command of every shipped vLLM profile, accepted by vLLM's own argument parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.config.profile import list_profiles, load_profile
from medusa_trt.engines.spec import resolve
from medusa_trt.engines.vllm import commands as vllm
from medusa_trt.errors import IncompatibleError, InvalidInputError, ProfileError

HUB_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
HUB_HEADS = "example/llama-3.1-70b-medusa-heads"
VLLM_PROFILES = sorted(p.name for p in list_profiles() if p.engine == "vllm")


def _args(name: str, tiny_llama: Path, tiny_heads4: Path, out: Path) -> list[str]:
    profile = load_profile(name)
    local = profile.hardware.device == "cpu"  # the CPU profile on local files, the GPU ones on hub ids
    spec = resolve(
        profile,
        str(tiny_llama) if local else HUB_MODEL,
        medusa=str(tiny_heads4) if local else HUB_HEADS,
        output=out,
        env={},
    )
    return vllm.serve_argv("python", vllm.server_args(spec, out), "127.0.0.1", 8123)[3:]


def test_the_shipped_vllm_profiles() -> None:
    assert VLLM_PROFILES == ["cpu-vllm", "hgx-h200-vllm-fp8-tp8", "hgx-h200-vllm-tp8"]


def test_vllm_parses_every_shipped_profiles_command(tmp_path: Path, tiny_llama: Path, tiny_heads4: Path) -> None:
    from tests.helpers.vllm import parse_with_vllm, require_vllm

    python = require_vllm()
    argvs = [_args(n, tiny_llama, tiny_heads4, tmp_path / n) for n in VLLM_PROFILES]
    parsed = dict(zip(VLLM_PROFILES, parse_with_vllm(python, argvs), strict=True))
    cpu, bf16, fp8 = parsed["cpu-vllm"], parsed["hgx-h200-vllm-tp8"], parsed["hgx-h200-vllm-fp8-tp8"]
    assert cpu["model"] == str(tiny_llama) and cpu["dtype"] == "float32" and cpu["enforce_eager"] is True
    spec_cfg = {"method": "medusa", "model": str(tmp_path / "cpu-vllm" / "heads"), "num_speculative_tokens": 4}
    assert cpu["speculative_config"] == spec_cfg
    assert cpu["max_model_len"] == 256  # the tiny model's positions, below the profile's 512
    assert (cpu["max_num_seqs"], cpu["max_num_batched_tokens"], cpu["tensor_parallel_size"]) == (4, 1024, 1)
    assert (cpu["host"], cpu["port"]) == ("127.0.0.1", 8123)
    for doc in (bf16, fp8):
        assert doc["model"] == HUB_MODEL and doc["revision"] == "main" and doc["tensor_parallel_size"] == 8
        assert doc["dtype"] == "bfloat16" and doc["gpu_memory_utilization"] == 0.9
        assert doc["speculative_config"]["num_speculative_tokens"] == 4  # the profile's 4 heads (hub: unread)
    assert (bf16["quantization"], bf16["kv_cache_dtype"]) == (None, "auto")
    assert (fp8["quantization"], fp8["kv_cache_dtype"]) == ("fp8", "fp8")


def test_the_chain_is_min_of_heads_and_the_cap(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    spec = resolve(load_profile("cpu-vllm"), str(tiny_llama), medusa=str(tiny_heads), output=tmp_path, env={})
    assert spec.max_draft_len == 3 and spec.tree == [[0], [0, 0], [0, 0, 0]]  # 3 heads under a cap of 4
    assert "vLLM's top-1 chain" in spec.sources["max_draft_len"]
    argv = vllm.server_args(spec, tmp_path)
    assert json.loads(argv[argv.index("--speculative-config") + 1])["num_speculative_tokens"] == 3
    with pytest.raises(InvalidInputError, match="top-1 chain, not a tree"):
        resolve(load_profile("cpu-vllm"), str(tiny_llama), medusa=str(tiny_heads), tree="[[0], [1]]", env={})


def test_a_modelopt_combined_base_model_is_refused_with_the_reason(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.helpers.modelopt import make_modelopt_fp8
    from tests.helpers.models import make_medusa_heads

    heads = make_medusa_heads(tmp_path / "h", hidden_size=64, vocab_size=320, num_heads=2)
    combined = make_modelopt_fp8(tiny_llama, tmp_path / "fp8", heads_dir=heads)
    spec = resolve(load_profile("cpu-vllm"), str(combined), output=tmp_path / "out", env={})
    with pytest.raises(IncompatibleError, match=r"medusa_heads\.\* tensors") as e:
        vllm.check_sources(spec)
    assert "as --medusa" in (e.value.hint or "")
    # as the heads, the same checkpoint is read: its two heads set the chain
    spec = resolve(load_profile("cpu-vllm"), str(tiny_llama), medusa=str(combined), output=tmp_path / "o", env={})
    assert spec.num_medusa_heads == 2 and spec.max_draft_len == 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"vllm": {"speculative_config": "{}"}}, "'speculative_config' is set by medusa-trt"),
        ({"vllm": {"max_model_len": 4}}, "'max_model_len' is set by medusa-trt"),
        ({"medusa": {"num_heads": 4, "max_draft_len": 4, "tree": [[0], [1]]}}, "top-1 chain"),
        ({"precision": {"dtype": "float32", "quantization": "fp8"}}, "FP8 weights and KV cache need a GPU"),
        ({"trtllm_build": {"use_fused_mlp": "enable"}}, "takes no trtllm-build flags"),
    ],
)
def test_vllm_profile_mistakes_name_the_key(tmp_path: Path, edit: dict, message: str) -> None:
    import yaml

    doc = yaml.safe_load(load_profile("cpu-vllm").source.read_text())  # type: ignore[union-attr]
    doc.update(edit)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


def test_a_missing_vllm_exits_3_with_the_install_line(tmp_path: Path) -> None:
    from medusa_trt.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as e:
        vllm.require_python({vllm.PYTHON_ENV: str(tmp_path / "nope")})
    assert e.value.exit_code == 3 and "medusa-trt[vllm]" in (e.value.hint or "")


def test_plan_knows_vllm_drafts_a_chain(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medusa_trt.cli import run as cli

    acc = tmp_path / "accuracy.csv"
    acc.write_text("0.5,0.2\n0.4,0.1\n0.25,0.1\n")
    args = ["plan", "--profile", "cpu-vllm", "--model", str(tiny_llama), "--medusa", str(tiny_heads), "--json"]
    docs = []
    for extra in ([], ["--accuracy", str(acc)]):
        capsys.readouterr()
        assert cli([*args, *extra]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    plain, with_acc = docs
    for doc in docs:  # 3 heads under cpu-vllm's cap of 4: a chain of 3, 4 tokens verified a step
        assert doc["tree"]["drafting"] == "chain" and doc["tree"]["depth"] == doc["tree"]["nodes"] == 3
        assert doc["prediction"]["medusa"]["verify_tokens"] == 4
    assert "default" in plain["prediction"]["tokens_per_step_source"]
    assert "head-accuracy table" in with_acc["prediction"]["tokens_per_step_source"]
    # the chain's expected tokens per step: 1 + a0 + a0*a1 + a0*a1*a2 over the rank-0 accuracies
    assert with_acc["prediction"]["medusa"]["tokens_per_step"] == pytest.approx(1 + 0.5 + 0.5 * 0.4 + 0.5 * 0.4 * 0.25)
