"""Batched greedy decoding on rank 0 (self-distillation): many prompts, one forward per step for all.

The prompts are left-padded into one [B, T] block (each row's RoPE positions start at 0 at its first
real token; pads are masked as keys), then every step feeds each unfinished row its last token. A row
ends at a stop token (recorded, not emitted, as in ``runtime.decode``) or at its budget, and its
cache row is dropped, so the batch shrinks as rows finish. Greedy only: per-row sampling state is
what ``Decoder`` is for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch

from medusa_trt.runtime.types import Continuation

if TYPE_CHECKING:
    from medusa_trt.runtime.tp import Runner


def _prompt_block(prompts: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, positions and validity [B, T] of the prompts left-padded to the longest (pads: id 0, invalid)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    pos = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for r, p in enumerate(prompts):
        pad = width - len(p)
        ids[r, pad:] = torch.tensor(p, dtype=torch.long)
        pos[r, pad:] = torch.arange(len(p))
        valid[r, pad:] = True
    return ids.to(device), pos.to(device), valid.to(device)


def greedy_batch(
    runner: Runner, prompts: list[list[int]], budgets: list[int], stop_ids: set[int]
) -> list[Continuation]:
    """Greedy continuations of ``prompts`` (budgets: tokens each, a stop token counted), in prompt order."""
    dev = runner.device
    ids, pos, valid = _prompt_block(prompts, dev)
    runner.alloc_batch(len(prompts), ids.shape[1] + max(budgets))
    try:
        logits = runner.forward_batch(ids, pos, valid)  # [B, V]
        done = [Continuation([], "length") for _ in prompts]
        live = list(range(len(prompts)))  # the prompt behind each cache row
        while True:
            keep = []
            for row, tok in enumerate(logits.argmax(-1).tolist()):
                c = done[live[row]]
                if tok in stop_ids:
                    c.finish_reason, c.stop_token = "stop", tok
                elif len(c.token_ids) + 1 < budgets[live[row]]:
                    c.token_ids.append(tok)
                    keep.append(row)
                else:
                    c.token_ids.append(tok)  # its budget's last token
            if not keep:
                return done
            if len(keep) < len(live):
                runner.keep_rows(torch.tensor(keep, dtype=torch.long, device=dev))
                live = [live[row] for row in keep]
            last = [done[i].token_ids[-1] for i in live]
            at = [len(prompts[i]) + len(done[i].token_ids) - 1 for i in live]  # the fed token's position
            step = torch.tensor(last, dtype=torch.long, device=dev)[:, None]  # [B', 1]
            logits = runner.forward_batch(step, torch.tensor(at, device=dev)[:, None], torch.ones_like(step).bool())
    finally:
        runner.alloc_batch(0, 0)
