"""The frozen backbone as a Hugging Face model (float32, one device): for ``tree accuracy`` on an HF
directory + FasterDecoding heads. Training itself runs the backbone on the reference runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medusa_trt.errors import CheckpointError, InvalidInputError, MissingDependencyError


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            "--device cuda but no CUDA device is visible to torch",
            hint="Use --device cpu, or install a CUDA build of torch.",
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InvalidInputError(f"unknown device '{name}'", hint="Use cpu or cuda.")
    return torch.device(name)


def load_backbone(model_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """The frozen HF model (eval, no grad) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; no per-load tqdm bars
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise CheckpointError(
            f"{d}: not a Hugging Face model directory (no config.json)",
            hint="Pass the directory holding config.json, *.safetensors and the tokenizer.",
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # corrupt weights, bad config, no tokenizer
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(
            f"--model {d}: cannot load ({e.__class__.__name__}: {first})",
            hint="Pass a complete Hugging Face Llama directory (config.json, *.safetensors, tokenizer).",
        ) from e
    model = model.to(_device(device)).eval()
    model.requires_grad_(False)
    return model, tok


@torch.inference_mode()
def greedy_continue(model: Any, ids: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy continuation with the HF KV cache, stopping at an EOS id (kept) or after n tokens."""
    import inspect

    from transformers import DynamicCache

    dev = next(model.parameters()).device
    # transformers 5 renamed past_key_values to cache; the cache object is updated in place.
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kv = {arg: DynamicCache(config=model.config)}
    out = model(torch.tensor([ids], device=dev), use_cache=True, **kv)
    new: list[int] = []
    for _ in range(n):
        tok = int(out.logits[0, -1].argmax())
        new.append(tok)
        if tok in eos or len(new) == n:
            break
        out = model(torch.tensor([[tok]], device=dev), use_cache=True, **kv)
    return new
