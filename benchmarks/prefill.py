"""What the prefill costs: time to the first token and to the first Medusa drafts, by prompt length.

    python benchmarks/prefill.py CKPT [--lengths 16,128,512] [--rounds 5] [--threads 1] [--src DIR]...
    python benchmarks/prefill.py --build-8b DIR [...]          # a Llama 3.1 8B-shaped model, 2 layers
    python benchmarks/prefill.py CKPT --profile [--lengths 512]

In process, greedy, one request at a time, on a checkpoint or engine dir (e.g. the demo's engine) with
its configured tree, adaptive speculation off. For each prompt length, one Medusa generation of two
tokens: the first chunk is the first token (TTFT: the prompt's forward and the pick of its last row,
from the ``generate`` call on), the first return of the runner's ``heads`` is the first drafts (the
heads on the prompt's last hidden state; ``heads``: that call alone), the second chunk ends the first
verification step. Wall milliseconds, and this thread's CPU milliseconds to the first token (``time.thread_time``: on a
shared, loaded machine it moves far less than the wall time).

``--src DIR`` (repeatable) adds another source tree, e.g. ``git archive COMMIT src | tar -x -C OLD``
then ``--src OLD/src``: each tree runs in its own child interpreter that loads the engine once and
stays up; rounds send every (length, tree) measurement in turn, the trees' order alternating, so a
change in load touches all alike. Prints the best and the median of ``--rounds`` per tree and length,
the ratio of each tree's best to the first's, whether every tree picked the same first token and the
same first step's tokens, and the load average before and after.

``--build-8b DIR`` builds (once; kept in DIR) a random Llama 3.1 8B-shaped model with ``--layers``
layers and one Medusa head in bfloat16 (``benchmarks/decode.py``'s ``build_8b_shaped``) and measures it.
``--fresh START:STOP`` instead times the first token of prompts of every length in that range, each
length met for the first time by each tree's engine, then the same lengths again (a kernel that builds
code for every new input shape pays for it on the first). ``--profile`` instead prints, per length, where one prefill and first drafts go in this source tree:
torch's profiler per op (self CPU ms, calls) and cProfile per Python function.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def prompt_ids(length: int, vocab: int) -> list[int]:
    """A deterministic prompt of ``length`` ids, without the lowest ids (BOS/EOS live there)."""
    return [(i * 7919 + 13) % (vocab - 8) + 4 for i in range(length)]


class Probe:
    """The first return of ``runner.heads`` (the first drafts), recorded on an engine's runner."""

    def __init__(self, engine: Any) -> None:
        runner, self.at, self.called = engine._runner, 0.0, 0.0
        inner = runner.heads

        def heads(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            out = inner(*args, **kw)
            if not self.at:
                self.called, self.at = start, time.perf_counter()
            return out

        runner.heads = heads  # an instance attribute: the class is untouched


def one(engine: Any, probe: Probe, length: int) -> dict[str, Any]:
    """One two-token Medusa generation over a ``length``-token prompt: its times and its tokens."""
    from medusa_trt.runtime import SamplingParams

    ids = prompt_ids(length, engine.info.vocab_size)
    params = SamplingParams(max_tokens=2, ignore_eos=True)
    probe.at = 0.0
    c0 = time.thread_time()
    t0 = time.perf_counter()
    gen = engine.generate(ids, params, medusa=True)
    first = next(gen)
    t1, c1 = time.perf_counter(), time.thread_time()
    rest = [t for chunk in gen for t in chunk.token_ids]
    t2 = time.perf_counter()
    return {
        "ttft_ms": 1e3 * (t1 - t0),
        "ttft_cpu_ms": 1e3 * (c1 - c0),
        "draft_ms": 1e3 * (probe.at - t0) if probe.at else None,
        "heads_ms": 1e3 * (probe.at - probe.called) if probe.at else None,
        "step_ms": 1e3 * (t2 - t0),
        "tokens": first.token_ids + rest,
    }


def load(ckpt: str, threads: int) -> Any:
    import torch

    from medusa_trt.runtime import load_engine

    if threads:
        torch.set_num_threads(threads)
    return load_engine(ckpt, adapt=False)


def child(ckpt: str, threads: int) -> int:
    """Load once, then answer one line of JSON per length read from stdin (``--child``)."""
    engine = load(ckpt, threads)
    probe = Probe(engine)
    one(engine, probe, 8)  # warm-up: first calls allocate the cache and the tables
    print(json.dumps({"ready": True, "max_seq_len": engine.max_seq_len}), flush=True)
    for line in sys.stdin:
        print(json.dumps(one(engine, probe, int(line))), flush=True)
    engine.close()
    return 0


class Child:
    def __init__(self, a: argparse.Namespace, src: str | None) -> None:
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(Path(src).resolve())
        cmd = [sys.executable, str(Path(__file__).resolve()), a.ckpt, "--child", "--threads", str(a.threads)]
        self.name = src or "this tree"
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.max_seq_len = int(self._read()["max_seq_len"])

    def _read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the child exited ({self.p.wait()})")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def measure(self, length: int) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{length}\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait()


@contextmanager
def started(a: argparse.Namespace) -> Iterator[list[Child]]:
    """This tree's child and one per ``--src``, closed at the end."""
    children = [Child(a, None), *(Child(a, s) for s in a.src)]
    try:
        yield children
    finally:
        for c in children:
            c.close()


def turns(children: list[Child], flip: bool) -> list[tuple[int, Child]]:
    """(index, child) in order, or reversed when ``flip``: the trees alternate who goes first."""
    order = list(enumerate(children))
    return order[::-1] if flip else order


def compare(a: argparse.Namespace) -> None:
    before = os.getloadavg()
    with started(a) as children:
        cap = min(c.max_seq_len for c in children) - 4  # room for the two tokens and the tree's root
        lengths = sorted({min(int(x), cap) for x in a.lengths.split(",")})
        runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in range(a.rounds):
            for length in lengths:
                for i, c in turns(children, r % 2 == 1):
                    runs.setdefault((i, length), []).append(c.measure(length))
    after = os.getloadavg()
    print(f"{a.ckpt}, {a.threads or 'default'} thread(s), best / median of {a.rounds} rounds, wall ms")
    print(f"load average before {before[0]:.2f} {before[1]:.2f}, after {after[0]:.2f} {after[1]:.2f}")
    head = f"{'tree':<28}{'prompt':>7}{'TTFT':>20}{'TTFT cpu':>10}{'to drafts':>20}{'heads':>18}{'1st step':>20}"
    print(head + f"{'x first':>8}")
    for length in lengths:
        base = min(x["ttft_ms"] for x in runs[0, length])
        for i, c in enumerate(children):
            rows = runs[i, length]
            ttft, drafts, heads, step = (
                _cell([x[k] for x in rows]) for k in ("ttft_ms", "draft_ms", "heads_ms", "step_ms")
            )
            cpu = min(x["ttft_cpu_ms"] for x in rows)
            ratio = min(x["ttft_ms"] for x in rows) / base
            row = f"{c.name[-28:]:<28}{length:>7}{ttft:>20}{cpu:>10.1f}{drafts:>20}{heads:>18}{step:>20}"
            print(row + f"{ratio:>7.2f}x")
        same = all(x["tokens"] == runs[0, length][0]["tokens"] for i in range(len(children)) for x in runs[i, length])
        print(f"{'':<28}{length:>7}  identical first tokens and first step across trees and rounds: {same}")


def fresh(a: argparse.Namespace) -> None:
    """TTFT of prompt lengths each child meets for the first time, then of the same lengths again, per tree.

    A matrix kernel that builds code per input shape (oneDNN creates a primitive for every new row
    count) pays for it on a length's first prompt: a server meeting prompts of every length pays it
    often (and again once a shape has left the kernel's cache)."""
    start, stop = (int(x) for x in a.fresh.split(":"))
    before = os.getloadavg()
    seen: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with started(a) as children:
        stop = min(stop, min(c.max_seq_len for c in children) - 4)
        for when in ("first", "again"):
            for length in range(start, stop):
                for i, c in turns(children, length % 2 == 1):
                    seen.setdefault((i, when), []).append(c.measure(length))
    after = os.getloadavg()
    print(f"{a.ckpt}, {a.threads or 'default'} thread(s), prompts of {start}..{stop - 1} tokens, mean ms")
    print(f"load average before {before[0]:.2f} {before[1]:.2f}, after {after[0]:.2f} {after[1]:.2f}")
    print(f"{'tree':<28}{'TTFT, new length':>20}{'cpu':>8}{'TTFT, seen length':>20}{'cpu':>8}")
    for i, c in enumerate(children):
        cells = []
        for when in ("first", "again"):
            rows = seen[i, when]
            cells += [statistics.mean(x["ttft_ms"] for x in rows), statistics.mean(x["ttft_cpu_ms"] for x in rows)]
        print(f"{c.name[-28:]:<28}{cells[0]:>20.2f}{cells[1]:>8.2f}{cells[2]:>20.2f}{cells[3]:>8.2f}")


def _cell(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{min(got):.2f} / {statistics.median(got):.2f}" if got else "-"


def profile(a: argparse.Namespace) -> None:
    """Per op (torch profiler) and per Python function (cProfile) of one prefill + first drafts per length."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    engine = load(a.ckpt, a.threads)
    probe = Probe(engine)
    one(engine, probe, 8)
    try:
        for length in (int(x) for x in a.lengths.split(",")):
            length = min(length, engine.max_seq_len - 4)
            one(engine, probe, length)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                doc = one(engine, probe, length)
            print(
                f"--- prompt {length}: {doc['ttft_ms']:.2f} ms to the first token, {doc['step_ms']:.2f} to the 1st step"
            )
            print("    torch ops over the generation (self CPU ms, calls)")
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: a.rows]:
                print(f"  {e.key[:48]:<48} {e.self_cpu_time_total / 1e3:8.3f} ms {e.count:6d}")
            pr = cProfile.Profile()
            pr.enable()
            one(engine, probe, length)
            pr.disable()
            text = io.StringIO()
            pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(a.rows)
            print("    Python functions (cProfile, seconds)")
            print("\n".join(ln for ln in text.getvalue().splitlines() if ln.strip())[:6000])
    finally:
        engine.close()


def build_8b(work: Path, layers: int) -> str:
    """The 8B-shaped checkpoint in ``work`` (built on the first call, reused after)."""
    ckpt = work / "ckpt"
    if not (ckpt / "config.json").is_file():
        sys.path.insert(0, str(HERE))
        from decode import build_8b_shaped

        work.mkdir(parents=True, exist_ok=True)
        build_8b_shaped(work, argparse.Namespace(layers=layers, seed=0))
    return str(ckpt)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="?", help="a checkpoint or engine dir (e.g. the demo's DEMO_CACHE/engine)")
    p.add_argument("--build-8b", default=None, help="a dir for (and to reuse) the 8B-shaped model instead of CKPT")
    p.add_argument("--layers", type=int, default=2, help="with --build-8b: decoder layers")
    p.add_argument("--lengths", default="16,128,512", help="prompt lengths (cut to the model's context)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--src", action="append", default=[], help="another source tree to compare (repeatable)")
    p.add_argument("--profile", action="store_true", help="profile this tree instead of timing")
    p.add_argument("--fresh", default=None, help="START:STOP: TTFT of new prompt lengths, then of the same again")
    p.add_argument("--rows", type=int, default=25, help="rows of each profile table")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.build_8b:
        a.ckpt = build_8b(Path(a.build_8b), a.layers)
    if not a.ckpt:
        p.error("give CKPT or --build-8b DIR")
    if a.child:
        return child(a.ckpt, a.threads)
    if a.profile:
        profile(a)
    elif a.fresh:
        fresh(a)
    else:
        compare(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
