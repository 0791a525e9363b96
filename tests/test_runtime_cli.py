"""`medusa-trt run DIR --prompt`, default trees, and refusal of trees/heads that cannot work together
(before any weight is read: the rank file in the refusal cases is garbage)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medusa_trt.cli import run as cli
from medusa_trt.errors import TreeError
from medusa_trt.medusa.trees import tree_problems
from medusa_trt.runtime import load_engine
from medusa_trt.runtime.config import default_tree, read_checkpoint, simple_tree
from tests.helpers.checkpoints import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    return make_checkpoint(tiny_llama, tmp_path_factory.mktemp("cli") / "ckpt", heads=tiny_heads)


@pytest.fixture
def broken(ckpt: Path, tmp_path: Path) -> Path:
    """The same config.json but an unreadable rank file: only a refusal before compute can pass."""
    out = tmp_path / "broken"
    out.mkdir()
    shutil.copy(ckpt / "config.json", out / "config.json")
    (out / "rank0.safetensors").write_bytes(b"not a safetensors file")
    return out


def test_run_json_greedy_medusa_equals_no_medusa(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["run", str(ckpt), "--prompt", "def main", "--max-tokens", "12", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert cli(["run", str(ckpt), "--prompt", "def main", "--max-tokens", "12", "--json", "--no-medusa"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert doc["token_ids"] == plain["token_ids"] and 0 < len(doc["token_ids"]) <= 12
    assert doc["stats"]["medusa"] is True and plain["stats"]["medusa"] is False
    assert doc["tokens_per_step"] == pytest.approx((doc["completion_tokens"] - 1) / doc["num_steps"])
    assert isinstance(doc["text"], str) and doc["stats"]["tree_nodes"] == 15  # the default: nvidia_low_latency_15


def test_run_text_and_chat(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(["run", str(ckpt), "--prompt", "hello", "--max-tokens", "4", "--chat", "--tree", "[[0], [1], [0, 0]]"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.endswith("\n") and "tokens/step" in captured.err


@pytest.mark.parametrize(
    ("tree", "words"),
    [
        ("[[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]", "needs 4 Medusa heads"),
        ("[[0], [10]]", "ranks must be in 0..9"),
        ("mc_sim_7b_63", "needs 4 Medusa heads"),
    ],
)
def test_bad_tree_refused_before_compute(
    broken: Path, tree: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TreeError, match=words):
        load_engine(broken, tree=tree)
    assert cli(["run", str(broken), "--prompt", "x", "--tree", tree]) == 2
    err = capsys.readouterr().err
    assert "invalid Medusa tree" in err and "Traceback" not in err


def test_nodes_beyond_max_draft_len_refused(broken: Path) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(cfg, max_draft_len=8)))
    with pytest.raises(TreeError, match="15 nodes exceed max_draft_len 8"):
        load_engine(broken, tree="nvidia_low_latency_15")
    tree = default_tree(read_checkpoint(broken))  # the default shrinks to fit instead
    assert len(tree) <= 8 and not tree_problems(tree, num_heads=3, max_draft_len=8)


def test_simple_tree_for_few_heads() -> None:
    for heads in (1, 2, 3, 5):
        tree = simple_tree(heads, 63)
        assert not tree_problems(tree, num_heads=heads, max_draft_len=63)
        assert max(len(p) for p in tree) == heads


def test_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["run", str(tmp_path), "--prompt", "x"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_no_medusa_without_prompt_is_refused(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a server takes no --no-medusa (requests say "medusa": false): refused before anything starts
    assert cli(["run", str(ckpt), "--no-medusa", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--no-medusa applies to one generation (--prompt)" in err and '"medusa": false' in err


def test_engine_dir_manifest_names_checkpoint_and_tree(ckpt: Path, tmp_path: Path) -> None:
    import os

    from medusa_trt.runtime import SamplingParams

    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    (engine_dir / "medusa-trt.json").write_text(
        json.dumps(  # checkpoint_dir is relative to the engine dir
            {"engine": "reference", "checkpoint_dir": os.path.relpath(ckpt, engine_dir), "tree": [[0], [1], [0, 0]]}
        )
    )
    with load_engine(engine_dir) as engine:
        assert engine.tree == [[0], [1], [0, 0]] and engine.tokenizer is not None
        out = [t for c in engine.generate([5, 6], SamplingParams(max_tokens=5)) for t in c.token_ids]
        assert 0 < len(out) <= 5


def test_run_sampling_flags(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--acceptance and --no-adapt reach the runtime; a seed gives the same tokens with Medusa on or off."""
    assert cli(["run", str(ckpt), "--prompt", "x", "--temperature", "0.9", "--acceptance", "fast"]) == 2
    err = capsys.readouterr().err
    assert "'--acceptance'" in err and "'exact', 'typical'" in err
    base = ["run", str(ckpt), "--prompt", "def main", "--max-tokens", "10", "--json", "--temperature", "0.9"]
    assert cli([*base, "--seed", "3", "--no-adapt"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["stats"]["adaptive"] is False and fixed["stats"]["acceptance"] == "exact"
    assert set(fixed["stats"]["tree_nodes_used"]) == {"15"}  # the whole default tree, every step
    assert cli([*base, "--seed", "3", "--no-medusa"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == fixed["token_ids"]
    assert cli([*base, "--seed", "3"]) == 0
    adaptive = json.loads(capsys.readouterr().out)
    assert adaptive["stats"]["adaptive"] is True and adaptive["token_ids"] == fixed["token_ids"]
