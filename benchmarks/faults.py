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
  (the tokenizer runs on each), RSS after every round;
- template-loop: a model whose chat template never ends (nested range(100000) loops), served with
  --template-timeout; a chat request, /health probed meanwhile, then a completion (is the worker free?);
- role-flood: four requests with a 3.9 MB role and four with 60,000 empty messages, sent together
  with one normal chat request (its latency is what the floods cost others);
- stop-list: a request with 110,000 stop strings, then 480 tokens with 16 stop strings (the most
  allowed) against 480 tokens without, interleaved;
- template-overhead: in-process, the chat template rendered in its child process against
  ``apply_chat_template`` on the same thread (what the budget costs a normal request).

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


LOOP_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}never"


def build(work: Path) -> tuple[Path, Path, Path]:
    """tp 1 and tp 2 checkpoints of the tiny model, and a tp 1 one whose chat template never ends."""
    import shutil

    from transformers import AutoTokenizer

    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.demo.synthetic import make_medusa_heads, make_tiny_llama

    model = make_tiny_llama(work / "llama", seed=0, max_position_embeddings=2048)
    heads = make_medusa_heads(work / "heads", hidden_size=64, vocab_size=320, num_heads=3)
    for tp in (1, 2):
        convert_checkpoint(model, work / f"ck{tp}", medusa=heads, tp=tp, progress=False)
    shutil.copytree(model, work / "looping")
    tok = AutoTokenizer.from_pretrained(str(work / "looping"))
    tok.chat_template = LOOP_TEMPLATE
    tok.save_pretrained(str(work / "looping"))
    convert_checkpoint(work / "looping", work / "ck-loop", medusa=heads, tp=1, progress=False)
    return work / "ck1", work / "ck2", work / "ck-loop"


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

    def children_rss_mib(self) -> float:
        """The server's child processes (the chat template's renderer; tp ranks at tp > 1)."""
        return sum(c.memory_info().rss for c in self.ps.children(recursive=True) if c.is_running()) / MB

    def probe_health(self) -> tuple[threading.Event, list[tuple[int | None, float]], threading.Thread]:
        """Probe /health every 50 ms on a thread until the returned event is set: (status, latency) pairs."""
        done, seen = threading.Event(), []

        def probe() -> None:
            while not done.is_set():
                t = time.monotonic()
                code = self.health()
                seen.append((code, time.monotonic() - t))
                time.sleep(0.05)

        thread = threading.Thread(target=probe)
        thread.start()
        return done, seen, thread

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


def _chat(content: str, max_tokens: int = 1, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0, **extra}


def template_loop(ckpt: Path, timeout_s: float) -> dict[str, Any]:
    """Four looping chats: the first also waits for the renderer's start; after each stop a spare that
    has been starting meanwhile takes over, so later answers take the budget plus whatever is left of
    a start (a start is ``renderer_start_s`` of template-overhead)."""
    srv = Server(ckpt, "--template-timeout", str(timeout_s))
    try:
        before, children = srv.rss_mib(), srv.children_rss_mib()
        done, health, thread = srv.probe_health()
        answers, statuses, codes = [], [], []
        for _ in range(4):
            t0 = time.monotonic()
            r = httpx.post(f"{srv.url}/v1/chat/completions", json=_chat("hi"), timeout=300)
            answers.append(time.monotonic() - t0)
            statuses.append(r.status_code)
            codes.append(r.json().get("error", {}).get("code"))
        t1 = time.monotonic()
        ok = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "def f():", "max_tokens": 1}, timeout=300)
        after_s = time.monotonic() - t1
        done.set()
        thread.join()
        return {
            "detect_s": sorted(answers[1:])[1],  # the median of the three after the first
            "answers_s": [round(a, 2) for a in answers],
            "status": [*statuses, ok.status_code],
            "code": sorted(set(codes), key=str),
            "next_request_s": after_s,
            "health_statuses": sorted({c for c, _ in health}, key=str),
            "health_max_s": max((t for _, t in health), default=None),
            "exit_code": srv.proc.poll(),
            "rss_before_mib": before,
            "rss_after_mib": srv.rss_mib(),
            "renderer_rss_before_mib": children,
            "renderer_rss_after_mib": srv.children_rss_mib(),
        }
    finally:
        srv.close()


def role_flood(ckpt: Path) -> dict[str, Any]:
    srv = Server(ckpt)
    try:
        before = srv.rss_mib()
        floods = [{"messages": [{"role": "x" * 3_900_000, "content": "hi"}], "max_tokens": 1}] * 4
        floods += [{"messages": [{"role": "user", "content": ""}] * 60_000, "max_tokens": 1}] * 4
        normal = _chat("Write a function.", max_tokens=8)
        httpx.post(f"{srv.url}/v1/chat/completions", json=normal, timeout=300)  # warm: the renderer is up
        alone: list[float] = []
        t = time.monotonic()
        httpx.post(f"{srv.url}/v1/chat/completions", json=normal, timeout=300)
        alone.append(time.monotonic() - t)
        statuses: list[int] = []
        times: list[float] = []
        normal_s: list[float] = []

        def send(body: dict[str, Any], into: list[float]) -> None:
            t = time.monotonic()
            r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
            into.append(time.monotonic() - t)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=send, args=(b, times)) for b in floods]
        threads.append(threading.Thread(target=send, args=(normal, normal_s)))
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return {
            "detect_s": max(times),
            "status": sorted(set(statuses)),
            "normal_alone_s": alone[0],
            "normal_during_s": normal_s[0],
            "exit_code": srv.proc.poll(),
            "rss_before_mib": before,
            "rss_after_mib": srv.rss_mib(),
        }
    finally:
        srv.close()


