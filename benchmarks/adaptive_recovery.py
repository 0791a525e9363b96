"""Does adaptive speculation recover after a history that pushed it down? Real `medusa-trt run` servers.

A tiny Llama whose drafts are accepted on "easy" prompts and never on a "hard" one
(`medusa_trt.demo.predictable`). Each scenario starts a fresh server, runs a history, then the greedy
workload (16 requests x 40 tokens on the easy prompts), and prints the tokens/step of the workload's
requests that begin after its first 300 tokens, next to a fresh server's on the same requests:

    python benchmarks/adaptive_recovery.py [--hard 200] [--sampled 40]

The same scenarios, with the 90% bound asserted, are tests/test_adaptive_recovery.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUESTS, TOKENS, WARMUP = 16, 40, 300


def complete(c: Any, url: str, prompt: str, max_tokens: int, **kw: Any) -> dict[str, int]:
    r = c.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, **kw}, timeout=120)
    r.raise_for_status()
    usage: dict[str, int] = r.json()["usage"]
    return usage


def after_warmup(usages: list[dict[str, int]]) -> float:
    """Tokens per decoding step of the requests that begin after the first WARMUP tokens."""
    done = tokens = steps = 0
    for u in usages:
        if done >= WARMUP:
            tokens, steps = tokens + u["completion_tokens"] - 1, steps + u["decoding_steps"]
        done += u["completion_tokens"]
    return tokens / steps


def greedy_nodes(c: Any, url: str) -> str:
    """medusa_trt_tree_nodes{regime="greedy"} ('-' before the first generation)."""
    for line in c.get(f"{url}/metrics").text.splitlines():
        if line.startswith("medusa_trt_tree_nodes{") and 'regime="greedy"' in line:
            return line.rsplit(" ", 1)[1]
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hard", type=int, default=200, help="greedy requests on the hard prompt (history 2)")
    ap.add_argument("--sampled", type=int, default=40, help="requests at temperature 1.0 (history 1)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the server (1: a tiny model's forwards gain nothing from a second core, "
        "and on a loaded machine the two threads' waits for each other are what gets timed)",
    )
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import httpx

    from medusa_trt.bench.server import engine_server
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.demo.predictable import EASY, HARD, make_predictable

    histories: dict[str, Callable[[Any, str], object]] = {
        "fresh": lambda c, url: None,
        f"{args.sampled} requests at T=1.0": lambda c, url: [
            complete(c, url, EASY[i % len(EASY)] if i % 2 else HARD, 16, temperature=1.0, seed=i)
            for i in range(args.sampled)
        ],
        f"{args.hard} greedy requests on the hard prompt": lambda c, url: [
            complete(c, url, HARD, 16, temperature=0) for _ in range(args.hard)
        ],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, heads, _ = make_predictable(Path(tmp))
        ckpt = Path(tmp) / "ckpt"
        convert_checkpoint(model, ckpt, medusa=heads, tp=1, progress=False)
        for name, history in histories.items():
            with engine_server(ckpt) as url, httpx.Client() as c:
                history(c, url)
                before = greedy_nodes(c, url)
                usages = [complete(c, url, EASY[i % len(EASY)], TOKENS, temperature=0) for i in range(REQUESTS)]
                rows.append((name, before, after_warmup(usages), greedy_nodes(c, url)))
    fresh = rows[0][2]
    print(
        f"load average {os.getloadavg()[0]:.1f}, server threads {args.threads}; "
        f"tokens/step after the greedy workload's first {WARMUP} tokens"
    )
    print(f"{'history':<45} {'greedy nodes before':>19} {'tokens/step':>11} {'vs fresh':>8} {'nodes after':>11}")
    for name, before, tps, after in rows:
        print(f"{name:<45} {before:>19} {tps:>11.2f} {tps / fresh:>8.0%} {after:>11}")


if __name__ == "__main__":
    main()
