"""A tiny Llama whose greedy continuation is known in advance, and Medusa heads that draft it exactly on
half of the vocabulary: acceptance the tests can steer by the prompt, without training anything.

The model is a real ``LlamaForCausalLM`` whose attention and MLP write nothing to the residual stream
(``o_proj`` and ``down_proj`` are zero), so the last hidden state is ``RMSNorm(embed(last token))``
and the next token is a fixed function ``g`` of the last one: a cycle through the even ids and one
through the odd ids (special tokens lead into the even cycle and are never produced). The lm_head
is scaled so that sampling at temperature 1 is nearly uniform (about 7% on ``g``), while the argmax
is ``g`` by a wide margin.

Head k (0-based) drafts ``g^(k+2)`` of the last token, the Medusa target, when that token is even
("easy": every draft of the top-1 chain is accepted) and a wrong token when it is odd ("hard").
``EASY`` and ``HARD`` are prompts of each kind for the default tokenizer. Used by
tests/test_adaptive_recovery.py and benchmarks/adaptive_recovery.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medusa_trt.demo.synthetic import make_tokenizer, save_hf_model
from medusa_trt.demo.tiny import llama_config_dict

VOCAB = 320
HIDDEN = 64
SPECIAL = 5  # the tokenizer's special tokens take ids 0..4
SCALE = 0.4  # logit of the right token = 8 * SCALE; others ~ N(0, SCALE^2)
EASY = ("class Model:", "The quick brown fox", "return 0", "self.name = name", "lazy dog.")  # end on even ids
HARD = "def main():"  # ends on an odd id


def _cycles(seed: int) -> list[int]:
    """g as a table: one random cycle through the even ids >= SPECIAL, one through the odd ones."""
    import random

    rng = random.Random(seed)
    g = list(range(VOCAB))
    for parity in (0, 1):
        ids = [v for v in range(SPECIAL, VOCAB) if v % 2 == parity]
        rng.shuffle(ids)
        for a, b in zip(ids, ids[1:] + ids[:1], strict=True):
            g[a] = b
    evens = [v for v in range(SPECIAL, VOCAB) if v % 2 == 0]
    for s in range(SPECIAL):
        g[s] = evens[s]
    return g


def _readout(units: Any, target: list[int]) -> Any:
    """A [V, D] lm_head whose argmax on RMSNorm(embed(v)) is ``target[v]``."""
    import torch

    w = torch.zeros(VOCAB, HIDDEN)
    for v, t in enumerate(target):
        w[t] += SCALE * units[v]
    return w


def easy(token: int) -> bool:
    return token % 2 == 0 or token < SPECIAL


def make_predictable(out: Path, *, num_heads: int = 3, seed: int = 0) -> tuple[Path, Path, list[int]]:
    """(model dir, FasterDecoding heads dir, g) under ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir, heads_dir = out / "model", out / "heads"
    model_dir.mkdir(parents=True, exist_ok=True)
    heads_dir.mkdir(parents=True, exist_ok=True)
    cfg = llama_config_dict(vocab_size=VOCAB, hidden_size=HIDDEN, max_position_embeddings=2048)
    make_tokenizer(model_dir, vocab_size=VOCAB)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    g = _cycles(seed)
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(VOCAB, HIDDEN, generator=gen)
    units = emb / emb.norm(dim=-1, keepdim=True)  # [V, D]; RMSNorm(embed(v)) = 8 * units[v]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(_readout(units, g))
    save_hf_model(model, model_dir, cfg)

    state: dict[str, Any] = {}
    wrong = torch.randint(SPECIAL, VOCAB, (num_heads, VOCAB), generator=gen).tolist()
    ahead = list(g)
    for k in range(num_heads):
        ahead = [g[t] for t in ahead]  # g^(k+2)
        target = [ahead[v] if easy(v) else (wrong[k][v] if wrong[k][v] != ahead[v] else g[v]) for v in range(VOCAB)]
        state[f"{k}.0.linear.weight"] = torch.zeros(HIDDEN, HIDDEN)  # the ResBlock passes h through
        state[f"{k}.0.linear.bias"] = torch.zeros(HIDDEN)
        state[f"{k}.1.weight"] = _readout(units, target)
    save_file(state, str(heads_dir / "medusa_lm_head.safetensors"))
    doc = {"medusa_num_heads": num_heads, "medusa_num_layers": 1, "hidden_size": HIDDEN, "vocab_size": VOCAB}
    (heads_dir / "config.json").write_text(json.dumps(doc, indent=2))
    return model_dir, heads_dir, g
