"""`heads train`, `tree accuracy` and `tree sweep` through the real CLI, on a tiny converted checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.cli import run
from medusa_trt.medusa.tree_builder import parse_accuracy_csv, parse_step_times

PROMPTS = ["def add(a, b):\n", "class Model:\n    def __init__(self, name):\n", "import os\n"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": x}) + "\n" for x in PROMPTS))
    return p


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """Heads whose lm_heads are the base lm_head (as the paper initialises them): non-trivial accuracy."""
    from safetensors.torch import load_file

    from tests.helpers.models import make_medusa_heads

    lm = load_file(str(tiny_llama / "model.safetensors"))["lm_head.weight"]
    return make_medusa_heads(
        tmp_path_factory.mktemp("heads"), hidden_size=64, vocab_size=320, num_heads=3, lm_head=lm, scale=0.01
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, heads_dir: Path) -> Path:
    from medusa_trt.checkpoint.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "c"
    convert_checkpoint(tiny_llama, out, medusa=heads_dir, progress=False, max_draft_len=16)
    return out


def test_heads_train_cli(
    tmp_path: Path, tiny_llama: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "heads"
    code = run(
        [
            "heads",
            "train",
            "--model",
            str(tiny_llama),
            "--output",
            str(out),
            "--num-heads",
            "2",
            "--data",
            str(prompts_file),
            "--steps",
            "4",
            "--seq-len",
            "48",
            "--gen-tokens",
            "16",
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 4 and len(doc["top1"]) == 2 and doc["sequences"] == 3
    assert json.loads((out / "config.json").read_text())["medusa_num_heads"] == 2
    assert (out / "medusa_lm_head.safetensors").is_file()

    # the result files are in a manifest that `verify` checks byte for byte (the stage cache is not)
    listed = json.loads((out / "medusa-trt-heads.json").read_text())["files"]
    assert set(listed) == {"medusa_lm_head.safetensors", "config.json", "training.json", "accuracy.csv"}
    assert run(["verify", str(out)]) == 0
    heads = out / "medusa_lm_head.safetensors"
    data = bytearray(heads.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern changed in place, same size
    heads.write_bytes(bytes(data))
    capsys.readouterr()
    assert run(["verify", str(out)]) == 1
    assert "medusa_lm_head.safetensors" in capsys.readouterr().err


def test_heads_train_bad_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m").mkdir()
    assert run(["heads", "train", "--model", str(tmp_path / "m"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "neither a Hugging Face model nor a TRT-LLM checkpoint" in err and "Traceback" not in err


def test_accuracy_on_the_runtime_matches_the_hf_model(ckpt: Path, tiny_llama: Path, heads_dir: Path) -> None:
    from medusa_trt.train.accuracy import measure_accuracy

    rt = measure_accuracy(ckpt, list(PROMPTS), steps=16, topk=5).table
    hf = measure_accuracy(tiny_llama, list(PROMPTS), heads_dir=heads_dir, steps=16, topk=5).table
    assert len(rt) == 3 and all(len(r) == 5 for r in rt)
    assert sum(rt[0]) > 0.1  # not a vacuous all-zero comparison
    for a, b in zip(rt, hf, strict=True):
        assert a == pytest.approx(b, abs=0.07)  # same model, same heads: two implementations agree


def test_tree_accuracy_sweep_build_chain(
    ckpt: Path, tmp_path: Path, prompts_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acc = tmp_path / "acc.csv"
    assert run(["tree", "accuracy", str(ckpt), "--data", str(prompts_file), "--steps", "12", "--out", str(acc)]) == 0
    table = parse_accuracy_csv(acc.read_text())
    assert len(table) == 3 and all(len(r) == 10 for r in table)
    steps = tmp_path / "steps.csv"
    assert (
        run(
            [
                "tree",
                "sweep",
                str(ckpt),
                "--sizes",
                "0,1,4,8",
                "--repeats",
                "2",
                "--context-len",
                "16",
                "--out",
                str(steps),
            ]
        )
        == 0
    )
    curve = parse_step_times(steps.read_text())
    assert sorted(curve) == [0, 1, 4, 8] and all(v > 0 for v in curve.values())
    capsys.readouterr()
    assert run(["tree", "build", "-a", str(acc), "--step-times", str(steps), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert 1 <= doc["nodes"] <= 8 and len(doc["choices"]) == doc["nodes"]


def test_sweep_rejects_oversized_trees(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tree", "sweep", str(ckpt), "--sizes", "400", "--context-len", "200"]) == 2
    assert "exceed max_seq_len" in capsys.readouterr().err
