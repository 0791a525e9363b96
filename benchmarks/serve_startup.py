"""How long `medusa-trt run` takes to start serving, and to stop after one SIGINT.

    python benchmarks/serve_startup.py --engine DEMO_CACHE/engine [--src PATH]... [--rounds 5] [--json]

Per round and source tree (this one, then each ``--src PATH``, put first on PYTHONPATH, e.g. an older
commit's ``git archive COMMIT src | tar -x -C DIR``; the trees take turns within a round): the seconds from
launching `python -m medusa_trt run ENGINE` until ``/health`` answers 200 (the engine loaded, the port
open), then from one SIGINT until the process has exited, and its exit code (130 expected). Prints the
median, min and max of each over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medusa_trt.supervise import free_port

HERE = Path(__file__).resolve().parents[1]
LIMIT_S = 120.0


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def one(engine: Path, src: str | None) -> dict[str, Any]:
    """One start and stop of the server under source tree ``src`` (None: this checkout's)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("MEDUSA_TRT_PROFILES_DIR", str(HERE / "profiles"))  # an archived src has no profiles/
    port = free_port()
    argv = [sys.executable, "-m", "medusa_trt", "run", str(engine), "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not _healthy(port):
            if proc.poll() is not None or time.perf_counter() - t0 > LIMIT_S:
                raise SystemExit(f"the server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=LIMIT_S)
        return {"ready_s": ready, "stop_s": time.perf_counter() - t1, "exit": code}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="an engine or checkpoint dir (DEMO_CACHE/engine)")
    ap.add_argument("--src", action="append", default=[], help="another source tree to time (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    trees: list[str | None] = [None, *a.src]
    runs: dict[str, list[dict[str, Any]]] = {str(t or "this tree"): [] for t in trees}
    load0 = os.getloadavg()
    for _ in range(a.rounds):
        for t in trees:
            runs[str(t or "this tree")].append(one(a.engine, t))
    out: dict[str, dict[str, Any]] = {}
    for name, rows in runs.items():
        out[name] = {key: _spread([r[key] for r in rows]) for key in ("ready_s", "stop_s")}
        out[name]["exit_codes"] = sorted({r["exit"] for r in rows})
    doc = {"rounds": a.rounds, "load_before": load0, "load_after": os.getloadavg(), "trees": out}
    if a.json:
        print(json.dumps(doc, indent=2))
        return
    for name, s in out.items():
        r, st = s["ready_s"], s["stop_s"]
        print(
            f"{name}: ready {r['median']:.2f} s [{r['min']:.2f}-{r['max']:.2f}], stopped after SIGINT "
            f"{st['median']:.2f} s [{st['min']:.2f}-{st['max']:.2f}], exit codes {s['exit_codes']}"
        )
    load1 = os.getloadavg()
    print(f"{a.rounds} rounds; load average {load0[0]:.2f} before, {load1[0]:.2f} after")


if __name__ == "__main__":
    main()
