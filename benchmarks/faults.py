"""Fault-injection benchmark for the reference server: what a load balancer and a supervisor see.

    python benchmarks/faults.py [--rounds 20] [--step-timeout 5] [--json-out faults.json]

Builds a tiny Llama 3 (2048-token context) with Medusa heads locally, converts it at tp 2 (and tp 1
for the request scenarios), serves it with ``python -m medusa_trt run DIR --port N`` on 127.0.0.1 and injects:

- rank-kill: SIGKILL tp rank 1 of an idle server;
- rank-hang: SIGSTOP rank 1 of an idle server (found by the idle ping + --step-timeout);
- sigterm-hung: SIGSTOP rank 1 during a generation, then SIGTERM the server (no step timeout);
- large-body: one 20 MB prompt without spaces (default --max-request-mb), /health timed meanwhile;
- large-body-admitted: the same with --max-request-mb 64 (the cheap context check answers);
- repeated-rejection: --rounds prompts of ~900 KB, each refused (cheap check, no tokenizing);
- repeated-rejection-tokenized: --rounds prompts just under the cheap bound but over the context
  (the tokenizer runs on each), RSS after every round.

For each: time to detection (the first /health 503, or the answer's arrival), exit status, and the
server's RSS before and after. Prints one line per scenario and, with --json-out, one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

MB = 2**20


def build(work: Path) -> tuple[Path, Path]:
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.demo.synthetic import make_medusa_heads, make_tiny_llama

    model = make_tiny_llama(work / "llama", seed=0, max_position_embeddings=2048)
    heads = make_medusa_heads(work / "heads", hidden_size=64, vocab_size=320, num_heads=3)
    for tp in (1, 2):
        convert_checkpoint(model, work / f"ck{tp}", medusa=heads, tp=tp, progress=False)
    return work / "ck1", work / "ck2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, ckpt: Path, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{(port := free_port())}"
        argv = [sys.executable, "-m", "medusa_trt", "run", str(ckpt), "--port", str(port), *extra]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(argv, stderr=self.log)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 300
        while self.health() != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"server did not start:\n{self.log.read()[-2000:]}")
            time.sleep(0.2)
        self.ranks = [c for c in self.ps.children(recursive=True) if any("spawn_main" in a for a in c.cmdline())]

    def health(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / MB

    def wait_unhealthy(self, t0: float, limit: float = 120) -> float | None:
        while time.monotonic() - t0 < limit:
            code = self.health()
            if code != 200:
                return time.monotonic() - t0 if code in (503, None) else None
            time.sleep(0.05)
        return None

    def wait_exit(self, t0: float, limit: float = 60) -> tuple[int | None, float | None]:
        try:
            rc = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None, None
        return rc, time.monotonic() - t0

    def ranks_left(self) -> int:
        return sum(1 for r in self.ranks if r.is_running() and r.status() != psutil.STATUS_ZOMBIE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for r in self.ranks:
            if r.is_running():
                r.kill()
        self.log.close()


def rank_fault(ckpt: Path, sig: int, step_timeout: float) -> dict[str, Any]:
    srv = Server(ckpt, "--step-timeout", str(step_timeout))
    try:
        before = srv.rss_mib()
        t0 = time.monotonic()
        os.kill(srv.ranks[0].pid, sig)
        detect = srv.wait_unhealthy(t0)
        after = srv.rss_mib() if srv.proc.poll() is None else None
        rc, exit_s = srv.wait_exit(t0)
        return {
            "detect_s": detect,
            "exit_code": rc,
            "exit_s": exit_s,
            "rss_before_mib": before,
            "rss_after_mib": after,
            "ranks_left": srv.ranks_left(),
        }
    finally:
        srv.close()


def sigterm_hung(ckpt: Path) -> dict[str, Any]:
    srv = Server(ckpt, "--step-timeout", "0")
    try:
        before = srv.rss_mib()
        body = {"prompt": "def f():", "max_tokens": 1900, "temperature": 0, "medusa": False, "stream": True}
        client = httpx.Client(timeout=60)
        resp = client.send(client.build_request("POST", f"{srv.url}/v1/completions", json=body), stream=True)
        next(ln for ln in resp.iter_lines() if ln.startswith("data: "))
        os.kill(srv.ranks[0].pid, signal.SIGSTOP)
        time.sleep(0.5)
        after = srv.rss_mib()
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc, exit_s = srv.wait_exit(t0, limit=30)
        client.close()
        return {
            "detect_s": None,
            "exit_code": rc,
            "exit_s": exit_s,
            "rss_before_mib": before,
            "rss_after_mib": after,
            "ranks_left": srv.ranks_left(),
        }
    finally:
        srv.close()


def large_body(ckpt: Path, size: int, *extra: str) -> dict[str, Any]:
    srv = Server(ckpt, *extra)
    try:
        before = srv.rss_mib()
        payload = json.dumps({"prompt": "x" * size, "max_tokens": 1}).encode()
        health: list[float] = []
        done = threading.Event()

        def probe() -> None:  # /health latency while the big request is being handled
            while not done.is_set():
                t = time.monotonic()
                srv.health()
                health.append(time.monotonic() - t)
                time.sleep(0.05)

        thread = threading.Thread(target=probe)
        thread.start()
        t0 = time.monotonic()
        r = httpx.post(
            f"{srv.url}/v1/completions", content=payload, headers={"content-type": "application/json"}, timeout=300
        )
        answer = time.monotonic() - t0
        done.set()
        thread.join()
        return {
            "detect_s": answer,
            "status": r.status_code,
            "health_max_s": max(health, default=None),
            "exit_code": srv.proc.poll(),
            "rss_before_mib": before,
            "rss_after_mib": srv.rss_mib(),
        }
    finally:
        srv.close()


def repeated(ckpt: Path, size: int, rounds: int) -> dict[str, Any]:
    srv = Server(ckpt, "--max-request-mb", "64")
    try:
        before = srv.rss_mib()
        rss, statuses, times = [], set(), []
        for i in range(rounds):
            body = {"prompt": chr(ord("a") + i % 26) * size, "max_tokens": 1}  # a new word each round
            t0 = time.monotonic()
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=300)
            times.append(time.monotonic() - t0)
            statuses.add(r.status_code)
            rss.append(round(srv.rss_mib(), 1))
        return {
            "detect_s": max(times),
            "status": sorted(statuses),
            "exit_code": srv.proc.poll(),
            "rss_before_mib": before,
            "rss_after_mib": rss[-1],
            "rss_per_round_mib": rss,
        }
    finally:
        srv.close()


def fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--step-timeout", type=float, default=5.0)
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ck1, ck2 = build(Path(tmp))
        bound = 2048 * 19  # context x the tiny vocabulary's longest token (19 characters): the cheap check
        results = {
            "rank-kill": rank_fault(ck2, signal.SIGKILL, a.step_timeout),
            "rank-hang": rank_fault(ck2, signal.SIGSTOP, a.step_timeout),
            "sigterm-hung": sigterm_hung(ck2),
            "large-body": large_body(ck1, 20 * MB),
            "large-body-admitted": large_body(ck1, 20 * MB, "--max-request-mb", "64"),
            "repeated-rejection": repeated(ck1, 900 * 1024, a.rounds),
            "repeated-rejection-tokenized": repeated(ck1, bound - 100, a.rounds),
        }
    doc = {"cpus": os.cpu_count(), "step_timeout_s": a.step_timeout, "rounds": a.rounds, "results": results}
    for name, r in results.items():
        cols = (
            "detect_s",
            "status",
            "health_max_s",
            "exit_code",
            "exit_s",
            "ranks_left",
            "rss_before_mib",
            "rss_after_mib",
        )
        print(f"{name:30s} " + "  ".join(f"{k}={fmt(r[k])}" for k in cols if k in r))
    if a.json_out:
        a.json_out.write_text(json.dumps(doc, indent=2))
        print(f"wrote {a.json_out}")


if __name__ == "__main__":
    main()
