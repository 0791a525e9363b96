"""Faults with real processes and signals: a tp 2 server (and `run --prompt`) whose rank 1 is killed
(SIGKILL) or stopped (SIGSTOP), and a server whose engine process is. The server must stop claiming
health, fail the requests in flight with an OpenAI-shaped 503 that names no internal file, kill what
is left of its ranks and exit; SIGTERM must end it even while a rank hangs. The tests assert what happens and in which order; how fast it
happens is measured by benchmarks/faults.py. Their time limits only keep a broken build from hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from medusa_trt.supervise import Supervisor, free_port
from tests.helpers import HANG_S

PROMPT = "def f():"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_heads: Path) -> Path:
    from tests.helpers.checkpoints import make_checkpoint
    from tests.helpers.models import make_tiny_llama

    base = tmp_path_factory.mktemp("faults")
    model = make_tiny_llama(base / "llama", seed=0, max_position_embeddings=2048)  # long runs to interrupt
    return make_checkpoint(model, base / "ck2", heads=tiny_heads, tp=2)


def spawned(pid: int, timeout: float = HANG_S, *, ranks: bool = True, tp1: bool = False) -> list[psutil.Process]:
    """The spawned processes below ``pid`` (once they exist): the tp ranks, or (``ranks=False``) the
    server's engine process, which is rank 0 and the ranks' parent (`run --prompt` drives rank 0 itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in psutil.Process(pid).children(recursive=True) if any("spawn_main" in a for a in c.cmdline())]
        if ranks and any(c.ppid() != pid for c in found):  # below an engine process
            found = [c for c in found if c.ppid() != pid]
        elif not ranks:  # the one with ranks below it (tp1: the only one)
            found = [c for c in found if c.ppid() == pid and (tp1 or c.children())]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("no spawned process appeared")


def ranks_of(pid: int, timeout: float = HANG_S) -> list[psutil.Process]:
    """The tp ranks below ``pid`` (a tp 1 server: its engine process)."""
    return spawned(pid, timeout)


def gone(procs: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=HANG_S)
    return not alive


def stopped(proc: psutil.Process) -> None:
    """Wait until SIGSTOP has taken effect on ``proc``."""
    deadline = time.monotonic() + HANG_S
    while proc.status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, "the rank did not stop"
        time.sleep(0.05)


