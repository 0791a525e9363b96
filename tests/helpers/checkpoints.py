"""Test helper: a TRT-LLM checkpoint from a tiny HF model through the real converter (no progress bar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_checkpoint(
    model_dir: Path, out: Path, *, heads: Path | None = None, tp: int = 1, dtype: str | None = None, **kw: Any
) -> Path:
    from medusa_trt.checkpoint.convert import convert_checkpoint

    convert_checkpoint(model_dir, out, medusa=heads, tp=tp, dtype=dtype, progress=False, **kw)
    return out
