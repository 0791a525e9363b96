"""Medusa heads on the reference runtime equal an independent computation from transformers' hidden states.

Its own module: a tp > 1 engine cannot start while another module's tp engine fixture is open.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medusa_trt.runtime import load_engine
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_tiny_llama


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("tp", [1, 4])
def test_medusa_heads_match_an_independent_reference(tmp_path: Path, tp: int) -> None:
    """Head logits = lm_head_k(ResBlock^L(h)) on the final hidden state *after* the last RMSNorm
    (TRT-LLM's MedusaHead), gathered over ranks: 2 layers with bias, a vocab (322) that tp 4 pads,
    KV heads replicated at tp 4. The reference is transformers' hidden state and the source head tensors."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from tests.helpers.models import make_medusa_heads

    v, d, k_heads, n_layers = 322, 64, 3, 2
    model_dir = make_tiny_llama(tmp_path / "model", seed=5, vocab_size=v, num_attention_heads=8)
    heads_dir = make_medusa_heads(
        tmp_path / "heads", hidden_size=d, vocab_size=v, num_heads=k_heads, num_layers=n_layers, scale=0.3, seed=9
    )
    ckpt = make_checkpoint(model_dir, tmp_path / "ckpt", heads=heads_dir, tp=tp)
    ids = torch.randint(0, v, (12,), generator=torch.Generator().manual_seed(1))
    hf = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf(ids[None], output_hidden_states=True)
    hidden, want_logits = out.hidden_states[-1][0], out.logits[0]  # [S, D] after model.norm, [S, V]
    src = load_file(str(heads_dir / "medusa_lm_head.safetensors"))
    with load_engine(ckpt, tree=[[0], [0, 0], [0, 0, 0]]) as engine:
        assert engine.tp == tp
        engine.reset_cache(16)
        logits = engine.forward(ids, torch.arange(12))
        assert logits.shape == (12, v) and rel_err(logits, want_logits) < 1e-4
        for row in (0, 5, 11):
            got = engine.head_logits(row)  # [K, V]
            assert got.shape == (k_heads, v)
            for k in range(k_heads):
                x = hidden[row]
                for ly in range(n_layers):
                    x = x + torch.nn.functional.silu(src[f"{k}.{ly}.linear.weight"] @ x + src[f"{k}.{ly}.linear.bias"])
                want = src[f"{k}.{n_layers}.weight"] @ x
                assert rel_err(got[k], want) < 1e-4, (row, k)
        # a prefill for the last row alone (as generate runs one): its logits, and the heads on its row
        engine.reset_cache(16)
        last = engine._runner.forward(ids, torch.arange(12), last=True)
        assert last.shape == (1, v) and rel_err(last, want_logits[-1:]) < 1e-4
        want_heads = engine.head_logits(0)
        engine.reset_cache(16)
        engine.forward(ids, torch.arange(12))
        assert rel_err(want_heads, engine.head_logits(11)) < 1e-4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_bfloat16_heads_run_on_packed_lm_heads(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    """In bfloat16 each head's lm_head is a packed oneDNN weight (no transposed stack): the head logits
    still equal the head computed from the checkpoint's own tensors, for all heads and for the first few."""
    from safetensors.torch import load_file

    from medusa_trt.runtime import kernels

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ckpt", heads=tiny_heads, dtype="bfloat16")
    src = {k: t.float() for k, t in load_file(str(ckpt / "rank0.safetensors")).items()}
    ids = torch.randint(0, 320, (12,), generator=torch.Generator().manual_seed(2))
    with load_engine(ckpt, tree=[[0], [0, 0], [0, 0, 0]]) as engine:
        w = engine._runner.model.w
        assert w.heads_lm_t is None and w.heads_lm is not None
        assert all(isinstance(t, kernels.Packed) for t in w.heads_lm)
        engine.reset_cache(16)
        engine.forward(ids, torch.arange(12))
        hidden = engine._runner.model.last_hidden
        assert hidden is not None
        for row in (0, 11):
            got = engine.head_logits(row)  # [3, V]
            assert got.shape == (3, 320)
            for k in range(3):
                p = f"medusa_heads.{k}."
                x = hidden[row].float()
                x = x + F.silu(src[p + "medusa_layers.0.linear.weight"] @ x + src[p + "medusa_layers.0.linear.bias"])
                assert rel_err(got[k], src[p + "lm_head.weight"] @ x) < 2e-2, (row, k)
            assert torch.equal(engine._runner.heads(row, 2), got[:2])
