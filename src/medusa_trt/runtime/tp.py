"""Tensor parallelism: one process per rank over torch.distributed (gloo on CPU, nccl on CUDA).

Rank 0 lives in the caller's process and drives; ranks 1..t-1 are spawned workers that follow it.
Before every model operation rank 0 broadcasts a small header (op + ints) and the op's inputs, then all
ranks run the op together (its all-reduces and gathers included). Decoding logic runs on rank 0 only,
so closing a generation early just stops sending ops.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch
import torch.distributed as dist

from medusa_trt.errors import CheckpointError, MissingDependencyError
from medusa_trt.runtime.config import CheckpointInfo, read_checkpoint
from medusa_trt.runtime.exiting import end_process, forbid_finalization
from medusa_trt.runtime.model import LlamaShard, LocalComm

STOP, ALLOC, FORWARD, HEADS, COMMIT, PING, BALLOC, BFORWARD, BKEEP = range(9)
TIMEOUT = timedelta(seconds=900)


def _rank_died(rank: int, code: int | None) -> CheckpointError:
    """What happened to a rank that died before it reported ready, said plainly."""
    import signal

    how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited (code {code})"
    hint = (
        "SIGKILL usually means the machine ran out of memory (see `dmesg`); every rank holds its shard."
        if code == -signal.SIGKILL
        else "Rerun with --debug to see the rank's own error; check the rank files with `medusa-trt verify`."
    )
    if Path(sys.argv[0]).name not in ("medusa-trt", "__main__.py"):  # a user's script, not the CLI
        hint += " A script that loads tp > 1 needs an `if __name__ == '__main__':` guard (ranks are spawned)."
    return CheckpointError(f"tensor-parallel rank {rank} {how} while starting", hint=hint)


class DistComm:
    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def all_reduce(self, t: torch.Tensor) -> None:
        dist.all_reduce(t)

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=-1)

    def gather_last(self, t: torch.Tensor, rows: list[int]) -> torch.Tensor | None:
        width = max(rows)
        if t.shape[-1] < width:  # uneven torch.chunk shards: pad so every rank sends one shape
            t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(t, parts, dst=0)
        if parts is None:
            return None
        return torch.cat([p[..., :r] for p, r in zip(parts, rows, strict=True)], dim=-1)


def _device_for(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else "cpu"


class Runner:
    """Rank 0's handle on the model: the same calls at tp 1 (in-process) and tp > 1 (broadcast first)."""

    def __init__(self, info: CheckpointInfo, device: str) -> None:
        self.info, self.tp = info, info.tp
        self.device = _device_for(device, 0)
        self._procs: list[Any] = []
        self._threads: int | None = None
        self._aborted = False
        if self.tp == 1:
            self.model = LlamaShard(info, 0, self.device, LocalComm())
            return
        self._start(device)

    # --- process management ----------------------------------------------------------------------
    def _start(self, device: str) -> None:
        if dist.is_initialized():
            raise MissingDependencyError(
                "another tensor-parallel engine is already running in this process",
                hint="Close it first (engine.close()).",
            )
        if device.startswith("cuda") and torch.cuda.device_count() < self.tp:
            raise MissingDependencyError(
                f"tp_size {self.tp} needs {self.tp} GPUs, {torch.cuda.device_count()} visible",
                hint="Run on CPU (--device cpu) or convert with a smaller --tp.",
            )
        backend = "nccl" if device.startswith("cuda") else "gloo"
        forbid_finalization(f"tensor-parallel engine ({backend})")
        # Rank 0's store binds port 0 itself, so no other process can take the port in between.
        store = dist.TCPStore("127.0.0.1", 0, self.tp, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
        port = store.port
        ctx = torch.multiprocessing.get_context("spawn")
        status: Any = ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // self.tp)
        try:  # any failure from the first spawn on (Ctrl-C included) stops the ranks already started
            for r in range(1, self.tp):
                p = ctx.Process(
                    target=_worker_main,
                    daemon=True,
                    args=(str(self.info.ckpt_dir), r, self.tp, port, device, backend, threads, status, os.getpid()),
                )
                p.start()
                self._procs.append(p)
            if backend == "gloo":  # share the cores between ranks instead of oversubscribing them
                self._threads = torch.get_num_threads()
                torch.set_num_threads(threads)
            self._await_workers(status, "hello")  # a worker that dies while starting fails fast here
            dist.init_process_group(backend, store=store, rank=0, world_size=self.tp, timeout=TIMEOUT)
            self.model = LlamaShard(self.info, 0, self.device, DistComm(0, self.tp))
            self._await_workers(status, "ok")
        except BaseException:
            self._kill()
            raise
        self._hdr = torch.zeros(6, dtype=torch.long, device=self.device)

    def _await_workers(self, status: Any, want: str) -> None:
        pending = self.tp - 1
        deadline = time.monotonic() + TIMEOUT.total_seconds()
        while pending:
            try:
                msg = status.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:  # alive but stuck: give up like a collective would
                    raise CheckpointError(
                        f"tensor-parallel ranks did not start within {TIMEOUT}",
                        hint="Check the machine's load and the rank files.",
                    ) from None
                dead = [p for p in self._procs if not p.is_alive()]
                if dead:
                    raise _rank_died(self._procs.index(dead[0]) + 1, dead[0].exitcode) from None
                continue
            if msg[0] != want:
                raise CheckpointError(f"rank {msg[1]}: {msg[2]}", hint="Check the checkpoint's rank files.")
            pending -= 1

    def _kill(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)
            if p.is_alive():  # SIGTERM ignored (e.g. stuck in a collective): do not leave it behind
                p.kill()
                p.join(timeout=5)
        self._procs = []
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    def rank_pids(self) -> list[int]:
        """Process ids of the spawned ranks 1..t-1."""
        return [p.pid for p in self._procs if p.pid is not None]

    def dead_ranks(self) -> list[tuple[int, int | None]]:
        """(rank, exit code) of every spawned rank that is no longer running (negative code: signal)."""
        return [(r, p.exitcode) for r, p in enumerate(self._procs, start=1) if not p.is_alive()]

    def abort(self) -> None:
        """SIGKILL every rank now, without the STOP handshake: a collective blocked on a dead or hung
        rank then fails at once instead of after the process group's timeout. The engine is unusable after."""
        self._aborted = True
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join(timeout=5)

    def close(self) -> None:
        if self.tp == 1 or not self._procs:
            return
        if self._aborted:  # no STOP to send: the ranks are gone, a broadcast could wait for them
            self._kill()
            return
        with contextlib.suppress(Exception):
            self._send(STOP)
            for p in self._procs:
                p.join(timeout=10)
        self._kill()

    # --- operations --------------------------------------------------------------------------------
    def _send(self, op: int, *args: int) -> None:
        if self.tp == 1:
            return
        vals = [op, *args] + [0] * (5 - len(args))
        self._hdr.copy_(torch.tensor(vals, dtype=torch.long))
        dist.broadcast(self._hdr, src=0)

    def ping(self) -> None:
        """A round trip through every rank (an all-reduce): blocks while a rank is stopped or hung."""
        if self.tp == 1:
            return
        self._send(PING)
        dist.all_reduce(torch.ones(1, device=self.device))

    def alloc(self, capacity: int) -> None:
        self._send(ALLOC, capacity)
        self.model.alloc(capacity)

    @property
    def length(self) -> int:
        return self.model.length

    def forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        tree_mask: torch.Tensor | None = None,
        *,
        pos_bound: int | None = None,
        last: bool = False,
    ) -> torch.Tensor:
        """Logits [T, V] float32 for ids/pos [T] (tree_mask [T, T] bool for a verification forward;
        ``pos_bound`` and ``last`` as in ``LlamaShard.forward``)."""
        if self.tp > 1:
            self._send(FORWARD, ids.shape[0], int(tree_mask is not None), pos_bound or 0, int(last))
            dist.broadcast(torch.stack([ids, pos]).contiguous(), src=0)
            if tree_mask is not None:
                dist.broadcast(tree_mask.to(torch.uint8).contiguous(), src=0)
        out = self.model.forward(ids, pos, tree_mask, pos_bound=pos_bound, last=last)
        assert out is not None
        return out

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [T, D] (the checkpoint's dtype) of a fresh sequence ``ids`` [T].

        The cache is reset; every rank holds the full (all-reduced) activations, rank 0 returns them.
        """
        self.alloc(ids.shape[0])
        self.forward(ids, torch.arange(ids.shape[0], dtype=torch.long, device=ids.device))
        out = self.model.last_hidden
        assert out is not None
        return out

    def heads(self, row: int, count: int = 0) -> torch.Tensor:
        """Logits [K, V] of the first ``count`` (0: all) Medusa heads at ``row`` of the last forward."""
        self._send(HEADS, row, count)
        out = self.model.heads(row, count)
        assert out is not None
        return out

    def commit(self, start: int, count: int, keep: torch.Tensor | None = None) -> None:
        """Keep ``count`` tree slots from ``start`` on every rank (``LlamaShard.commit``)."""
        if self.tp > 1:
            self._send(COMMIT, start, count, int(keep is not None))
            if keep is not None:
                dist.broadcast(keep.contiguous(), src=0)
        self.model.commit(start, count, keep)

    # --- batched greedy forwards (distillation) ----------------------------------------------------
    def alloc_batch(self, rows: int, capacity: int) -> None:
        """A batch KV cache for ``rows`` sequences of up to ``capacity`` slots on every rank (0: free it)."""
        self._send(BALLOC, rows, capacity)
        self.model.alloc_batch(rows, capacity)

    def forward_batch(self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The last column's logits [B, V] float32 for a [B, T] block (ids, positions, False on pads)."""
        if self.tp > 1:
            self._send(BFORWARD, ids.shape[0], ids.shape[1])
            dist.broadcast(torch.stack([ids, pos, valid.long()]).contiguous(), src=0)
        out = self.model.forward_batch(ids, pos, valid)
        assert out is not None
        return out

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every batch row not in ``rows`` [B'] (ascending) on every rank."""
        if self.tp > 1:
            self._send(BKEEP, rows.shape[0])
            dist.broadcast(rows.contiguous(), src=0)
        self.model.keep_rows(rows)


def watch_parent(parent: int, every_s: float = 1.0) -> None:
    """Exit this spawned rank once its driver is gone (SIGKILL included): a rank blocked in a gloo
    collective would otherwise wait out TIMEOUT holding its shard, and a rerun would find the memory taken."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _batch_op(model: LlamaShard, op: int, a: int, b: int, dev: str) -> None:
    """A rank's side of the batched ops (Runner.alloc_batch / forward_batch / keep_rows)."""
    if op == BALLOC:
        model.alloc_batch(a, b)
    elif op == BFORWARD:
        block = torch.empty(3, a, b, dtype=torch.long, device=dev)  # ids, positions, valid
        dist.broadcast(block, src=0)
        model.forward_batch(block[0], block[1], block[2].bool())
    elif op == BKEEP:
        rows = torch.empty(a, dtype=torch.long, device=dev)
        dist.broadcast(rows, src=0)
        model.keep_rows(rows)


def _worker_main(
    ckpt: str, rank: int, tp: int, port: int, device: str, backend: str, threads: int, status: Any, parent: int
) -> None:
    """Rank r > 0: load the shard, then execute rank 0's ops until STOP."""
    watch_parent(parent)
    torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, tp, is_master=False, timeout=TIMEOUT)
    status.put(("hello", rank, ""))  # after the store connects: fewer ways to die unseen before init
    dist.init_process_group(backend, store=store, rank=rank, world_size=tp, timeout=TIMEOUT)
    dev = _device_for(device, rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    try:
        model = LlamaShard(read_checkpoint(ckpt), rank, dev, DistComm(rank, tp))
    except Exception as e:
        status.put(("error", rank, str(e)))
        return
    status.put(("ok", rank, ""))
    hdr = torch.zeros(6, dtype=torch.long, device=dev)
    with torch.inference_mode():
        while True:
            dist.broadcast(hdr, src=0)
            op, a, b, c, d = (int(v) for v in hdr[:5].tolist())
            if op == STOP:
                break
            if op == ALLOC:
                model.alloc(a)
            elif op == FORWARD:
                idpos = torch.empty(2, a, dtype=torch.long, device=dev)
                dist.broadcast(idpos, src=0)
                mask = None
                if b:
                    mask_u8 = torch.empty(a, a, dtype=torch.uint8, device=dev)
                    dist.broadcast(mask_u8, src=0)
                    mask = mask_u8.bool()
                model.forward(idpos[0], idpos[1], mask, pos_bound=c or None, last=bool(d))
            elif op == HEADS:
                model.heads(a, b)
            elif op == PING:
                dist.all_reduce(torch.ones(1, device=dev))
            elif op == COMMIT:
                keep = None
                if c:
                    keep = torch.empty(b, dtype=torch.long, device=dev)
                    dist.broadcast(keep, src=0)
                model.commit(a, b, keep)
            else:
                _batch_op(model, op, a, b, dev)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    end_process(0)  # gloo may still be releasing STOP's tensors: finalization could abort (runtime.exiting)
