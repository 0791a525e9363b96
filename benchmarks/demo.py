"""Time the whole `medusa-trt demo` from an empty cache (and again warm), and print its figures.

    .venv/bin/python benchmarks/demo.py [--cache-dir DIR] [--keep]

What the project aims for (the script measures, it does not judge): whole run <= 300 s on 2 cores,
tokens/step >= 1.8, speedup >= 1.4x, identical outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp cache dir")
    ap.add_argument("--warm", action="store_true", help="also time a second (cached) run")
    args = ap.parse_args()

    from medusa_trt.demo.pipeline import run_demo

    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="medusa-trt-demo-"))
    rows = []
    try:
        for label in ("first", "second (cached)") if args.warm else ("first",):
            t0 = time.perf_counter()
            doc = run_demo(cache_dir=cache)
            rows.append(
                {
                    "run": label,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "tokens_per_step": doc["tokens_per_step"],
                    "speedup": doc["speedup"],
                    "identical_outputs": doc["identical_outputs"],
                    "tokens_per_s_per_user": doc["tokens_per_s_per_user"],
                    "stages_s": doc["stages_s"],
                }
            )
    finally:
        if args.cache_dir is None and not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
