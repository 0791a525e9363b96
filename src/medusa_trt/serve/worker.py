"""One engine, one generation at a time: a dedicated thread drains a FIFO of jobs.

The engine is not thread-safe and its calls block (torch steps in this process, or reads from the engine
process's pipe: ``serve.engine_process``), so it is driven from its own thread; the event loop stays free
for `/health`, `/metrics` and queued clients. Each job sends its chunks
back to the loop through its Events: the loop is woken only when it waits for one (one wake-up per
wait, not per chunk; a chunk that arrives while the loop is still sending the last one is picked up
without a wake-up). Cancelling a job (client gone, stop string seen, server
shutting down) makes the thread close the Generation after the step in flight, freeing the slot.

Each engine step runs under a StepClock that the server's watchdog reads; while idle, an engine with
processes of its own (tp ranks, an engine process) is pinged every PING_S, so that a stopped one is
found before the next request hangs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medusa_trt.runtime.watchdog import StepClock, rank_failure
from medusa_trt.serve.metrics import Metrics

if TYPE_CHECKING:
    from medusa_trt.runtime.types import GenerationStats, SamplingParams
    from medusa_trt.serve.served import ServedEngine

PING_S = 5.0  # idle interval between liveness round trips through the tp ranks


def engine_threads(tp: int, cores: int, torch_threads: int) -> int | None:
    """Torch threads for a server's engine (its process, or its thread): one core fewer than the process
    may use, at most ``torch_threads`` (torch's setting: OMP_NUM_THREADS, e.g. the profile's), at least
    one; None at tp > 1 (the ranks split the cores already).

    The event loop (and a client on the same machine) needs a core. An engine team with every core makes
    OpenMP wake a sleeping worker for each parallel region, which then competes with the loop for the
    cores: on 2 cores that cost about 15 extra context switches per streamed token.
    """
    if tp > 1:
        return None
    return max(1, min(torch_threads, cores - 1))


@dataclass
class Finished:
    """The last event of a job: the engine's stats (None when cut short) or the error it raised."""

    stats: GenerationStats | None = None
    error: BaseException | None = None
    cancelled: bool = False


