"""The train stage: Medusa-1 heads on cached hidden states, data-parallel over N processes (DDP).

Every rank draws the same global batch from the same generator and takes its slice. Each head's
loss is its summed cross-entropy divided by the *global* count of its targets (an all-reduce of
counts), times N to undo DDP's gradient averaging: the summed gradients are exactly those of the
one-process loss on the whole batch, so N processes train the same heads as one (to rounding).

Rank 0 lives in the caller's process, evaluates, logs and checkpoints; ranks 1..N-1 are spawned
and follow. Gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medusa_trt import fsio
from medusa_trt.medusa.heads import MedusaHeads
from medusa_trt.medusa.trees import TOPK
from medusa_trt.train.hidden import HiddenCache

DECAY = 0.8  # Medusa paper Appendix B.2: lambda_k = 0.8^k
TIMEOUT = timedelta(seconds=900)
MAX_EVAL = 256  # held-out sequences; also how many training sequences the train-loss figures use


@dataclass
class LoopConfig:
    """Everything a rank needs (picklable: spawned ranks get a copy)."""

    stage_dir: Path  # the train stage: state.pt, done.json
    hidden_dir: Path
    per_shard: int
    sequences: list[list[int]]
    starts: list[int]
    ckpt_dir: Path  # for the base lm_head
    num_heads: int
    num_layers: int
    share_lm_head: bool
    steps: int
    lr: float
    batch_size: int
    warmup_frac: float
    weight_decay: float
    checkpoint_every: int
    log_every: int
    eval_frac: float
    seed: int
    device: str
    world: int = 1
    key: dict[str, Any] = field(default_factory=dict)


def lr_at(step: int, steps: int, peak: float, warmup_frac: float) -> float:
    """Linear warmup then cosine to zero (the authors' schedule)."""
    warm = max(1, int(warmup_frac * steps))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, steps - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def target_counts(labels: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Valid targets per head [K] for unshifted labels [B, S] (head k reads labels[:, k+2:])."""
    return torch.stack([(labels[:, k + 2 :] != -100).sum() for k in range(num_heads)]).to(torch.float64)


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sum_k 0.8^k * CE_sum_k / counts[k]; with local counts this is the mean-CE loss per head."""
    total = logits.new_zeros(())
    for k in range(logits.shape[0]):
        shift = k + 2
        lg = logits[k, :, : logits.shape[2] - shift]  # [B, S-shift, V]
        lb = labels[:, shift:]  # [B, S-shift]
        if lb.numel() == 0 or float(counts[k]) == 0:
            continue
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100, reduction="sum")
        total = total + (DECAY**k) * ce / float(counts[k])
    return total


class Data:
    """Sequences cropped to where some head has a target; labels unshifted, -100 outside the continuation."""

    def __init__(self, loop: LoopConfig) -> None:
        self.cache = HiddenCache(loop.hidden_dir, len(loop.sequences), loop.per_shard)
        self.crops = [max(0, st - loop.num_heads - 1) for st in loop.starts]
        self.labels = [
            [t if i >= st else -100 for i, t in enumerate(seq)][c:]
            for seq, st, c in zip(loop.sequences, loop.starts, self.crops, strict=True)
        ]
        n = len(loop.sequences)
        # held out: eval_frac of the data, at most MAX_EVAL sequences (evaluated every log_every steps)
        n_eval = min(MAX_EVAL, max(1, int(n * loop.eval_frac))) if n > 1 else 0
        self.eval_idx = list(range(n - n_eval, n)) or [0]
        self.train_idx = list(range(n - n_eval)) or [0]

    def batch(self, idx: list[int], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded hidden [B, S, D] float32 and labels [B, S] (-100 on padding)."""
        hs = [self.cache[i][self.crops[i] :] for i in idx]
        s = max(h.shape[0] for h in hs)
        h = torch.zeros(len(idx), s, hs[0].shape[1], device=dev)
        y = torch.full((len(idx), s), -100, dtype=torch.long, device=dev)
        for b, (i, hi) in enumerate(zip(idx, hs, strict=True)):
            h[b, : hi.shape[0]] = hi.to(dev)
            y[b, : hi.shape[0]] = torch.tensor(self.labels[i], device=dev)
        return h, y


@dataclass
class Quality:
    loss: float
    top1: list[float]
    top5: list[float]
    table: list[list[float]]  # [K][R]: head k's rank-r token is the target (own rank, not cumulative)


def rank_hits(logits: torch.Tensor, labels: torch.Tensor, ranks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Own-rank hits [K, R] (head k's rank-r token is labels[t+k+2]) and valid targets per head [K]."""
    k_heads = logits.shape[0]
    hits = torch.zeros(k_heads, ranks, dtype=torch.float64)
    counts = torch.zeros(k_heads, dtype=torch.float64)
    for k in range(k_heads):
        lb = labels[:, k + 2 :]  # [B, S-k-2]
        valid = lb != -100
        top = logits[k, :, : logits.shape[2] - k - 2].topk(ranks, dim=-1).indices  # [B, S-k-2, R]
        hits[k] = (top == lb.unsqueeze(-1))[valid].sum(0).double().cpu()  # [R]
        counts[k] = valid.sum().double().cpu()
    return hits, counts


@torch.no_grad()
def evaluate(heads: MedusaHeads, data: Data, idx: list[int], dev: torch.device, batch: int = 16) -> Quality:
    ranks = min(TOPK, heads.vocab_size)
    hits = torch.zeros(heads.num_heads, ranks, dtype=torch.float64)
    counts = torch.zeros(heads.num_heads, dtype=torch.float64)
    ce, n = 0.0, 0
    for i in range(0, len(idx), batch):
        h, y = data.batch(idx[i : i + batch], dev)
        logits = heads(h)  # [K, B, S, V]
        ce += float(summed_loss(logits, y, target_counts(y, heads.num_heads)))
        n += 1
        bh, bc = rank_hits(logits, y, ranks)
        hits, counts = hits + bh, counts + bc
    table = (hits / counts.clamp(min=1)[:, None]).tolist()
    return Quality(ce / max(1, n), [row[0] for row in table], [sum(row[:5]) for row in table], table)


def build_heads(loop: LoopConfig, dev: torch.device) -> MedusaHeads:
    from medusa_trt.train.backbone import read_lm_head

    lm = read_lm_head(loop.ckpt_dir)  # [V, D] in the checkpoint's dtype
    torch.manual_seed(loop.seed)  # the ResBlock biases: the same on every rank and every rerun
    heads = MedusaHeads(
        lm.shape[1],
        lm.shape[0],
        loop.num_heads,
        loop.num_layers,
        lm_head_weight=lm if loop.share_lm_head else lm.float(),
        share_lm_head=loop.share_lm_head,
    )
    return heads.to(dev)


def _load_state(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    import pickle

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return None  # unreadable (another torch version?): start over
    return state if isinstance(state, dict) and state.get("key") == key else None


def _save_state(
    path: Path, step: int, heads: MedusaHeads, opt: Any, gen: torch.Generator, history: list[Any], key: dict[str, Any]
) -> None:
    state = {
        "step": step,
        "heads": heads.state_dict(),
        "opt": opt.state_dict(),
        "rng": gen.get_state(),
        "history": history,
        "key": key,
    }
    # a file object, not a path: torch then reports a full disk as the OSError behind its RuntimeError
    with fsio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


@dataclass
class LoopResult:
    heads: MedusaHeads
    history: list[dict[str, Any]]
    resumed_from: int
    initial: Quality
    final_eval: Quality
    final_train_loss: float
    initial_train_loss: float


def run_rank(
    loop: LoopConfig,
    rank: int,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    advance: Callable[[float], None] | None = None,
) -> LoopResult | None:
    """One rank's training; rank 0 returns the result, other ranks None."""
    dev = torch.device(f"cuda:{rank}" if loop.device.startswith("cuda") and loop.world > 1 else loop.device)
    data = Data(loop)
    heads = build_heads(loop, dev)
    opt = torch.optim.AdamW(
        [p for p in heads.parameters() if p.requires_grad], lr=loop.lr, weight_decay=loop.weight_decay
    )
    gen = torch.Generator().manual_seed(loop.seed)
    state_path = loop.stage_dir / "state.pt"
    state = _load_state(state_path, loop.key)
    initial = evaluate(heads, data, data.eval_idx, dev) if rank == 0 else None
    init_train = evaluate(heads, data, data.train_idx[:MAX_EVAL], dev).loss if rank == 0 else 0.0
    start, history = 0, []
    if state is not None:
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        start, history = int(state["step"]), list(state["history"])
    elif rank == 0:
        assert initial is not None
        history.append({"step": 0, "train_loss": init_train, "eval_loss": initial.loss, "eval_top1": initial.top1})
    model: Any = heads
    if loop.world > 1:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # the frozen lm_head buffer is the same on every rank: never re-send it per step
        params = inspect.signature(DistributedDataParallel).parameters
        flag = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        model = DistributedDataParallel(heads, **{flag: False})
    import torch.distributed as dist

    for step in range(start, loop.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, loop.steps, loop.lr, loop.warmup_frac)
        pick = torch.randint(len(data.train_idx), (loop.batch_size,), generator=gen).tolist()
        mine = [data.train_idx[i] for i in pick[rank :: loop.world]]
        h, y = data.batch(mine, dev)
        counts = target_counts(y, loop.num_heads)
        if loop.world > 1:
            dist.all_reduce(counts)
        loss = summed_loss(model(h), y, counts)
        opt.zero_grad(set_to_none=True)
        (loss * loop.world).backward()  # DDP averages gradients over ranks: undo it to sum them
        opt.step()
        total = loss.detach().clone()
        if loop.world > 1:
            dist.all_reduce(total)
        done = step + 1
        if rank != 0:
            continue
        if advance is not None:
            advance(float(total))
        if done % loop.log_every == 0 or done == loop.steps:
            q = evaluate(heads, data, data.eval_idx, dev)
            history.append(
                {
                    "step": done,
                    "train_loss": float(total),
                    "eval_loss": q.loss,
                    "eval_top1": q.top1,
                    "eval_top5": q.top5,
                    "lr": lr_at(step, loop.steps, loop.lr, loop.warmup_frac),
                }
            )
            if log is not None:
                log(
                    f"step {done}: loss {float(total):.3f} eval {q.loss:.3f} top1 "
                    + " ".join(f"{a:.2f}" for a in q.top1)
                    + " top5 "
                    + " ".join(f"{a:.2f}" for a in q.top5)
                )
        if loop.checkpoint_every and done % loop.checkpoint_every == 0 and done < loop.steps:
            _save_state(state_path, done, heads, opt, gen, history, loop.key)
        if on_step is not None:
            on_step(done, float(total))
    if rank != 0:
        return None
    assert initial is not None
    _save_state(state_path, loop.steps, heads, opt, gen, history, loop.key)
    final = evaluate(heads, data, data.eval_idx, dev)
    final_train = evaluate(heads, data, data.train_idx[:MAX_EVAL], dev).loss
    first = history[0] if history else {}
    init_train = float(first.get("train_loss", init_train))
    initial = Quality(
        float(first.get("eval_loss", initial.loss)),
        list(first.get("eval_top1", initial.top1)),
        initial.top5,
        initial.table,
    )
    return LoopResult(heads, history, start if state is not None else 0, initial, final, final_train, init_train)


# --- processes ---------------------------------------------------------------------------------------


def train_data_parallel(
    loop: LoopConfig,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    advance: Callable[[float], None] | None = None,
) -> LoopResult:
    """Run rank 0 here and ranks 1..N-1 as spawned processes; one process when N is 1."""
    if loop.world == 1:
        res = run_rank(loop, 0, on_step, log, advance)
        assert res is not None
        return res
    import torch.distributed as dist

    from medusa_trt.runtime.exiting import forbid_finalization

    if dist.is_initialized():
        from medusa_trt.errors import MissingDependencyError

        raise MissingDependencyError("a process group is already running in this process")
    backend = "nccl" if loop.device.startswith("cuda") else "gloo"
    store = dist.TCPStore("127.0.0.1", 0, loop.world, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    ctx = torch.multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // loop.world)
    procs = []
    saved_threads = torch.get_num_threads()
    try:
        for r in range(1, loop.world):
            p = ctx.Process(target=_worker, daemon=True, args=(loop, r, store.port, backend, threads, os.getpid()))
            p.start()
            procs.append(p)
        torch.set_num_threads(threads)
        dist.init_process_group(backend, store=store, rank=0, world_size=loop.world, timeout=TIMEOUT)
        forbid_finalization("heads train: data-parallel process group")  # the CLI ends with os._exit
        res = run_rank(loop, 0, on_step, log, advance)
        assert res is not None
        for p in procs:
            p.join(timeout=60)
        return res
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        torch.set_num_threads(saved_threads)


def _worker(loop: LoopConfig, rank: int, port: int, backend: str, threads: int, parent: int) -> None:
    import torch.distributed as dist

    from medusa_trt.runtime.exiting import end_process
    from medusa_trt.runtime.tp import watch_parent

    watch_parent(parent)  # a rank whose driver died exits instead of waiting in a collective
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    store = dist.TCPStore("127.0.0.1", port, loop.world, is_master=False, timeout=TIMEOUT)
    dist.init_process_group(backend, store=store, rank=rank, world_size=loop.world, timeout=TIMEOUT)
    try:
        run_rank(loop, rank)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    end_process(0)  # not through finalization, which gloo's thread can abort (runtime.exiting)
