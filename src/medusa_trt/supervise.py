"""Start and watch a child server: its own session, wait for /health, stop it with SIGTERM then SIGKILL.

The one way medusa-trt runs a server as a child process: `run` supervises ``trtllm-serve`` (``run()``:
signals forwarded, exit 128+signal), `bench --engine` and the tests start ``medusa-trt run`` for the
duration of a ``with`` block. The child runs in its own session (a terminal's Ctrl-C reaches it once,
through us); whatever is left in its process group when it has exited (MPI ranks, tp ranks) is killed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TextIO

from medusa_trt.errors import ServerError, ToolFailedError

TAIL_LINES = 25
STOP_GRACE_S = 10.0  # trtllm-serve's own handler waits 10 s before killing its child
logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind answers on loopback
    return f"http://{shown}:{port}"


def healthy(url: str) -> bool:
    """``GET {url}/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """One child server.

    ``run()`` blocks until it exits or a forwarded signal stops it (`run DIR` for a child engine);
    ``with Supervisor(...) as sup:`` starts it, waits for /health and stops it on leaving the block.
    The child's output goes to ``out`` (default: our stderr), or straight into the file ``log``; its
    last lines (``last_lines()``) go into error messages.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        host: str,
        port: int,
        startup_timeout_s: float = 1800.0,
        out: TextIO | None = None,
        log: Path | None = None,
        on_ready: Callable[[str], None] | None = None,
        exit_hint: str = "Check the engine was built on this GPU model and that the port is free.",
        timeout_hint: str = "Large engines take minutes to load; raise MEDUSA_TRT_STARTUP_TIMEOUT.",
    ) -> None:
        self.argv = argv
        self.env = env  # added to our environment
        self.url = health_url(host, port)
        self.startup_timeout_s = startup_timeout_s
        self.out = out or sys.stderr
        self.log = log
        self.on_ready = on_ready
        self.exit_hint, self.timeout_hint = exit_hint, timeout_hint  # a child that exits / never answers
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.proc: subprocess.Popen[str] | None = None
        self.pump: threading.Thread | None = None
        self.signum: int | None = None

    # --- the child ---------------------------------------------------------------------------------

    def start(self) -> None:
        sink = self.log.open("w") if self.log is not None else None
        try:
            # its own process group: a terminal's Ctrl-C reaches it once (forwarded by us), and what it
            # spawned can be cleaned up with it
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=sink or subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as e:
            raise ToolFailedError(f"could not start {self.argv[0]}: {e.strerror}") from e
        finally:
            if sink is not None:
                sink.close()  # the child holds its own copy
        logger.debug("started %s (pid %d)", self.argv, self.proc.pid)
        if sink is None:
            self.pump = threading.Thread(target=self._pump, daemon=True)
            self.pump.start()

    def last_lines(self) -> list[str]:
        """The child's last lines of output (from ``log`` when it writes there)."""
        if self.log is None:
            return list(self.tail)
        try:
            return self.log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return []

    def _pump(self) -> None:
        """Copy the child's output to ``out`` and keep its last lines for error messages."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line.rstrip("\n"))
            with contextlib.suppress(ValueError, OSError):
                self.out.write(line)
                self.out.flush()

    def wait_ready(self) -> None:
        """Return once /health answers 200 (or a forwarded signal arrived); raise if the child exits first
        (ToolFailedError, its last lines) or the start-up time runs out (ServerError)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.signum is not None:
                return
            if self.proc.poll() is not None:
                if self.pump is not None:
                    self.pump.join(timeout=2)  # let the pump catch the last lines
                raise ToolFailedError(
                    f"{os.path.basename(self.argv[0])} exited with {self.proc.returncode} before it was ready; "
                    "last lines:\n" + "\n".join(f"  | {t}" for t in self.last_lines()),
                    hint=self.exit_hint,
                )
            if healthy(self.url):
                if self.on_ready is not None:
                    self.on_ready(self.url)
                return
            if time.monotonic() > deadline:
                self.proc.terminate()
                raise ServerError(
                    f"{self.url}/health did not answer within {self.startup_timeout_s:.0f} s",
                    hint=self.timeout_hint,
                )
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM if it still runs, SIGKILL after STOP_GRACE_S; then whatever is left in its group."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        self._wait_or_kill()
        self._reap_group()

    def _wait_or_kill(self) -> None:
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

    # --- a block ---------------------------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- `run DIR` -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def run(self) -> int:
        """Start, wait for health, serve until the child exits; return the exit code to use."""
        self.start()
        assert self.proc is not None
        # SIGHUP too: the child has its own session, so a closed terminal reaches it only through us
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self.wait_ready()
            while self.proc.poll() is None and self.signum is None:
                time.sleep(0.2)
            if self.signum is not None:
                self._wait_or_kill()
                return 128 + self.signum
            if self.pump is not None:
                self.pump.join(timeout=2)
            rc = int(self.proc.returncode)
            return 128 - rc if rc < 0 else rc  # killed by a signal (the OOM killer): 128+signal, as a shell says
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            if self.proc.poll() is None:  # an exception on our side: never leave the server behind
                self.proc.terminate()
                self._wait_or_kill()
            self._reap_group()
