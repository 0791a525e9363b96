"""One engine, one generation at a time: a dedicated thread drains a FIFO of jobs.

The engine is not thread-safe and its steps are blocking torch calls, so it lives on its own thread;
the event loop stays free for `/health`, `/metrics` and queued clients. Each job sends its chunks
back to the loop through an asyncio.Queue. Cancelling a job (client gone, stop string seen, server
shutting down) makes the thread close the Generation after the step in flight, freeing the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from medusa_trt.serve.metrics import Metrics


@dataclass
class Finished:
    """The last event of a job: the engine's stats (None when cut short) or the error it raised."""

    stats: Any = None
    error: BaseException | None = None
    cancelled: bool = False


@dataclass
class Job:
    prompt_ids: list[int]
    params: Any  # medusa_trt.runtime.SamplingParams
    medusa: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def _send(self, event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class EngineWorker:
    """Runs jobs on the engine one after another, on one thread."""

    def __init__(self, engine: Any, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
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
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._current.cancel()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                if self.metrics:
                    self.metrics.waiting -= 1
                job._send(Finished(cancelled=True))
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
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
            gen = self.engine.generate(job.prompt_ids, job.params, medusa=job.medusa)
        except Exception as e:  # bad input the runtime caught: reported to the client, server goes on
            self._outcome("failed")
            job._send(Finished(error=e))
            return
        cancelled = exhausted = False
        try:
            for chunk in gen:
                job._send(chunk)
                if job.cancelled.is_set():
                    cancelled = True
                    break
            else:
                exhausted = True
        except Exception as e:
            self._outcome("failed")
            job._send(Finished(error=e))
            return
        finally:
            if not exhausted:
                _close_quietly(gen)  # free the engine's slot now, not at garbage collection
        self._outcome("cancelled" if cancelled else "finished")
        job._send(Finished(stats=None if cancelled else gen.stats, cancelled=cancelled))

    def _outcome(self, kind: str) -> None:
        if self.metrics:
            self.metrics.outcome(kind)


def _close_quietly(gen: Any) -> None:
    with contextlib.suppress(Exception):  # after a failure the original error is what the client hears
        gen.close()
