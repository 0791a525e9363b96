"""Step time against tree size on the reference runtime (``tree sweep``), for ``tree build --step-times``.

For each size n the timed work is one verification step as the runtime does it: a forward over
the root plus n draft tokens with a tree mask on a warm KV cache of ``context_len`` tokens, then
the heads on one row. n = 0 is a plain decoding step (one token, no tree). The median of
``repeats`` runs is kept, after one untimed warm-up.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from medusa_trt.errors import IncompatibleError, InvalidInputError


def chain_mask(t: int) -> torch.Tensor:
    """A [T, T] boolean tree mask (lower triangle): as costly as any tree of T nodes with the same T."""
    return torch.ones(t, t, dtype=torch.bool).tril()


def sweep_step_times(
    path: str | Path, sizes: list[int], *, context_len: int = 64, repeats: int = 5, device: str = "cpu"
) -> dict[int, float]:
    """Median milliseconds of one decoding step per tree size (draft nodes)."""
    from medusa_trt.runtime.config import read_checkpoint
    from medusa_trt.runtime.model import LlamaShard, LocalComm

    if not sizes or min(sizes) < 0:
        raise InvalidInputError("--sizes must be non-negative integers")
    if repeats < 1 or context_len < 1:
        raise InvalidInputError("--repeats and --context-len must be at least 1")
    info = read_checkpoint(path)
    if info.tp != 1:
        raise IncompatibleError(
            f"{path} is split for tp={info.tp}; the sweep runs one rank",
            hint="Convert with --tp 1, or time the tp engine with `medusa-trt bench`.",
        )
    if context_len + max(sizes) + 1 > info.max_seq_len:
        raise InvalidInputError(
            f"context {context_len} + {max(sizes) + 1} tree tokens exceed max_seq_len {info.max_seq_len}",
            hint="Lower --context-len or the largest --sizes.",
        )
    shard = LlamaShard(info, 0, device, LocalComm())
    shard.alloc(context_len + max(sizes) + 1)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, info.vocab_size, (context_len,), generator=gen)
    shard.forward(prefix, torch.arange(context_len))
    has_heads = info.num_medusa_heads > 0
    out: dict[int, float] = {}
    for n in sizes:
        t = n + 1
        ids = torch.randint(0, info.vocab_size, (t,), generator=gen)
        pos = context_len + torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, t)])  # depth-like offsets
        mask = chain_mask(t).to(shard.device) if n > 0 else None
        times = []
        for r in range(repeats + 1):
            shard.length = context_len  # drop the previous tree: the cache prefix stays warm
            t0 = time.perf_counter()
            logits = shard.forward(ids.to(shard.device), pos.to(shard.device), mask)
            if has_heads and n > 0:
                shard.heads(t - 1)
            if logits is not None and logits.is_cuda:
                torch.cuda.synchronize()
            if r > 0:
                times.append((time.perf_counter() - t0) * 1000.0)
        out[n] = statistics.median(times)
    return out
