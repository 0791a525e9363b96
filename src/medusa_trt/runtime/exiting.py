"""How a process that ran torch.distributed ends: without interpreter finalization.

A gloo collective returns to Python before gloo's worker thread (``pt_gloo_runloop``) has dropped
its references to the collective's tensors, and dropping a reference to a tensor that has a Python
object takes the GIL (torch's ``intrusive_ptr`` releases the PyObject then). If the main thread has
begun interpreter finalization by that moment, CPython 3.11-3.13 end that thread with
``pthread_exit``; its forced unwind reaches a ``noexcept`` destructor and the C++ runtime aborts the
process ("terminate called without an active exception", SIGABRT) instead of exiting with our code.
See https://github.com/pytorch/pytorch/issues/38228 and https://github.com/python/cpython/issues/87135
(Python 3.14 parks such threads instead). After a rank was killed, `run --prompt` reached
finalization milliseconds after its last (failed) collective and aborted in 2 of 75 runs on a busy
2-core machine; a core dump showed gloo's thread in that release and the main thread finalizing.

So once a process group exists, the CLI (and every spawned rank) ends with ``os._exit`` after
flushing its output: no thread is asked to exit. What finalization would have done is done already:
files are published by rename, the ranks are killed and reaped by ``Runner.close`` (and watch their
parent), and the CLI registers no atexit handler.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import NoReturn

GENERATE_THREAD = "medusa-trt-generate"  # the thread run_guarded drives an engine from
_reasons: list[str] = []


def forbid_finalization(reason: str) -> None:
    """Record that this process must end through :func:`end_process` (``reason`` is for debugging)."""
    _reasons.append(reason)


def skip_finalization() -> bool:
    """Whether this process must end without interpreter finalization: it started a torch.distributed
    process group, a signal made a guarded generation kill its ranks mid-collective, or a guarded
    generation's thread is still inside the engine (a daemon thread in torch code meets the same abort)."""
    return bool(_reasons) or any(t.name == GENERATE_THREAD and t.is_alive() for t in threading.enumerate())


def end_process(code: int) -> NoReturn:
    """Flush stdout and stderr, then end the process with ``code`` at once (``os._exit``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing can reach it
            stream.flush()
    os._exit(code)
