"""Does adaptive speculation recover after a history that pushed it down? Real servers on loopback.

A tiny Llama whose drafts are accepted on "easy" prompts and never on a "hard" one
(tests/helpers/predictable.py). Each scenario starts a fresh server, runs a history, then the greedy
workload (16 requests x 40 tokens on the easy prompts), and prints the tokens/step of the workload's
requests that begin after its first 300 tokens, next to a fresh server's on the same requests:

    python benchmarks/adaptive_recovery.py [--hard 200] [--sampled 40]

The same scenarios, with the 90% bound asserted, are tests/test_adaptive_recovery.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hard", type=int, default=200, help="greedy requests on the hard prompt (history 2)")
    ap.add_argument("--sampled", type=int, default=40, help="requests at temperature 1.0 (history 1)")
    args = ap.parse_args()

    import httpx
    import torch
    from tests.helpers.checkpoints import make_checkpoint
    from tests.helpers.predictable import make_predictable
    from tests.test_adaptive_recovery import EASY, HARD, after_warmup, complete, greedy_workload, serving, tree_nodes

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model, heads, _ = make_predictable(Path(tmp))
        ckpt = make_checkpoint(model, Path(tmp) / "ckpt", heads=heads)
        rows = []
        histories = {
            "fresh": lambda c, url: None,
            f"{args.sampled} requests at T=1.0": lambda c, url: [
                complete(c, url, EASY[i % len(EASY)] if i % 2 else HARD, 16, temperature=1.0, seed=i)
                for i in range(args.sampled)
            ],
            f"{args.hard} greedy requests on the hard prompt": lambda c, url: [
                complete(c, url, HARD, 16, temperature=0) for _ in range(args.hard)
            ],
        }
        for name, history in histories.items():
            with serving(ckpt) as url, httpx.Client() as c:
                history(c, url)
                before = tree_nodes(c, url).get("greedy")
                tps = after_warmup(greedy_workload(c, url))
                rows.append((name, before, tps, tree_nodes(c, url).get("greedy")))
    fresh = rows[0][2]
    print(f"load average {os.getloadavg()[0]:.1f}; tokens/step after the greedy workload's first 300 tokens")
    print(f"{'history':<45} {'greedy nodes before':>19} {'tokens/step':>11} {'vs fresh':>8} {'nodes after':>11}")
    for name, before, tps, after in rows:
        print(f"{name:<45} {before if before is not None else '-':>19} {tps:>11.2f} {tps / fresh:>8.0%} {after!s:>11}")


if __name__ == "__main__":
    main()
