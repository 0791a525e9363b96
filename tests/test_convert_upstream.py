"""Three inputs that TensorRT-LLM 1.x's own Medusa converter gets wrong, pinned for ours.

Upstream (NVIDIA/TensorRT-LLM at v1.0.0-v1.2.0): ``examples/medusa/convert_checkpoint.py``,
``tensorrt_llm/models/medusa/weight.py`` (``load_medusa_hf``), ``tensorrt_llm/models/convert_utils.py``
(``split``), ``tensorrt_llm/models/medusa/model.py`` (the heads' ``pad_vocab_size`` allocation).
Each test states the upstream result in its docstring and asserts ours on real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medusa_trt.checkpoint import convert_checkpoint
from tests.helpers.models import make_medusa_heads, make_tiny_llama

V, D, TP = 250, 64, 4  # 250 = 4 * 62 + 2: torch.chunk gives 63, 63, 63, 61 rows; the model wants 4 x 63


def _rank(out: Path, r: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"rank{r}.safetensors"))


@pytest.fixture(scope="module")
def odd_vocab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("upstream")
    return {
        "model": make_tiny_llama(root / "model", seed=4, vocab_size=V, tokenizer=False),
        "tied": make_tiny_llama(root / "tied", seed=5, vocab_size=V, tie_word_embeddings=True, tokenizer=False),
        "heads": make_medusa_heads(root / "heads", hidden_size=D, vocab_size=V, num_heads=2, seed=6),
        "heads2": make_medusa_heads(root / "heads2", hidden_size=D, vocab_size=V, num_heads=2, num_layers=2, seed=7),
    }


def test_heads_lm_head_padded_to_the_models_rows(odd_vocab: dict[str, Path], tmp_path: Path) -> None:
    """Upstream ``load_medusa_hf`` cuts each head's lm_head with ``split`` = ``torch.chunk``: 61 rows on the
    last of 4 ranks for V=250, while ``MedusaHead`` allocates ``pad_vocab_size(250, 4) / 4`` = 63 rows, so
    the engine's weights do not match its shapes. Ours: every rank holds 63 rows, the last two zero."""
    src = load_file(str(odd_vocab["heads"] / "medusa_lm_head.safetensors"))["0.1.weight"]  # [V, D]
    assert [c.shape[0] for c in torch.chunk(src, TP)] == [63, 63, 63, 61]  # what upstream would write
    out = tmp_path / "ckpt"
    convert_checkpoint(odd_vocab["model"], out, medusa=odd_vocab["heads"], tp=TP, progress=False)
    rows = -(-V // TP)
    pieces = [_rank(out, r)["medusa_heads.0.lm_head.weight"] for r in range(TP)]
    assert all(p.shape == (rows, D) for p in pieces)
    assert torch.equal(torch.cat(pieces)[:V], src)
    assert not torch.cat(pieces)[V:].any()  # the rows past V are zero padding
    assert json.loads((out / "config.json").read_text())["vocab_size"] == V  # the real vocabulary, unpadded


@pytest.mark.parametrize("heads_config", ["as-published", "without-layer-count"])
def test_layer_count_comes_from_the_tensors(odd_vocab: dict[str, Path], tmp_path: Path, heads_config: str) -> None:
    """Upstream writes ``num_medusa_layers`` into config.json (from ``--num_medusa_layers``, default 1) before
    it reads the heads' config.json, so 2-layer heads are recorded as 1 unless the flag is passed. Ours
    counts the layers in the tensors, with no flag, whatever the heads' config.json says."""
    heads = odd_vocab["heads2"]
    if heads_config == "without-layer-count":
        heads = tmp_path / "heads"
        heads.mkdir()
        (heads / "medusa_lm_head.safetensors").write_bytes(
            (odd_vocab["heads2"] / "medusa_lm_head.safetensors").read_bytes()
        )
        (heads / "config.json").write_text(json.dumps({"medusa_num_heads": 2}))
    out = tmp_path / "ckpt"
    res = convert_checkpoint(odd_vocab["model"], out, medusa=heads, tp=2, progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_medusa_layers"] == 2 == res.config["num_medusa_layers"]
    with safe_open(str(out / "rank0.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert {f"medusa_heads.{k}.medusa_layers.{ly}.linear.weight" for k in (0, 1) for ly in (0, 1)} <= names


def test_tied_embedding_model_converts(odd_vocab: dict[str, Path], tmp_path: Path) -> None:
    """Upstream reads ``lm_head.weight`` unconditionally (``get_weight(model_params, 'lm_head', ...)``) and
    stops with ``KeyError: 'lm_head.weight'`` on tied-embedding models such as Llama 3.2 1B/3B, whose
    checkpoints carry only the embedding. Ours writes lm_head from the embedding, padded per rank."""
    with safe_open(str(odd_vocab["tied"] / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")  # [V, D]
    out = tmp_path / "ckpt"
    convert_checkpoint(odd_vocab["tied"], out, medusa=odd_vocab["heads"], tp=TP, progress=False)
    lm = torch.cat([_rank(out, r)["lm_head.weight"] for r in range(TP)])  # [V_pad, D]
    assert lm.shape == (-(-V // TP) * TP, D)
    assert torch.equal(lm[:V], emb) and not lm[V:].any()
