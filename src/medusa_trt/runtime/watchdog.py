"""Watch a running engine: a tensor-parallel rank that dies, or a step that outlives its timeout.

A dead rank makes rank 0's next collective fail (or, if it died mid-collective, hang until the
process group's timeout); a stopped rank hangs every collective. Both are caught here within a
poll interval or a step timeout, instead of at the 900 s gloo/NCCL timeout. On a fault the
watchdog calls ``on_fault(reason)`` first (so callers fail requests with their own message), then
kills the remaining ranks, which makes a collective blocked on them fail at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from medusa_trt.errors import EngineFailedError
from medusa_trt.runtime.exiting import GENERATE_THREAD, forbid_finalization

STEP_TIMEOUT_S = 30.0  # one decoding step (or idle ping) after the first token: ms to seconds on CPU
FIRST_STEP_TIMEOUT_S = 300.0  # the prefill of a long prompt on a CPU can take minutes
POLL_S = 0.1
RANK_EXIT_WAIT_S = 1.0  # after a failed step, how long to look for the rank exit that caused it

T = TypeVar("T")
_HINT = (
    "Check the machine's memory (the OOM killer) and load; the step timeouts are --step-timeout and "
    "--first-step-timeout."
)


class StepClock:
    """When the engine's current step began (set by the thread driving the engine, read by the watchdog).

    A timeout of 0 turns that check off.
    """

    def __init__(self, first_timeout_s: float = FIRST_STEP_TIMEOUT_S, step_timeout_s: float = STEP_TIMEOUT_S) -> None:
        self.first_timeout_s, self.step_timeout_s = first_timeout_s, step_timeout_s
        self._since: float | None = None
        self._first = False

    @contextlib.contextmanager
    def step(self, first: bool = False) -> Iterator[None]:
        self._first, self._since = first, time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def overdue(self) -> str | None:
        since, first = self._since, self._first
        limit = self.first_timeout_s if first else self.step_timeout_s
        if since is None or limit <= 0 or time.monotonic() - since <= limit:
            return None
        what = "the first forward (prefill)" if first else "a decoding step"
        return f"{what} took longer than {limit:g} s (a tensor-parallel rank is hung or stopped)"


class Watched(Protocol):
    """What the watchdog needs of an engine (``runtime.api.ReferenceEngine``)."""

    def rank_failures(self) -> list[str]: ...

    def abort(self) -> None: ...


class Watchdog:
    """A daemon thread polling ``engine.rank_failures()`` and ``clock.overdue()``; trips once."""

    def __init__(
        self, engine: Watched, clock: StepClock, on_fault: Callable[[str], None], poll_s: float = POLL_S
    ) -> None:
        self.engine, self.clock, self.on_fault, self.poll_s = engine, clock, on_fault, poll_s
        self.fault: str | None = None
        self.detected_at: float | None = None  # time.monotonic() of the fault
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medusa-trt-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def check(self) -> str | None:
        failures = self.engine.rank_failures()
        return "; ".join(failures) if failures else self.clock.overdue()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            reason = self.check()
            if reason is None:
                continue
            self.fault, self.detected_at = reason, time.monotonic()
            try:
                self.on_fault(reason)
            finally:
                self.engine.abort()  # unblocks a collective waiting on a hung rank
            return


def rank_failure(engine: Watched, e: BaseException, what: str) -> BaseException:
    """``e``, or an EngineFailedError naming the rank that died if that is why a step failed.

    A collective's own error names sockets and source files; a dead rank's exit may take a moment
    to be seen after its socket closed, hence the short wait.
    """
    if isinstance(e, ValueError | KeyboardInterrupt) or not isinstance(e, Exception) or _ours(e):
        return e
    deadline = time.monotonic() + RANK_EXIT_WAIT_S
    while True:
        failures = engine.rank_failures()
        if failures:
            return EngineFailedError(f"{what}: {'; '.join(failures)}", hint=_HINT)
        if time.monotonic() > deadline:
            return e
        time.sleep(0.05)


def _ours(e: BaseException) -> bool:
    from medusa_trt.errors import MedusaTrtError

    return isinstance(e, MedusaTrtError)


def run_guarded(
    engine: Watched,
    body: Callable[[StepClock], T],
    *,
    first_timeout_s: float = FIRST_STEP_TIMEOUT_S,
    step_timeout_s: float = STEP_TIMEOUT_S,
) -> T:
    """``body(clock)`` on a thread under a watchdog, for one-shot generation (`run --prompt`).

    The calling thread only waits, so it stays free for signals: a SIGTERM/Ctrl-C kills the ranks
    (a collective of the body on a hung rank then fails) and is re-raised at once. A fault raises
    EngineFailedError.
    """
    clock = StepClock(first_timeout_s, step_timeout_s)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = body(clock)
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    worker = threading.Thread(target=target, name=GENERATE_THREAD, daemon=True)
    dog = Watchdog(engine, clock, on_fault=lambda _reason: None).start()
    worker.start()
    try:
        while worker.is_alive() and dog.fault is None:
            worker.join(POLL_S)
    except BaseException:
        forbid_finalization("a signal killed the ranks mid-collective")
        engine.abort()
        worker.join(5)
        raise
    finally:
        dog.stop()
    if dog.fault is not None:
        worker.join(5)  # the ranks are gone: its collective fails now
        raise EngineFailedError(f"generation stopped: {dog.fault}", hint=_HINT)
    if "error" in box:
        raise rank_failure(engine, box["error"], "generation stopped")
    value: T = box["value"]
    return value
