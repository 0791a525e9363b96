"""Supervise a server child process: start it, wait for /health, forward signals, exit 128+signal.

Used for ``trtllm-serve``; works for any command serving ``GET /health`` on host:port. The child
runs in its own session (SIGINT/SIGTERM/SIGHUP reach it once, through us); whatever is left in its
process group when it has exited (MPI ranks) is killed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import FrameType
from typing import TextIO

from medusa_trt.errors import ServerError, ToolFailedError

TAIL_LINES = 25
logger = logging.getLogger(__name__)
STOP_GRACE_S = 10.0  # trtllm-serve's own handler waits 10 s before killing its child


def health_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind answers on loopback
    return f"http://{shown}:{port}"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """One child server; ``run()`` blocks until it exits or a forwarded signal stops it."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        host: str,
        port: int,
        startup_timeout_s: float = 1800.0,
        out: TextIO | None = None,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = argv
        self.env = env
        self.url = health_url(host, port)
        self.startup_timeout_s = startup_timeout_s
        self.out = out or sys.stderr
        self.on_ready = on_ready
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.proc: subprocess.Popen[str] | None = None
        self.signum: int | None = None

    def _pump(self) -> None:
        """Copy the child's output to our stderr and keep its last lines for error messages."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            with contextlib.suppress(ValueError, OSError):
                self.out.write(line)
                self.out.flush()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def _stop(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _reap_group(self) -> None:
        """Kill whatever the server left in its process group (e.g. MPI workers of trtllm-serve)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def run(self) -> int:
        """Start, wait for health, serve until the child exits; return the exit code to use."""
        env = {**os.environ, **self.env}
        try:
            # its own process group: a terminal's Ctrl-C reaches it once (forwarded by us), and what it
            # spawned can be cleaned up with it
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as e:
            raise ToolFailedError(f"could not start {self.argv[0]}: {e.strerror}") from e
        logger.debug("started %s (pid %d)", self.argv, self.proc.pid)
        pump = threading.Thread(target=self._pump, daemon=True)
        pump.start()
        # SIGHUP too: the child has its own session, so a closed terminal reaches it only through us
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._wait_ready()
            while self.proc.poll() is None and self.signum is None:
                time.sleep(0.2)
            if self.signum is not None:
                self._stop()
                return 128 + self.signum
            pump.join(timeout=2)
            rc = int(self.proc.returncode)
            return 128 - rc if rc < 0 else rc  # killed by a signal (the OOM killer): 128+signal, as a shell says
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if self.proc.poll() is None:  # an exception on our side: never leave the server behind
                self.proc.terminate()
                self._stop()
            self._reap_group()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.signum is not None:
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the pump catch the last lines
                raise ToolFailedError(
                    f"{os.path.basename(self.argv[0])} exited with {self.proc.returncode} before it was ready; "
                    "last lines:\n" + "\n".join(f"  | {t}" for t in self.tail),
                    hint="Check the engine was built on this GPU model and that the port is free.",
                )
            if _healthy(self.url):
                if self.on_ready is not None:
                    self.on_ready(self.url)
                return
            if time.monotonic() > deadline:
                self.proc.terminate()
                raise ServerError(
                    f"{self.url}/health did not answer within {self.startup_timeout_s:.0f} s",
                    hint="Large engines take minutes to load; raise MEDUSA_TRT_STARTUP_TIMEOUT.",
                )
            time.sleep(0.25)
