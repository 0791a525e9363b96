"""vLLM-native heads from FasterDecoding heads and ModelOpt combined checkpoints: names, shapes, biases kept.

That vLLM loads and uses them is tested against vLLM itself, in the vLLM engine tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.checkpoint.vllm_heads import write_vllm_heads
from medusa_trt.errors import CheckpointError, InvalidInputError


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_fasterdecoding_heads_keep_their_biases(tmp_path: Path, tiny_heads: Path) -> None:
    info = write_vllm_heads(tiny_heads, tmp_path, chain=3, dtype="float32")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "medusa" and cfg["architectures"] == ["MedusaModel"]
    assert (cfg["num_heads"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (3, 1, 64, 320)
    assert cfg["medusa_fc_bias"] is True and cfg["truncated_vocab_size"] == 320
    src, out = _load(tiny_heads / "medusa_lm_head.safetensors"), _load(tmp_path / "model.safetensors")
    assert set(out) == {f"blocks.{k}.layers.0.{p}" for k in range(3) for p in ("weight", "bias")} | {
        f"lm_heads.{k}.weight" for k in range(3)
    }
    for k in range(3):
        assert out[f"blocks.{k}.layers.0.weight"].equal(src[f"{k}.0.linear.weight"])
        assert out[f"blocks.{k}.layers.0.bias"].equal(src[f"{k}.0.linear.bias"])
        assert out[f"lm_heads.{k}.weight"].equal(src[f"{k}.1.weight"])
    assert info.has_bias and any("biases kept" in n for n in info.notes)


def test_heads_without_bias_say_so(tmp_path: Path) -> None:
    from tests.helpers.models import make_medusa_heads

    heads = make_medusa_heads(tmp_path / "h", hidden_size=64, vocab_size=320, num_heads=2, num_layers=2, bias=False)
    (tmp_path / "out").mkdir()
    write_vllm_heads(heads, tmp_path / "out", chain=2, dtype="bfloat16")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["medusa_fc_bias"] is False and cfg["num_hidden_layers"] == 2 and cfg["torch_dtype"] == "bfloat16"
    out = _load(tmp_path / "out" / "model.safetensors")
    assert not any(n.endswith(".bias") for n in out) and "blocks.1.layers.1.weight" in out
    assert {str(t.dtype) for t in out.values()} == {"torch.bfloat16"}


def test_the_tensors_set_the_head_count_not_the_config(tmp_path: Path) -> None:
    from tests.helpers.models import make_medusa_heads

    heads = make_medusa_heads(tmp_path / "h", hidden_size=64, vocab_size=320, num_heads=2, config_num_heads=5)
    (tmp_path / "out").mkdir()
    info = write_vllm_heads(heads, tmp_path / "out", chain=2, dtype="float32")
    assert info.num_heads == 2 and json.loads((tmp_path / "out" / "config.json").read_text())["num_heads"] == 2
    assert any("config.json says 5 heads" in n for n in info.notes)


def test_a_chain_longer_than_the_heads_is_refused(tmp_path: Path, tiny_heads: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"chain of 4 draft tokens needs 4 heads.*hold 3"):
        write_vllm_heads(tiny_heads, tmp_path, chain=4, dtype="float32")
    assert not (tmp_path / "model.safetensors").exists()


def test_a_head_of_the_wrong_shape_is_refused(tmp_path: Path, tiny_heads: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = _load(tiny_heads / "medusa_lm_head.safetensors")
    state["1.0.linear.weight"] = torch.zeros(64, 32)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, str(bad / "medusa_lm_head.safetensors"))
    with pytest.raises(CheckpointError, match=r"1\.0\.linear\.weight has shape \[64, 32\], expected \[64, 64\]"):
        write_vllm_heads(bad, tmp_path, chain=1, dtype="float32")


def test_modelopt_fp8_heads_are_dequantized(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    from tests.helpers.modelopt import make_modelopt_fp8

    combined = make_modelopt_fp8(tiny_llama, tmp_path / "fp8", heads_dir=tiny_heads)
    (tmp_path / "out").mkdir()
    info = write_vllm_heads(combined, tmp_path / "out", chain=3, dtype="float32")
    assert info.source_format == "modelopt" and info.has_bias
    assert any("dequantized" in n for n in info.notes)
    src, out = _load(combined / "model.safetensors"), _load(tmp_path / "out" / "model.safetensors")
    for k in range(3):
        q, s = src[f"medusa_heads.{k}.0.linear.weight"], src[f"medusa_heads.{k}.0.linear.weight_scale"]
        assert out[f"blocks.{k}.layers.0.weight"].equal(q.float() * s.float())
        assert out[f"blocks.{k}.layers.0.bias"].equal(src[f"medusa_heads.{k}.0.linear.bias"].float())
    # the dequantized heads stay close to the originals (per-tensor FP8 rounding)
    orig = _load(tiny_heads / "medusa_lm_head.safetensors")["0.0.linear.weight"]
    assert (out["blocks.0.layers.0.weight"] - orig).abs().max() <= orig.abs().max() / 8


def test_a_directory_without_heads_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(CheckpointError, match="no Medusa heads"):
        write_vllm_heads(tiny_llama, tmp_path, chain=1, dtype="float32")


def test_heads_with_one_lm_head_write_it_once(tmp_path: Path) -> None:
    """Every head's lm_head the same tensor (``heads train --share-lm-head``): vLLM gets ``original_lm_head``
    and a single ``lm_heads.0.weight``; one head whose lm_head differs keeps them all, and the flag off."""
    import torch
    from safetensors.torch import save_file

    from tests.helpers.models import make_medusa_heads

    base = torch.randn(320, 64, generator=torch.Generator().manual_seed(0))
    shared = make_medusa_heads(tmp_path / "shared", hidden_size=64, vocab_size=320, num_heads=3, lm_head=base)
    info = write_vllm_heads(shared, tmp_path / "out-shared", chain=3, dtype="float32")
    cfg, out = (
        json.loads((tmp_path / "out-shared" / "config.json").read_text()),
        _load(tmp_path / "out-shared" / "model.safetensors"),
    )
    assert info.shared_lm_head and cfg["original_lm_head"] is True
    assert [k for k in out if k.startswith("lm_heads.")] == ["lm_heads.0.weight"] and out["lm_heads.0.weight"].equal(
        base
    )
    own = make_medusa_heads(tmp_path / "own", hidden_size=64, vocab_size=320, num_heads=3, lm_head=base)
    state = _load(own / "medusa_lm_head.safetensors")
    state["2.1.weight"][0, 0] += 1.0
    save_file(state, str(own / "medusa_lm_head.safetensors"))
    info = write_vllm_heads(own, tmp_path / "out-own", chain=3, dtype="float32")
    cfg, out = (
        json.loads((tmp_path / "out-own" / "config.json").read_text()),
        _load(tmp_path / "out-own" / "model.safetensors"),
    )
    assert not info.shared_lm_head and "original_lm_head" not in cfg
    assert {k for k in out if k.startswith("lm_heads.")} == {f"lm_heads.{k}.weight" for k in range(3)}
    assert out["lm_heads.2.weight"].equal(state["2.1.weight"])
