"""Random tiny Llama 3-architecture models and Medusa heads, as real Hugging Face directories.

What the benchmarks measure on (and the tests check against) when no trained model is needed: a
randomly initialised ``LlamaForCausalLM`` with ``config.json`` in either RoPE spelling,
``model.safetensors`` (or shards with an index), the demo's byte-level BPE tokenizer with a chat
template (``demo.tiny``), and FasterDecoding-format heads. Nothing is downloaded; torch and
transformers are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from medusa_trt import fsio
from medusa_trt.demo import tiny as demo_tiny
from medusa_trt.demo.tiny import llama_config_dict

DEFAULT_CORPUS = (
    "def main():\n    return 0\n\nclass Model:\n    def __init__(self, name):\n        self.name = name\n"
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens and verifies them.\n"
) * 8

RopeStyle = Literal["rope_scaling", "rope_parameters", "none"]


def make_tokenizer(out_dir: str | Path, texts: Iterable[str] = (DEFAULT_CORPUS,), vocab_size: int = 320) -> Any:
    """The demo's byte-level BPE, trained on a small fixed corpus by default."""
    return demo_tiny.make_tokenizer(out_dir, texts, vocab_size)


def to_rope_parameters(cfg: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a hub-style config into the transformers-5 ``rope_parameters`` spelling."""
    out = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta")}
    params = dict(cfg.get("rope_scaling") or {"rope_type": "default"})
    params["rope_theta"] = cfg["rope_theta"]
    out["rope_parameters"] = params
    return out


def make_tiny_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    rope_style: RopeStyle = "rope_scaling",
    shards: int = 1,
    tokenizer: bool = True,
    dtype: str = "float32",
    **config: Any,
) -> Path:
    """Save a randomly initialised tiny LlamaForCausalLM as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = llama_config_dict(**config)
    if tokenizer:
        tok = make_tokenizer(out, vocab_size=min(cfg["vocab_size"], 320))
        assert len(tok) <= cfg["vocab_size"], "model vocab must cover the tokenizer"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(getattr(torch, dtype)).eval()
    save_hf_model(model, out, cfg, rope_style=rope_style, shards=shards)
    return out


def save_hf_model(
    model: Any, out: Path, cfg: dict[str, Any], *, rope_style: RopeStyle = "rope_scaling", shards: int = 1
) -> None:
    """Write weights (one file, or ``shards`` files with an index) and config.json in the chosen spelling."""
    from safetensors.torch import save

    state = demo_tiny.hf_state(model, cfg)
    names = sorted(state)
    if shards == 1:
        fsio.write_bytes(out / "model.safetensors", save(state, metadata={"format": "pt"}))
    else:
        weight_map: dict[str, str] = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names[i::shards]}
            fsio.write_bytes(out / fname, save(part, metadata={"format": "pt"}))
            weight_map.update(dict.fromkeys(part, fname))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        fsio.write_text(out / "model.safetensors.index.json", json.dumps(index, indent=2))
    written = demo_tiny.written_config(cfg, state)
    if rope_style == "rope_parameters":
        written = to_rope_parameters(written)
    fsio.write_text(out / "config.json", json.dumps(written, indent=2))


def make_medusa_heads(
    out_dir: str | Path,
    *,
    hidden_size: int,
    vocab_size: int,
    num_heads: int = 3,
    num_layers: int = 1,
    bias: bool = True,
    fmt: Literal["safetensors", "pt"] = "safetensors",
    seed: int = 0,
    scale: float = 0.05,
    config_num_heads: int | None = None,
    lm_head: Any = None,
) -> Path:
    """Random FasterDecoding-format Medusa-1 heads: ``{k}.{l}.linear.*`` and ``{k}.{L}.weight``.

    ``config_num_heads`` writes a different head count into config.json, as published checkpoints do.
    ``lm_head`` (a [V, D] tensor) initialises every head's lm_head, as the paper does.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for k in range(num_heads):
        for layer in range(num_layers):
            state[f"{k}.{layer}.linear.weight"] = torch.randn(hidden_size, hidden_size, generator=g) * scale
            if bias:
                state[f"{k}.{layer}.linear.bias"] = torch.randn(hidden_size, generator=g) * scale
        head = lm_head.clone() if lm_head is not None else torch.randn(vocab_size, hidden_size, generator=g) * scale
        state[f"{k}.{num_layers}.weight"] = head.contiguous()
    if fmt == "safetensors":
        from safetensors.torch import save

        fsio.write_bytes(out / "medusa_lm_head.safetensors", save(state))
    else:
        with fsio.atomic_path(out / "medusa_lm_head.pt") as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    config = {
        "medusa_num_heads": config_num_heads or num_heads,
        "medusa_num_layers": num_layers,
        "hidden_size": hidden_size,
        "vocab_size": vocab_size,
        "base_model_name_or_path": "tiny-llama",
    }
    fsio.write_text(out / "config.json", json.dumps(config, indent=2))
    return out
