"""Per-head, per-rank accuracy tables (the authors' ``heads_accuracy.py``), for ``tree build``.

Decode greedily; at step s record the base model's token b[s] and each head's top-k. Head k's
rank-r token is a hit when it equals b[s+k+1], the base token k+1 steps later. Each cell is that
rank's own hit rate over the steps where b[s+k+1] exists (not cumulative top-r).

Two backends compute the same thing: the reference runtime on a converted checkpoint (what is
served), or a Hugging Face model dir with FasterDecoding heads (straight after training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medusa_trt.errors import CheckpointError, IncompatibleError, InvalidInputError
from medusa_trt.medusa.trees import TOPK
from medusa_trt.train.data import Prompt, encode_prompt

# (prompt ids, steps) -> base tokens b[0..n) and head top-k ids [n, K, topk] at each step
Decoder = Callable[[list[int], int], tuple[list[int], torch.Tensor]]


@dataclass
class AccuracyResult:
    table: list[list[float]]  # [K][topk]
    positions: int  # decoding steps measured (head 0's denominator)


def accumulate(base: list[int], topk_ids: torch.Tensor, hits: torch.Tensor, counts: torch.Tensor) -> None:
    """Add one generation's hits: topk_ids [n, K, R] against base tokens k+1 steps later."""
    n, num_heads, _ = topk_ids.shape
    b = torch.tensor(base, dtype=torch.long)  # [n]
    for k in range(num_heads):
        m = n - (k + 1)  # steps s with b[s+k+1] known
        if m <= 0:
            continue
        target = b[k + 1 : k + 1 + m]  # [m]
        hits[k] += (topk_ids[:m, k, :] == target[:, None]).sum(0).float()  # [R]
        counts[k] += m


def _hf_decoder(model_dir: Path, heads_dir: Path, topk: int, device: str) -> tuple[Decoder, Any, int]:
    from medusa_trt.medusa.heads import MedusaHeads
    from medusa_trt.train.hf import greedy_continue, load_backbone

    model, tok = load_backbone(model_dir, device)
    heads = MedusaHeads.from_pretrained(heads_dir).to(next(model.parameters()).device).eval()
    eos = {int(tok.eos_token_id)} if tok.eos_token_id is not None else set()

    @torch.inference_mode()
    def run(ids: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
        cont = greedy_continue(model, ids, steps, eos)
        seq = torch.tensor([ids + cont], device=next(model.parameters()).device)
        h = model.model(seq).last_hidden_state  # [1, S, D]
        rows = h[:, len(ids) - 1 : len(ids) - 1 + len(cont)]  # step s reads the hidden state before b[s]
        top = heads(rows)[:, 0].topk(topk, dim=-1).indices  # [K, n, R]
        return cont, top.permute(1, 0, 2).cpu()  # [n, K, R]

    return run, tok, heads.num_heads


def _runtime_decoder(path: Path, topk: int, device: str) -> tuple[Decoder, Any, int]:
    from medusa_trt.runtime.api import load_tokenizer
    from medusa_trt.runtime.config import read_checkpoint
    from medusa_trt.runtime.model import LlamaShard, LocalComm

    info = read_checkpoint(path)
    if info.num_medusa_heads == 0:
        raise CheckpointError(f"{path} has no Medusa heads", hint="Convert with --medusa HEADS first.")
    if info.tp != 1:
        raise IncompatibleError(
            f"{path} is split for tp={info.tp}; accuracy runs on one rank",
            hint="Convert the same model with --tp 1 for calibration.",
        )
    shard = LlamaShard(info, 0, device, LocalComm())
    tok = load_tokenizer(info.ckpt_dir, path)
    if tok is None:
        raise CheckpointError(f"{path}: no tokenizer files", hint="Convert copies the tokenizer; convert again.")

    def run(ids: list[int], steps: int) -> tuple[list[int], torch.Tensor]:
        steps = min(steps, info.max_seq_len - len(ids) - 1)
        shard.alloc(len(ids) + steps + 1)
        logits = shard.forward(torch.tensor(ids), torch.arange(len(ids)))  # [T, V]
        row = len(ids) - 1
        base: list[int] = []
        tops = []
        for _ in range(max(0, steps)):
            assert logits is not None
            nxt = int(logits[row].argmax())
            head = shard.heads(row)  # [K, V]: drafts for the tokens after nxt
            assert head is not None
            base.append(nxt)
            tops.append(head.topk(topk, dim=-1).indices)  # [K, R]
            logits = shard.forward(torch.tensor([nxt]), torch.tensor([shard.length]))
            row = 0
        stacked = torch.stack(tops) if tops else torch.zeros(0, info.num_medusa_heads, topk, dtype=torch.long)
        return base, stacked

    return run, tok, info.num_medusa_heads


def measure_accuracy(
    path: str | Path,
    prompts: list[Prompt],
    *,
    heads_dir: str | Path | None = None,
    steps: int = 48,
    topk: int = TOPK,
    device: str = "cpu",
    on_prompt: Callable[[], None] | None = None,
) -> AccuracyResult:
    """The accuracy table for a converted checkpoint (reference runtime) or an HF dir + heads dir."""
    if not 1 <= topk <= TOPK:
        raise InvalidInputError(f"--topk must be in 1..{TOPK}, got {topk}")
    if steps < 2:
        raise InvalidInputError("--steps must be at least 2")
    p = Path(path)
    if heads_dir is not None:
        run, tok, num_heads = _hf_decoder(p, Path(heads_dir), topk, device)
    else:
        run, tok, num_heads = _runtime_decoder(p, topk, device)
    hits, counts = torch.zeros(num_heads, topk), torch.zeros(num_heads)
    for prompt in prompts:
        base, top = run(encode_prompt(tok, prompt), steps)
        accumulate(base, top, hits, counts)
        if on_prompt is not None:
            on_prompt()
    if float(counts[0]) == 0:
        raise InvalidInputError("no decoding steps were measured", hint="Use more prompts or --steps.")
    table = (hits / counts.clamp(min=1)[:, None]).tolist()
    return AccuracyResult(table=[[float(v) for v in row] for row in table], positions=int(counts[0]))
