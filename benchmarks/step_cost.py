"""What one decoding step costs: plain vs a fixed 5-node tree on one checkpoint, greedy, one thread.

    python benchmarks/step_cost.py CKPT [--rounds 3] [--tokens 128]

Per step: wall milliseconds and this thread's CPU milliseconds (``time.thread_time``: on a shared,
overloaded machine the CPU time moves far less than the wall time), their tree/plain ratios, tokens per
step, and whether Medusa's output equals plain's. Run it under two source trees (PYTHONPATH=A/src,
then B/src, alternating) to compare two versions of the runtime on the same checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

TREE5 = [[0], [0, 0], [1], [0, 0, 0], [0, 0, 0, 0]]


def run(engine: Any, medusa: bool, tokens: int) -> tuple[list[int], float, float, float]:
    from medusa_trt.runtime import SamplingParams

    prompt = [(i * 17) % 300 + 3 for i in range(40)]
    c0 = time.thread_time()
    gen = engine.generate(prompt, SamplingParams(max_tokens=tokens, stop_token_ids=()), medusa=medusa)
    out = [t for chunk in gen for t in chunk.token_ids]
    cpu = time.thread_time() - c0
    st = gen.stats
    return out, 1e3 * st.decode_s / st.num_steps, 1e3 * cpu / st.num_steps, st.tokens_per_step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    a = p.parse_args()
    import torch

    from medusa_trt.runtime import load_engine

    torch.set_num_threads(1)
    engine = load_engine(a.ckpt, tree=TREE5, adapt=False)
    run(engine, False, 16)
    run(engine, True, 16)  # warm-up
    for _ in range(a.rounds):
        plain, tree = run(engine, False, a.tokens), run(engine, True, a.tokens)
        print(
            f"load {os.getloadavg()[0]:.1f}  plain {plain[1]:.2f} ms/step (cpu {plain[2]:.2f})  "
            f"tree5 {tree[1]:.2f} (cpu {tree[2]:.2f})  ratio {tree[1] / plain[1]:.2f} "
            f"(cpu {tree[2] / plain[2]:.2f})  tokens/step {tree[3]:.2f}  identical {plain[0] == tree[0]}",
            flush=True,
        )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