def stop_list(ckpt: Path, rounds: int) -> dict[str, Any]:
    srv = Server(ckpt)
    try:
        before = srv.rss_mib()
        base = {"prompt": "def f():", "max_tokens": 480, "temperature": 0, "ignore_eos": True, "medusa": False}
        t0 = time.monotonic()
        flood = httpx.post(f"{srv.url}/v1/completions", json={**base, "stop": [f"s{i}" for i in range(110_000)]})
        answer = time.monotonic() - t0
        stops = [f"never-seen-{i:02d}" + "z" * 40 for i in range(16)]
        plain: list[float] = []
        sixteen: list[float] = []
        for _ in range(rounds):  # interleaved: the host's load drifts
            for body, into in ((base, plain), ({**base, "stop": stops}, sixteen)):
                t = time.monotonic()
                r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=300)
                into.append(time.monotonic() - t)
                assert r.json()["usage"]["completion_tokens"] == 480, r.text
        return {
            "detect_s": answer,
            "status": [flood.status_code],
            "tokens480_s": sorted(plain)[len(plain) // 2],
            "tokens480_16stops_s": sorted(sixteen)[len(sixteen) // 2],
            "exit_code": srv.proc.poll(),
            "rss_before_mib": before,
            "rss_after_mib": srv.rss_mib(),
        }
    finally:
        srv.close()


def template_overhead(ckpt: Path, rounds: int) -> dict[str, Any]:
    """Median time to render one chat: in the budgeted child process, and in-process as before."""
    from transformers import AutoTokenizer

    from medusa_trt.serve.chat import ChatPrompt

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    messages = [{"role": "system", "content": "You are terse."}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "Write a function that adds two numbers. " * 20}
        for i in range(8)
    ]
    t0 = time.monotonic()
    chat = ChatPrompt(tok)
    try:
        chat.render(messages)  # the child's start-up is not a request's cost
        start = time.monotonic() - t0
        child, inline = [], []
        for _ in range(rounds):
            t = time.monotonic()
            chat.render(messages)
            child.append(time.monotonic() - t)
            t = time.monotonic()
            tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inline.append(time.monotonic() - t)
    finally:
        chat.close()
    return {
        "renderer_start_s": start,
        "render_child_ms": 1000 * sorted(child)[rounds // 2],
        "render_inline_ms": 1000 * sorted(inline)[rounds // 2],
    }


def fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--step-timeout", type=float, default=5.0)
    p.add_argument("--template-timeout", type=float, default=2.0)
    p.add_argument("--only", help="comma-separated scenario names (default: all)")
    p.add_argument("--json-out", type=Path)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ck1, ck2, ck_loop = build(Path(tmp))
        bound = 2048 * 19  # context x the tiny vocabulary's longest token (19 characters): the cheap check
        scenarios: dict[str, Any] = {
            "rank-kill": lambda: rank_fault(ck2, signal.SIGKILL, a.step_timeout),
            "rank-hang": lambda: rank_fault(ck2, signal.SIGSTOP, a.step_timeout),
            "sigterm-hung": lambda: sigterm_hung(ck2),
            "large-body": lambda: large_body(ck1, 20 * MB),
            "large-body-admitted": lambda: large_body(ck1, 20 * MB, "--max-request-mb", "64"),
            "repeated-rejection": lambda: repeated(ck1, 900 * 1024, a.rounds),
            "repeated-rejection-tokenized": lambda: repeated(ck1, bound - 100, a.rounds),
            "template-loop": lambda: template_loop(ck_loop, a.template_timeout),
            "role-flood": lambda: role_flood(ck1),
            "stop-list": lambda: stop_list(ck1, max(3, a.rounds // 4)),
            "template-overhead": lambda: template_overhead(ck1, 10 * a.rounds),
        }
        chosen = a.only.split(",") if a.only else list(scenarios)
        if unknown := [n for n in chosen if n not in scenarios]:
            raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(scenarios)}")
        results = {name: scenarios[name]() for name in chosen}
    doc = {
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "step_timeout_s": a.step_timeout,
        "template_timeout_s": a.template_timeout,
        "rounds": a.rounds,
        "results": results,
    }
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, r in results.items():
        print(f"{name:30s} " + "  ".join(f"{k}={fmt(v)}" for k, v in r.items() if k != "rss_per_round_mib"))
    if a.json_out:
        a.json_out.write_text(json.dumps(doc, indent=2))
        print(f"wrote {a.json_out}")


if __name__ == "__main__":
    main()
