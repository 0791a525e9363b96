"""Pre-train the demo's tiny Llama 3 briefly on the stdlib corpus (next-token loss, AdamW, cosine).

Deterministic for a given corpus and seed: fixed step count, seeded window sampling. Training
uses at most two threads so the demo behaves the same on a laptop and a 2-core CI box.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch  # noqa: TID253 - only the demo command imports this module

from medusa_trt.demo.tiny import llama_config_dict, make_tokenizer, save_hf_model


@dataclass(frozen=True)
class ModelRecipe:
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    steps: int = 400
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 4e-3
    warmup: int = 20
    seed: int = 0


def _lr(step: int, r: ModelRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    frac = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(
    out_dir: Path, text: str, recipe: ModelRecipe, *, on_step: Callable[[int, float], None] | None = None
) -> dict[str, Any]:
    """Tokenizer + model trained on ``text``, saved as a Hugging Face directory in ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out_dir, texts=[text], vocab_size=recipe.vocab_size)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)  # [N]
    cfg = llama_config_dict(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        bos_token_id=int(tok.bos_token_id),
        eos_token_id=int(tok.eos_token_id),
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(recipe.seed)
    t0, losses = time.perf_counter(), []
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, recipe)
        starts = torch.randint(0, len(ids) - recipe.seq_len - 1, (recipe.batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + recipe.seq_len] for s in starts.tolist()])  # [B, S]
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    model.eval()
    save_hf_model(model, out_dir, cfg)
    tail = losses[-20:]
    return {
        "steps": recipe.steps,
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        "corpus_tokens": len(ids),
        "final_loss": sum(tail) / len(tail),
        "first_loss": losses[0],
        "seconds": time.perf_counter() - t0,
        "params": sum(p.numel() for p in model.parameters()),
    }
