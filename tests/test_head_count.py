"""The heads' tensors decide the head count. NVIDIA's nvidia/Llama-3.1-8B-Medusa-FP8 has 3 heads while
every shipped HGX profile says medusa.num_heads: 4 with a depth-3 tree: that is a note (-v), not an
error. Only a tree that needs a head the heads lack is refused (exit 2), naming the tree and a shipped
tree that fits, in plan, build, run --tree and heads train alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.cli import run as cli
from medusa_trt.config.profile import load_profile, profile_paths
from medusa_trt.medusa.trees import fitting_tree, load_tree, tree_stats

HGX = sorted(n for n in profile_paths() if n.startswith("hgx-"))
NOTE = "says medusa.num_heads: 4; the heads hold 3"


@pytest.fixture(scope="module")
def tiny8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama that divides over tp 8."""
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny8"), seed=1, num_attention_heads=8, num_key_value_heads=2)


@pytest.fixture(scope="module")
def modelopt3(tmp_path_factory: pytest.TempPathFactory, tiny8: Path, tiny_heads: Path) -> Path:
    """A ModelOpt FP8 combined checkpoint carrying 3 heads, the layout of nvidia/Llama-3.1-8B-Medusa-FP8."""
    from tests.helpers.modelopt import make_modelopt_fp8

    return make_modelopt_fp8(tiny8, tmp_path_factory.mktemp("modelopt3") / "fp8", heads_dir=tiny_heads)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_hgx_profiles_declare_four_heads_and_a_depth_3_tree() -> None:
    assert len(HGX) >= 4
    for name in HGX:
        p = load_profile(name)
        assert p.medusa.num_heads == 4, name
        assert p.engine == "vllm" or tree_stats(p.tree).depth == 3, name  # vLLM: a chain as long as the heads


@pytest.mark.parametrize("kind", ["faster-decoding", "modelopt"])
@pytest.mark.parametrize("name", HGX)
def test_three_head_heads_build_on_every_hgx_profile(
    name: str, kind: str, tiny8: Path, tiny_heads: Path, modelopt3: Path, tmp_path: Path, capsys: Any
) -> None:
    vllm = load_profile(name).engine == "vllm"
    if kind == "faster-decoding":
        src = ["--model", str(tiny8), "--medusa", str(tiny_heads)]
    else:  # vLLM loads the BF16 model and takes the combined checkpoint's heads (it refuses it as the model)
        src = ["--model", str(tiny8), "--medusa", str(modelopt3)] if vllm else ["--model", str(modelopt3)]
    args = ["build", "--profile", name, *src, "-o", str(tmp_path / "o"), "--dry-run", "--json"]
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    assert NOTE not in err  # a note, shown with -v only
    doc = json.loads(out)
    assert doc["spec"]["num_medusa_heads"] == 3 and doc["spec"]["sources"]["num_medusa_heads"] == "heads tensors"
    if vllm:  # vLLM drafts a top-1 chain: as long as the heads
        assert doc["spec"]["tree"] == [[0], [0, 0], [0, 0, 0]]
        return
    assert doc["medusa_yaml"]["speculative_config"]["num_medusa_heads"] == 3
    # whichever step writes the checkpoint (our convert, or TRT-LLM's quantize for FP8) is told 3 heads
    for flag in ("--num-medusa-heads", "--num_medusa_heads"):
        for step in doc["steps"]:
            if flag in step["argv"]:
                assert step["argv"][step["argv"].index(flag) + 1] == "3", step
    assert any(f in s["argv"] for s in doc["steps"] for f in ("--num-medusa-heads", "--num_medusa_heads"))
    rc, _, err = _cli(capsys, "-v", *args)
    assert rc == 0 and NOTE in err and "nvidia_low_latency_15" in err, err


def test_a_tree_deeper_than_the_heads_is_refused_naming_one_that_fits(
    tiny8: Path, tiny_heads: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "o"
    args = ["build", "-p", "hgx-h200-fp8-tp8", "-m", str(tiny8), "--medusa", str(tiny_heads), "-o", str(out)]
    rc, _, err = _cli(capsys, *args, "--tree", "mc_sim_7b_63", "--dry-run")
    assert rc == 2 and "Medusa tree mc_sim_7b_63" in err and "depth 4 needs 4 Medusa heads" in err, err
    assert "nvidia_low_latency_15" in err and "3 deep" in err, err
    assert not out.exists()


def test_fitting_tree_prefers_the_small_default() -> None:
    assert fitting_tree(3, 15) == "nvidia_low_latency_15"
    assert fitting_tree(4, 63) == "nvidia_low_latency_15"
    assert fitting_tree(4, 14) is None  # no shipped tree has under 15 nodes
    assert fitting_tree(2) is None
    assert tree_stats(load_tree("nvidia_low_latency_15")).depth == 3


def test_plan_takes_the_heads_count_from_the_heads(tiny_heads: Path, capsys: Any) -> None:
    base = ["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-70b", "--json"]
    rc, out, err = _cli(capsys, *base, "--medusa", str(tiny_heads))
    assert rc == 0, err
    assert json.loads(out)["num_medusa_heads"] == 3
    rc, _, err = _cli(capsys, "-v", *base, "--num-medusa-heads", "3")
    assert rc == 0 and "says medusa.num_heads: 4; planning for 3 heads" in err, err
    rc, _, err = _cli(capsys, *base, "--num-medusa-heads", "2")
    assert rc == 2 and "Medusa tree nvidia_low_latency_15" in err and "depth 3 needs 3" in err, err
    rc, _, err = _cli(capsys, *base, "--medusa", str(tiny_heads), "--num-medusa-heads", "4")
    assert rc == 2 and "hold 3" in err, err


def test_run_tree_deeper_than_the_heads(tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: Any) -> None:
    from tests.helpers.checkpoints import make_checkpoint

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck", heads=tiny_heads)
    rc, _, err = _cli(capsys, "run", str(ckpt), "--tree", "mc_sim_7b_63", "--prompt", "x", "--max-tokens", "2")
    assert rc == 2 and "Medusa tree mc_sim_7b_63" in err and "nvidia_low_latency_15" in err, err
    rc, _, err = _cli(capsys, "run", str(ckpt), "--tree", "nvidia_low_latency_15", "--prompt", "x", "--max-tokens", "2")
    assert rc == 0, err


def test_heads_train_refuses_a_tree_deeper_than_the_heads_before_training(
    tiny_llama: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "heads"
    args = ["heads", "train", "--model", str(tiny_llama), "--output", str(out), "--num-heads", "3"]
    rc, _, err = _cli(capsys, *args, "--tree", "mc_sim_7b_63", "--steps", "1")
    assert rc == 2 and "Medusa tree mc_sim_7b_63" in err and "nvidia_low_latency_15" in err, err
    assert not out.exists()
