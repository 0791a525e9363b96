"""What one decoding step costs: plain vs a fixed 5-node tree on one checkpoint, greedy.

    python benchmarks/step_cost.py CKPT [--rounds 3] [--tokens 128] [--threads 1] [--twin-ab] [--pad-ab] [--share-ab] [--split] [--profile]

Per round (a plain generation, then a tree one, so a load change hits both alike): wall milliseconds
and this thread's CPU milliseconds per step (``time.thread_time``: on a shared, overloaded machine the
CPU time moves far less than the wall time), their tree/plain ratios, tokens per step, and whether
Medusa's output equals plain's; then the best of the rounds, the ratio of the bests, and the median and
range of the per-round ratios (on a shared machine the plain step moves most with the load). Run it under
two source trees (PYTHONPATH=A/src, then B/src, alternating) to compare two versions of the runtime.

``--twin-ab`` then compares single rows through the float32 twins (``runtime.kernels.Packed``) with
single rows through the packed weights, both engines in this process, generations alternating.
``--pad-ab`` then compares, in the same process and generations alternating, 1-3 bfloat16 rows run as
the first rows of ``runtime.kernels.PAD_ROWS`` (the runtime's way) with the same rows through oneDNN's
product as they are: wall ms per step, best of rounds, and whether the greedy outputs agree (a float32
checkpoint never pads, so both read alike there).
``--share-ab`` (heads whose lm_heads are all copies of the base one, as ``heads train --share-lm-head``
and the demo write them) then compares, in one process and generations alternating, the runtime's way
(the heads' rows through the base lm_head at once) with the heads' own lm_head copies loaded as separate
heads' are: wall ms per step, best of rounds, and whether the outputs agree.
``--split`` then splits each mode's CPU time per decoding step (the prefill left out), inside real
generations: the runner's forward, the Medusa heads, the KV-cache commit, and the rest (drafting,
acceptance, the decoding loop); and the forward again by kind of work: matrix products, attention,
RMSNorms, RoPE, and the rest of it (each part's timer costs about a microsecond a call, alike in both
modes).
``--profile`` then prints where a step's time goes, for each mode: torch's profiler per op (self CPU
time, calls per step) and cProfile per Python function (own time per step).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from typing import Any

TREE5 = [[0], [0, 0], [1], [0, 0, 0], [0, 0, 0, 0]]
WIDE5 = [[0], [1], [2], [3], [4]]  # 5 nodes from one head, for a checkpoint with fewer than 4
PROMPT = [(i * 17) % 300 + 3 for i in range(40)]


def run(engine: Any, medusa: bool, tokens: int) -> tuple[list[int], float, float, float, int]:
    """(output, wall ms per step, CPU ms per step, tokens per step, steps) of one generation."""
    from medusa_trt.runtime import SamplingParams

    c0 = time.thread_time()
    gen = engine.generate(PROMPT, SamplingParams(max_tokens=tokens, stop_token_ids=()), medusa=medusa)
    out = [t for chunk in gen for t in chunk.token_ids]
    cpu = time.thread_time() - c0
    st = gen.stats
    return out, 1e3 * st.decode_s / st.num_steps, 1e3 * cpu / st.num_steps, st.tokens_per_step, st.num_steps


def drop_twins(engine: Any) -> None:
    """Let every packed trunk weight serve single rows too (``runtime.kernels.Packed`` without its twin)."""
    from medusa_trt.runtime.kernels import Packed

    w = engine._runner.model.w
    for t in [t for lw in w.layers for t in (lw.qkv, lw.dense, lw.fc_gate, lw.proj)] + [w.lm_head]:
        if isinstance(t, Packed):
            t.plain = None


def twin_ab(engine: Any, other: Any, tokens: int, rounds: int) -> None:
    """Single rows through the float32 twins (``engine`` as loaded) against through the packed weights
    (``other``, twins dropped), in one process, generations alternating: CPU ms per step, best of rounds."""
    drop_twins(other)
    best: dict[tuple[str, bool], float] = {}
    for _ in range(rounds):
        for name, eng in (("twin", engine), ("packed", other)):
            for medusa in (False, True):
                cpu = run(eng, medusa, tokens)[2]
                best[name, medusa] = min(cpu, best.get((name, medusa), cpu))
    other.close()
    print(f"single rows, CPU ms per step, best of {rounds}, one process (load {os.getloadavg()[0]:.1f}):")
    for name in ("twin", "packed"):
        plain, tree = best[name, False], best[name, True]
        print(f"  {name:<7} plain {plain:.2f}  tree5 {tree:.2f}  ratio {tree / plain:.2f}")


def pad_ab(engine: Any, tokens: int, rounds: int) -> None:
    """Few bfloat16 rows padded (``kernels._padded``, as loaded) against the same rows through oneDNN's
    product unpadded, in one engine, generations alternating: wall ms per step, best of ``rounds``."""
    import torch

    from medusa_trt.runtime import kernels

    padded = kernels._padded

    def unpadded(x: Any, w: Any, rows: int) -> Any:
        return torch.ops.mkldnn._linear_pointwise(x, w.onednn, None, "none", [], "")

    best: dict[tuple[str, bool], float] = {}
    outs: dict[tuple[str, bool], list[int]] = {}
    try:
        for _ in range(rounds):
            for name, fn in (("padded", padded), ("unpadded", unpadded)):
                kernels._padded = fn  # type: ignore[assignment]  # this process only, restored below
                for medusa in (False, True):
                    out, wall = run(engine, medusa, tokens)[:2]
                    best[name, medusa] = min(wall, best.get((name, medusa), wall))
                    outs[name, medusa] = out
    finally:
        kernels._padded = padded
    print(f"few bfloat16 rows, wall ms per step, best of {rounds}, one process (load {os.getloadavg()[0]:.1f}):")
    for name in ("padded", "unpadded"):
        same = outs[name, False] == outs[name, True]
        print(f"  {name:<9} plain {best[name, False]:.2f}  tree5 {best[name, True]:.2f}  plain == Medusa {same}")


def unshare(engine: Any) -> None:
    """Load the heads' lm_head copies from the checkpoint as separate heads' are (tp 1), instead of
    projecting through the base lm_head."""
    import torch
    from safetensors.torch import load_file

    from medusa_trt.runtime import weights

    model = engine._runner.model
    state = load_file(str(model.info.ckpt_dir / "rank0.safetensors"))

    def get(name: str) -> Any:
        return weights._dequant(state, name, model.dtype).contiguous()

    w = model.w
    no_base = torch.empty(0, dtype=model.dtype)  # matches no head: every head keeps its own copy
    w.heads_lm_t, w.heads_lm, w.heads_share_lm = weights._medusa_lm_heads(model.info, get, model.dtype, no_base)


def share_ab(engine: Any, other: Any, tokens: int, rounds: int) -> None:
    """Heads through the base lm_head (``engine`` as loaded) against their own lm_head copies (``other``),
    in one process, generations alternating: wall ms per step, best of ``rounds``."""
    if not engine._runner.model.w.heads_share_lm:
        print("--share-ab: this checkpoint's heads have lm_heads of their own; nothing to compare")
        other.close()
        return
    unshare(other)
    best: dict[tuple[str, bool], float] = {}
    outs: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, eng in (("shared", engine), ("copies", other)):
            for medusa in (False, True):
                out, wall = run(eng, medusa, tokens)[:2]
                best[name, medusa] = min(wall, best.get((name, medusa), wall))
                if medusa:
                    outs[name] = out
    other.close()
    print(f"heads' lm_head, wall ms per step, best of {rounds}, one process (load {os.getloadavg()[0]:.1f}):")
    for name in ("shared", "copies"):
        plain, tree = best[name, False], best[name, True]
        print(f"  {name:<7} plain {plain:.2f}  tree5 {tree:.2f}  ratio {tree / plain:.2f}")
    print(f"  same Medusa output: {outs['shared'] == outs['copies']}")


FORWARD_PARTS = ("matmul", "attention", "norms", "rope")  # the forward's kinds of work; "other" is the rest


def split(engine: Any, tokens: int, rounds: int) -> None:
    """This thread's CPU microseconds per decoding step in the runner's forward, the heads, the KV-cache
    commit and the rest of the step, inside real generations, the prefill left out; best of ``rounds``
    per part, modes alternating. The forward is split again by kind of work: its matrix products
    (``kernels.linear``), attention (SDPA), RMSNorms, RoPE, and the rest of it (embedding, cache writes,
    residual adds, SiLU, views)."""
    import medusa_trt.runtime.model as model

    runner = engine._runner
    spent = dict.fromkeys(("prefill", "forward", "heads", "commit", *FORWARD_PARTS), 0.0)
    inside: list[str] = []  # what is being timed: a forward's parts count only inside a decoding step's

    def timed(inner: Any, name: str, part: bool = False) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            if part and inside != ["forward"]:
                return inner(*args, **kw)
            key = "prefill" if name == "forward" and spent["prefill"] == 0 else name  # a generation's first
            inside.append(key)
            t0 = time.thread_time()
            try:
                return inner(*args, **kw)
            finally:
                spent[key] += time.thread_time() - t0
                inside.pop()

        return call

    saved = {n: getattr(model, n) for n in ("linear", "rms_norm", "rotate")}
    sdpa = model.F.scaled_dot_product_attention
    for name in ("forward", "heads", "commit"):
        setattr(runner, name, timed(getattr(runner, name), name))  # an instance attribute: the class is untouched
    for name, part in (("linear", "matmul"), ("rms_norm", "norms"), ("rotate", "rope")):
        setattr(model, name, timed(saved[name], part, part=True))
    model.F.scaled_dot_product_attention = timed(sdpa, "attention", part=True)
    best: dict[str, dict[str, float]] = {"plain": {}, "tree5": {}}
    try:
        for _ in range(rounds):
            for mode, medusa in (("plain", False), ("tree5", True)):
                spent.update(dict.fromkeys(spent, 0.0))
                _, _, cpu_ms, _, steps = run(engine, medusa, tokens)
                row = {k: 1e6 * v / steps for k, v in spent.items() if k != "prefill"}
                row["other"] = row["forward"] - sum(row[k] for k in FORWARD_PARTS)
                row["step"] = 1e3 * cpu_ms - 1e6 * spent["prefill"] / steps
                row["rest"] = row["step"] - row["forward"] - row["heads"] - row["commit"]
                best[mode] = {k: min(v, best[mode].get(k, v)) for k, v in row.items()}
    finally:
        for name in ("forward", "heads", "commit"):
            delattr(runner, name)
        for name, fn in saved.items():
            setattr(model, name, fn)
        model.F.scaled_dot_product_attention = sdpa
    print(f"CPU us per decoding step, best of {rounds} (load {os.getloadavg()[0]:.1f}); forward = its parts + other:")
    order = ("forward", *FORWARD_PARTS, "other", "heads", "commit", "rest", "step")
    for mode, row in best.items():
        print(f"  {mode:<6}" + "  ".join(f"{k} {row[k]:5.0f}" for k in order))
    ratios = (f"{k} {best['tree5'][k] / best['plain'][k]:.2f}" for k in order if best["plain"][k] > 0)
    print("  tree5 / plain: " + "  ".join(ratios))


def profile(engine: Any, tokens: int, rows: int) -> None:
    """Per op (torch profiler) and per Python function (cProfile), per decoding step, for both modes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, medusa in (("plain", False), ("tree5", True)):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            steps = run(engine, medusa, tokens)[4]
        print(f"--- {name}: torch ops over {steps} steps (self CPU ms per step, calls per step)")
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:rows]
        for e in ops:
            print(f"  {e.key[:48]:<48} {e.self_cpu_time_total / 1e3 / steps:8.3f} ms {e.count / steps:7.1f}")
        pr = cProfile.Profile()
        pr.enable()
        steps = run(engine, medusa, tokens)[4]
        pr.disable()
        text = io.StringIO()
        pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(rows)
        print(f"--- {name}: Python functions over {steps} steps (cProfile, seconds in total)")
        print("\n".join(ln for ln in text.getvalue().splitlines() if ln.strip())[:8000])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--twin-ab", action="store_true", help="then compare with and without the twins, in process")
    p.add_argument("--pad-ab", action="store_true", help="then compare bfloat16 rows padded and not, in process")
    p.add_argument("--share-ab", action="store_true", help="then compare shared-lm_head heads both ways, in process")
    p.add_argument("--split", action="store_true", help="then split each step's CPU time: forward, heads, rest")
    p.add_argument("--profile", action="store_true", help="then print the per-op and per-function profile")
    p.add_argument("--rows", type=int, default=25, help="rows of each profile table")
    a = p.parse_args()
    import torch

    from medusa_trt.runtime import load_engine

    if a.threads:
        torch.set_num_threads(a.threads)
    from medusa_trt.runtime.config import read_checkpoint

    shape = TREE5 if read_checkpoint(a.ckpt).num_medusa_heads >= 4 else WIDE5
    engine = load_engine(a.ckpt, tree=shape, adapt=False)
    run(engine, False, 16)
    run(engine, True, 16)  # warm-up
    print(f"threads {torch.get_num_threads()}, {a.tokens} tokens per generation, 5-node tree {shape}")
    best: dict[bool, list[float]] = {}
    ratios: list[float] = []  # per round: the two generations ran back to back, so a load change hits both
    for _ in range(a.rounds):
        plain, tree = run(engine, False, a.tokens), run(engine, True, a.tokens)
        ratios.append(tree[1] / plain[1])
        for medusa, row in ((False, plain), (True, tree)):
            best[medusa] = [min(x, y) for x, y in zip(best.get(medusa, row[1:3]), row[1:3], strict=True)]
        print(
            f"load {os.getloadavg()[0]:.1f}  plain {plain[1]:.2f} ms/step (cpu {plain[2]:.2f})  "
            f"tree5 {tree[1]:.2f} (cpu {tree[2]:.2f})  ratio {tree[1] / plain[1]:.2f} "
            f"(cpu {tree[2] / plain[2]:.2f})  tokens/step {tree[3]:.2f}  identical {plain[0] == tree[0]}",
            flush=True,
        )
    (pw, pc), (tw, tc) = best[False], best[True]
    print(
        f"best of {a.rounds}: plain {pw:.2f} ms/step (cpu {pc:.2f})  tree5 {tw:.2f} (cpu {tc:.2f})  "
        f"ratio {tw / pw:.2f} (cpu {tc / pc:.2f})  load {os.getloadavg()[0]:.1f}"
    )
    print(f"per-round ratio: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    if a.twin_ab:
        twin_ab(engine, load_engine(a.ckpt, tree=shape, adapt=False), a.tokens, a.rounds)
    if a.pad_ab:
        pad_ab(engine, a.tokens, a.rounds)
    if a.share_ab:
        share_ab(engine, load_engine(a.ckpt, tree=shape, adapt=False), a.tokens, a.rounds)
    if a.split:
        split(engine, a.tokens, a.rounds)
    if a.profile:
        profile(engine, a.tokens, a.rows)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