class Server:
    """`medusa-trt run CKPT` under the one supervisor (``supervise.Supervisor``), its output in ``log``."""

    def __init__(self, ckpt: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "medusa_trt", "run", str(ckpt), "--port", str(self.port), *extra]
        self.sup = Supervisor(argv, env={}, host="127.0.0.1", port=self.port, startup_timeout_s=HANG_S, log=log)
        self.sup.start()
        self.sup.wait_ready()  # /health answered (a child that exits first fails here with its last lines)
        assert self.sup.proc is not None
        self.url, self.proc, self.log = self.sup.url, self.sup.proc, log
        self.ranks = ranks_of(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for r in self.ranks:
            if r.is_running():
                r.kill()
        self.sup.stop()  # and whatever is left in its process group


@pytest.fixture
def server(ckpt: Path, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    srv = Server(ckpt, tmp_path / "server.log", *getattr(request, "param", ()))
    yield srv
    srv.stop()


def first_chunk(url: str) -> tuple[httpx.Client, Any, Iterator[str]]:
    """Open a long streaming generation and wait for its first event (the engine is busy after it)."""
    client = httpx.Client(timeout=HANG_S)
    body = {"prompt": PROMPT, "max_tokens": 1900, "temperature": 0, "medusa": False, "stream": True}
    resp = client.send(client.build_request("POST", f"{url}/v1/completions", json=body), stream=True)
    assert resp.status_code == 200
    lines = resp.iter_lines()
    assert next(line for line in lines if line.startswith("data: "))
    return client, resp, lines


def assert_clean_503(err: dict[str, Any]) -> None:
    assert err["type"] == "server_error" and err["code"] == "engine_failed", err
    assert "/" not in err["message"] and "gloo" not in err["message"].lower(), err  # no internal paths


def test_rank_killed_fails_health_and_requests_then_exits_1(server: Server) -> None:
    client, _resp, lines = first_chunk(server.url)
    os.kill(server.ranks[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + HANG_S
    while (health := httpx.get(f"{server.url}/health", timeout=HANG_S)).status_code == 200:
        assert time.monotonic() < deadline, "still healthy"
    # the first answer that is not 200 is a 503 naming the rank (the port stays open ~1 s after the fault)
    assert health.status_code == 503 and "rank 1" in health.json()["reason"]
    events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    assert "error" in events[-1], events[-1]  # the stream ends with the error event, then [DONE]
    assert_clean_503(events[-1]["error"])
    client.close()
    assert server.proc.wait(timeout=HANG_S) == 1  # on its own: the hard exit fires whatever is stuck
    assert "rank 1 was killed by SIGKILL" in server.log.read_text()
    assert gone(server.ranks)


def test_engine_process_killed_fails_health_and_requests_then_exits_1(server: Server) -> None:
    """The server's engine process (rank 0, the ranks' parent) dies: the same fault path as a rank's, and
    its ranks follow it out."""
    (engine,) = spawned(server.proc.pid, ranks=False)
    client, _resp, lines = first_chunk(server.url)
    os.kill(engine.pid, signal.SIGKILL)
    deadline = time.monotonic() + HANG_S
    while (health := httpx.get(f"{server.url}/health", timeout=HANG_S)).status_code == 200:
        assert time.monotonic() < deadline, "still healthy"
    assert health.status_code == 503 and "the engine process was killed by SIGKILL" in health.json()["reason"]
    events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    assert "error" in events[-1], events[-1]
    assert_clean_503(events[-1]["error"])
    client.close()
    assert server.proc.wait(timeout=HANG_S) == 1
    assert gone(server.ranks)


@pytest.mark.parametrize("server", [("--step-timeout", "2")], indirect=True)
def test_rank_stopped_times_out_the_step_then_exits_1(server: Server) -> None:
    client, _resp, lines = first_chunk(server.url)
    os.kill(server.ranks[0].pid, signal.SIGSTOP)
    events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]
    assert_clean_503(events[-1]["error"])
    assert "longer than 2 s" in events[-1]["error"]["message"]  # the step timeout ended it, nothing else
    # a new request meanwhile is refused, not queued behind the dead engine
    try:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=HANG_S)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error", r.text
    except httpx.ConnectError:
        pass  # or the port is already closed: either way nothing waits on the dead engine
    client.close()
    assert server.proc.wait(timeout=HANG_S) == 1
    assert gone(server.ranks)  # the stopped rank was killed, not left behind


@pytest.mark.parametrize("server", [("--step-timeout", "1")], indirect=True)
def test_rank_stopped_while_idle_is_found_by_the_ping(server: Server) -> None:
    """No request in flight: the idle ping (every 5 s) through the ranks stalls and times out."""
    os.kill(server.ranks[0].pid, signal.SIGSTOP)
    deadline = time.monotonic() + HANG_S
    while httpx.get(f"{server.url}/health", timeout=HANG_S).status_code == 200:
        assert time.monotonic() < deadline, "a stopped rank went unnoticed"
        time.sleep(0.1)
    assert server.proc.wait(timeout=HANG_S) == 1
    assert gone(server.ranks)


def test_engine_process_stopped_while_idle_is_found_by_the_ping(
    tmp_path: Path, tiny_llama: Path, tiny_heads: Path
) -> None:
    """tp 1: no ranks, but the engine process can stop on its own; the idle ping finds it too."""
    from tests.helpers.checkpoints import make_checkpoint

    srv = Server(
        make_checkpoint(tiny_llama, tmp_path / "ck1", heads=tiny_heads), tmp_path / "s.log", "--step-timeout", "1"
    )
    try:
        (engine,) = spawned(srv.proc.pid, ranks=False, tp1=True)
        os.kill(engine.pid, signal.SIGSTOP)
        deadline = time.monotonic() + HANG_S
        while (health := httpx.get(f"{srv.url}/health", timeout=HANG_S)).status_code == 200:
            assert time.monotonic() < deadline, "a stopped engine process went unnoticed"
            time.sleep(0.1)
        assert health.status_code == 503 and "longer than 1 s" in health.json()["reason"]
        assert srv.proc.wait(timeout=HANG_S) == 1
        assert gone([engine])  # killed, not left stopped
    finally:
        srv.stop()


@pytest.mark.parametrize("server", [("--step-timeout", "0")], indirect=True)
def test_sigterm_ends_a_server_with_a_hung_rank(server: Server) -> None:
    client, _resp, _lines = first_chunk(server.url)
    os.kill(server.ranks[0].pid, signal.SIGSTOP)
    stopped(server.ranks[0])  # mid-generation: the engine's next collective hangs (no step timeout to save it)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=HANG_S) == 128 + signal.SIGTERM
    assert gone(server.ranks)
    client.close()


# `python -m medusa_trt` that says on stderr whether the interpreter ran its finalization (atexit is its
# first step). After tensor parallelism it must not: gloo's threads may still be releasing the last
# collective's tensors, which takes the GIL, and CPython ends such a thread during finalization in a
# way that aborts the process (SIGABRT). That abort is rare and timing-bound; this marker is not.
CLI = [
    sys.executable,
    "-c",
    "import atexit, runpy, sys; atexit.register(sys.stderr.write, 'interpreter finalization'); "
    "runpy.run_module('medusa_trt', run_name='__main__', alter_sys=True)",
]
FINALIZED = "interpreter finalization"


def run_prompt(ckpt: Path, *extra: str) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """`medusa-trt run CKPT --prompt` at tp 2, once it has printed its first text (it is generating)."""
    argv = [*CLI, "run", str(ckpt), "--prompt", PROMPT, "--max-tokens", "1900"]
    proc = subprocess.Popen([*argv, "--no-medusa", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks = ranks_of(proc.pid)
    assert proc.stdout is not None and proc.stdout.read(1)
    return proc, ranks


def test_run_prompt_rank_killed_is_one_line_exit_1(ckpt: Path) -> None:
    proc, ranks = run_prompt(ckpt)
    os.kill(ranks[0].pid, signal.SIGKILL)
    rc = proc.wait(timeout=HANG_S)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 1, err[-3000:]
    assert "tensor-parallel rank 1 was killed by SIGKILL" in err and "Traceback" not in err and "gloo" not in err
    assert FINALIZED not in err  # where the rare SIGABRT came from
    assert gone(ranks)


def test_run_prompt_tp2_ends_without_interpreter_finalization(ckpt: Path) -> None:
    done = subprocess.run(
        [*CLI, "run", str(ckpt), "--prompt", PROMPT, "--max-tokens", "4", "--no-medusa"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tp=2" in done.stderr and FINALIZED not in done.stderr
    assert "terminate called" not in done.stderr  # nor did a rank abort on its way out


def test_run_prompt_sigterm_with_a_hung_rank(ckpt: Path) -> None:
    proc, ranks = run_prompt(ckpt, "--step-timeout", "0")
    os.kill(ranks[0].pid, signal.SIGSTOP)
    stopped(ranks[0])
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=HANG_S)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and FINALIZED not in err
    assert gone(ranks)