class Events:
    """A job's events, in order, from any thread to the event loop's one reader.

    ``put`` wakes the loop (call_soon_threadsafe: a write to its self-pipe) only when the reader is
    waiting; events that arrive while it is busy are taken by ``get_nowait`` without a wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lock = threading.Lock()  # orders an append against the reader's decision to wait
        self._deadline = 0.0  # when the waiting reader times out (loop time)
        self._timer: asyncio.TimerHandle | None = None

    def put(self, event: Any) -> None:
        with self._lock:
            self._items.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                self._loop.call_soon_threadsafe(_resolve, waiter)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        """The next event; IndexError when there is none yet."""
        return self._items.popleft()

    async def get(self, timeout: float) -> Any:
        """The next event; asyncio.TimeoutError if none came within ``timeout`` seconds."""
        with self._lock:
            if self._items:
                return self._items.popleft()
            waiter = self._waiter = self._loop.create_future()
        # one timer at a time, re-armed when it fires (not one per wait: a stream waits once per token)
        self._deadline = self._loop.time() + timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expire)
        try:
            await waiter
        finally:
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None
        if not self._items:
            raise asyncio.TimeoutError
        return self._items.popleft()

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms a timer
        if self._loop.time() < self._deadline:  # a later wait than the one this timer was armed for
            self._timer = self._loop.call_at(self._deadline, self._expire)
        else:
            _resolve(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    medusa: bool
    loop: asyncio.AbstractEventLoop
    events: Events = field(init=False)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.events = Events(self.loop)

    def cancel(self) -> None:
        self.cancelled.set()

    def _send(self, event: Any) -> None:
        self.events.put(event)


class EngineWorker:
    """Runs jobs on the engine one after another, on one thread."""

    def __init__(
        self,
        engine: ServedEngine,
        metrics: Metrics | None = None,
        clock: StepClock | None = None,
        ping_s: float = PING_S,
        threads: int | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.threads = threads  # torch intra-op threads of the engine thread (None: leave torch's)
        self.started = threading.Event()  # set once the thread runs with its settings
        self.torch_threads = 0
        self.clock = clock or StepClock()
        self.ping_s = ping_s if _has_processes(engine) else None
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="medusa-trt-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                job._send(Finished(cancelled=True))
                return
            if self.metrics:
                self.metrics.waiting += 1
        self._jobs.put(job)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running and queued jobs and stop the thread (the engine stays open)."""
        self._end(Finished(cancelled=True), timeout)

    def fail(self, error: BaseException) -> None:
        """The engine is lost: end the running and queued jobs with ``error`` now, without waiting
        for the engine thread (it may be blocked in a collective until the ranks are killed)."""
        self._end(Finished(error=error), timeout=0)

    def busy(self) -> bool:
        return self._thread.is_alive() and self._current is not None

    def _end(self, event: Finished, timeout: float) -> None:
        with self._lock:
            self._closed = True
            current = self._current
            if current is not None:
                # answered now, not when the engine thread comes back from its step (it may be stuck on
                # a hung rank); what it sends later follows a Finished and is never read
                current.cancel()
                current._send(event)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                if self.metrics:
                    self.metrics.waiting -= 1
                job._send(event)
        self._jobs.put(None)
        if timeout > 0:
            self._thread.join(timeout)

    def _next_job(self) -> Job | None:
        """The next job; while none comes, ping the ranks every ping_s (a hung one stalls the ping)."""
        while True:
            try:
                return self._jobs.get(timeout=self.ping_s)
            except queue.Empty:
                with self._lock:
                    if self._closed:
                        continue
                try:
                    with self.clock.step():
                        self.engine.ping()
                except Exception:  # a dead rank: the watchdog reports it; keep serving the queue
                    continue

    def _loop(self) -> None:
        if self.threads is not None:  # an engine in this process: its steps run on this thread
            import torch

            torch.set_num_threads(self.threads)
            self.torch_threads = torch.get_num_threads()
        else:  # an engine process (serve.engine_process) says its own; else this process's setting
            self.torch_threads = getattr(self.engine, "torch_threads", 0) or _torch_threads()
        self.started.set()
        while True:
            job = self._next_job()
            if job is None:
                return
            with self._lock:
                if self.metrics:
                    self.metrics.waiting -= 1
                if job.cancelled.is_set() or self._closed:
                    job._send(Finished(cancelled=True))
                    continue
                self._current = job
                if self.metrics:
                    self.metrics.running = 1
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None
                    if self.metrics:
                        self.metrics.running = 0

    def _run(self, job: Job) -> None:
        try:
            with self.clock.step(first=True):  # the prefill: its own, longer timeout
                gen = self.engine.generate(job.prompt_ids, job.params, medusa=job.medusa)
                chunk = next(gen, None)
        except Exception as e:  # bad input the runtime caught: reported to the client, server goes on
            self._outcome("failed")
            job._send(Finished(error=e))
            return
        cancelled = exhausted = False
        try:
            while chunk is not None:
                job._send(chunk)
                if job.cancelled.is_set():
                    cancelled = True
                    break
                with self.clock.step():
                    chunk = next(gen, None)
            else:
                exhausted = True
        except Exception as e:
            self._outcome("failed")
            job._send(Finished(error=self._explain(e)))
            return
        finally:
            if not exhausted:
                _close_quietly(gen)  # free the engine's slot now, not at garbage collection
        self._outcome("cancelled" if cancelled else "finished")
        job._send(Finished(stats=None if cancelled else gen.stats, cancelled=cancelled))

    def _explain(self, e: Exception) -> BaseException:
        return rank_failure(self.engine, e, "the engine failed") if self.ping_s is not None else e

    def _outcome(self, kind: str) -> None:
        if self.metrics:
            self.metrics.outcome(kind)


def _has_processes(engine: ServedEngine) -> bool:
    """Whether part of the engine runs in processes of its own (tp ranks, an engine process: ``pid``): each
    can stop or hang apart from the server, so an idle engine is pinged through them."""
    return engine.tp > 1 or getattr(engine, "pid", None) is not None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _close_quietly(gen: Any) -> None:
    with contextlib.suppress(Exception):  # after a failure the original error is what the client hears
        gen.close()
