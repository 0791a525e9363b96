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
from tests.helpers.models import make_medusa_heads, make_tiny_llama


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


@pytest.mark.parametrize(("tp", "dtype"), [(1, "float32"), (2, "float32"), (1, "bfloat16")])
def test_heads_sharing_the_base_lm_head_run_through_it(tmp_path: Path, tp: int, dtype: str) -> None:
    """Heads trained with the base lm_head frozen carry copies of it: the runtime keeps none of them and
    projects the K heads' rows through the base lm_head at once. Their logits still equal the heads
    computed from the checkpoint's own tensors, and Medusa's greedy output still equals plain decoding's.
    One head with an lm_head of its own (a copy, then changed in one element) keeps every head separate."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    from medusa_trt.runtime import SamplingParams

    model_dir = make_tiny_llama(tmp_path / "model", seed=3)
    base = load_file(str(model_dir / "model.safetensors"))["lm_head.weight"]  # [V, D]
    v, d = base.shape
    shared = make_medusa_heads(tmp_path / "shared", hidden_size=d, vocab_size=v, num_heads=3, lm_head=base, scale=0.3)
    own = make_medusa_heads(tmp_path / "own", hidden_size=d, vocab_size=v, num_heads=3, lm_head=base, scale=0.3)
    state = load_file(str(own / "medusa_lm_head.safetensors"))
    state["2.1.weight"][7, 5] += 0.25
    save_file(state, str(own / "medusa_lm_head.safetensors"))
    ids = torch.randint(0, v, (12,), generator=torch.Generator().manual_seed(4))
    tol = 1e-4 if dtype == "float32" else 2e-2
    with torch.no_grad():  # [S, D] after model.norm: the heads' input at tp > 1
        hf_hidden = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)(
            ids[None], output_hidden_states=True
        ).hidden_states[-1][0]
    for name, heads_dir in (("shared", shared), ("own", own)):
        ckpt = make_checkpoint(model_dir, tmp_path / f"ckpt-{name}", heads=heads_dir, tp=tp, dtype=dtype)
        src = {k: t.float() for k, t in load_file(str(heads_dir / "medusa_lm_head.safetensors")).items()}
        with load_engine(ckpt, tree=[[0], [0, 0], [1], [0, 0, 0]]) as engine:
            w = engine._runner.model.w if tp == 1 else None
            if w is not None:
                assert w.heads_share_lm is (name == "shared")
                assert (w.heads_lm_t is None and w.heads_lm is None) is (name == "shared")
            engine.reset_cache(16)
            engine.forward(ids, torch.arange(12))
            hidden = hf_hidden if w is None else w_hidden(engine)
            for row in (0, 11):
                got = engine.head_logits(row)  # [3, V]
                for k in range(3):
                    x = hidden[row].float()
                    x = x + F.silu(src[f"{k}.0.linear.weight"] @ x + src[f"{k}.0.linear.bias"])
                    assert rel_err(got[k], src[f"{k}.1.weight"] @ x) < tol, (name, row, k)
            prompt = ids.tolist()
            params = SamplingParams(max_tokens=24, stop_token_ids=())
            plain = [t for c in engine.generate(prompt, params, medusa=False) for t in c.token_ids]
            medusa = [t for c in engine.generate(prompt, params, medusa=True) for t in c.token_ids]
            assert medusa == plain, name


def w_hidden(engine: object) -> torch.Tensor:
    """The runner's own final hidden states [T, D] (tp 1): the heads' exact input in any dtype."""
    hidden = engine._runner.model.last_hidden  # type: ignore[attr-defined]
    assert hidden is not None
    return hidden
