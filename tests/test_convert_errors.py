"""`medusa-trt convert` on bad inputs: one-line error, exit 2, and nothing left behind (no temp dir either)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.cli import run
from tests.helpers.models import make_medusa_heads


def _convert(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = run(["convert", *args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip()]


def _assert_clean_failure(code: int, lines: list[str], out: Path, needle: str) -> None:
    assert code == 2, lines
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], lines
    assert not any("Traceback" in ln for ln in lines)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp sibling


def test_missing_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(tmp_path / "nope"), "--output", str(out))
    _assert_clean_failure(code, lines, out, "no such directory")


def test_missing_weights_file(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    (src / "model.safetensors").unlink()
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(src), "--output", str(out))
    _assert_clean_failure(code, lines, out, "no model.safetensors")


def test_truncated_safetensors(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    weights = src / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 1000)
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(src), "--output", str(out), "--tp", "2")
    _assert_clean_failure(code, lines, out, "truncated")


def test_wrong_head_shapes(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    heads = make_medusa_heads(tmp_path / "heads", hidden_size=32, vocab_size=320, num_heads=2)
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(tiny_llama), "--medusa", str(heads), "--output", str(out))
    _assert_clean_failure(code, lines, out, "hidden size 32")


def test_wrong_head_vocab(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    heads = make_medusa_heads(tmp_path / "heads", hidden_size=64, vocab_size=300, num_heads=2)
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(tiny_llama), "--medusa", str(heads), "--output", str(out))
    _assert_clean_failure(code, lines, out, "expected [320, 64]")


@pytest.mark.parametrize(("tp", "needle"), [("3", "does not divide"), ("8", "does not divide")])
def test_tp_that_does_not_divide(
    tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str], tp: str, needle: str
) -> None:
    out = tmp_path / "out"  # tiny_llama: 4 attention heads, 2 KV heads
    code, lines = _convert(capsys, "--model", str(tiny_llama), "--output", str(out), "--tp", tp)
    _assert_clean_failure(code, lines, out, needle)


def test_pipeline_parallel_refused(tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(tiny_llama), "--output", str(out), "--pp", "2")
    _assert_clean_failure(code, lines, out, "pipeline parallelism")


def test_tree_needs_more_heads(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"  # mc_sim_7b_63 is 4 deep; tiny_heads has 3 heads
    code, lines = _convert(
        capsys, "--model", str(tiny_llama), "--medusa", str(tiny_heads), "--output", str(out), "--tree", "mc_sim_7b_63"
    )
    _assert_clean_failure(code, lines, out, "needs 4 Medusa heads")
    code, lines = _convert(
        capsys,
        "--model",
        str(tiny_llama),
        "--medusa",
        str(tiny_heads),
        "--output",
        str(out),
        "--tree",
        "mc_sim_7b_61",
        "--max-draft-len",
        "40",
    )
    _assert_clean_failure(code, lines, out, "exceed max_draft_len 40")


def test_more_heads_than_tensors(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, lines = _convert(
        capsys, "--model", str(tiny_llama), "--medusa", str(tiny_heads), "--output", str(out), "--num-medusa-heads", "5"
    )
    _assert_clean_failure(code, lines, out, "hold 3 head(s)")


def test_unknown_repo_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", "acme/missing-model", "--output", str(out))
    _assert_clean_failure(code, lines, out, "not in the local Hugging Face cache")
    assert any("HF_HUB_OFFLINE" in ln for ln in lines)  # the hint names the fix


def test_foreign_output_is_refused_even_with_force(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-empty directory medusa-trt did not write is never replaced; our own is, with --force only."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for extra in ([], ["--force"]):
        code, lines = _convert(capsys, "--model", str(tiny_llama), "--output", str(out), *extra)
        assert code == 2 and sum(ln.startswith("error:") for ln in lines) == 1, lines
        assert "not written by medusa-trt" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
        assert (out / "keep.txt").read_text() == "precious"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    mine = tmp_path / "mine"
    args = ("--model", str(tiny_llama), "--medusa", str(tiny_heads), "--output", str(mine), "--tp", "2")
    assert _convert(capsys, *args)[0] == 0
    code, lines = _convert(capsys, *args)
    assert code == 2 and "already holds a medusa-trt checkpoint" in lines[0]
    code, lines = _convert(capsys, *args, "--force", "--json")
    assert code == 0, lines
    assert (mine / "rank1.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_write_leaves_nothing(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in the middle of writing rank files: exit 130, no output, no temp directory."""
    from medusa_trt.checkpoint import writer

    calls = {"n": 0}
    real = writer.write_item

    def interrupt_after_some(*args: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(writer, "write_item", interrupt_after_some)
    out = tmp_path / "out"
    code = run(["convert", "--model", str(tiny_llama), "--output", str(out), "--tp", "2", "--workers", "2"])
    assert code == 130 and calls["n"] >= 7
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("head-scale", "missing tensor(s): medusa_heads.1.0.linear.weight_scale"),
        ("fp8-embedding", "model.embed_tokens.weight has dtype F8_E4M3"),
    ],
)
def test_fp8_without_scales_refused_before_writing(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path, capsys: pytest.CaptureFixture[str], case: str, needle: str
) -> None:
    """An FP8 tensor that cannot be dequantized (a head weight without its scale, an FP8 embedding) is a
    validation error, not a KeyError halfway through the rank files or an FP8 config dtype."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.helpers.modelopt import make_modelopt_fp8

    src = make_modelopt_fp8(tiny_llama, tmp_path / "fp8", heads_dir=tiny_heads)
    state = load_file(str(src / "model.safetensors"))
    if case == "head-scale":
        del state["medusa_heads.1.0.linear.weight_scale"]
    else:
        state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"].float().to(torch.float8_e4m3fn)
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    code, lines = _convert(capsys, "--model", str(src), "--output", str(out))
    _assert_clean_failure(code, lines, out, needle)
