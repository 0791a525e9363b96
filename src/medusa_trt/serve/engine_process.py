"""The server's engine in a process of its own, driven over a pipe: ``EngineProcess``.

Inside the server's process every torch op of a step gives up and takes back the GIL, so the event
loop's work for each streamed chunk (a few hundred microseconds of Python: SSE frame, HTTP write) held
the engine up too. In a process of its own the engine steps on while the server streams the chunk
before, on another core (vLLM's V1 engine core runs apart from its API server for the same reason).

The child loads the engine (``runtime.load_engine``) and answers one request at a time:
``("generate", ids, params, medusa)`` is answered by ``("chunk", Chunk)`` per step, as fast as the
engine makes them, then ``("end", stats, tree_choices)`` or ``("error", exception, tree_choices)``;
between steps it looks for ``("cancel",)``. ``("ping",)`` and ``("stop",)`` round out the protocol.
Only the server's engine thread (``serve.worker``) talks on the pipe; the watchdog reads liveness
without it: the child's exit code, and a second pipe on which the child's monitor sends its tp ranks'
failures.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medusa_trt.errors import (
    CheckpointError,
    EngineFailedError,
    InvalidInputError,
    MedusaTrtError,
    MissingDependencyError,
)
from medusa_trt.runtime.api import exit_text
from medusa_trt.runtime.types import Chunk, GenerationStats, SamplingParams

STOP_WAIT_S = 5.0  # how long close() waits for the child to close its engine before killing it
MONITOR_S = 0.1  # how often the child looks at its tp ranks (the server's watchdog polls as often)


class EngineProcess:
    """A ``ReferenceEngine`` loaded in a spawned process; what the server uses of one, over a pipe.

    One caller thread drives it (``generate``, ``ping``, ``close``); ``rank_failures`` and ``abort`` may
    be called from any thread. ``tokenizer`` is the child's, sent over once loaded: the server detokenizes."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        tree: str | list[list[int]] | None = None,
        adapt: bool | None = None,
        threads: int | None = None,
    ) -> None:
        import multiprocessing as mp

        from medusa_trt.runtime.api import load_tokenizer
        from medusa_trt.runtime.config import checkpoint_dir

        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        # the child's tp rank failures come on a pipe of their own: the watchdog reads it, not the engine thread
        self._fault_conn, child_faults = ctx.Pipe(duplex=False)
        self._faults: list[str] = []
        self._faults_lock = threading.Lock()
        args = (child_conn, str(path), device, tree, adapt, threads, child_faults, os.getpid())
        # not a daemon: a daemonic process may not start the tp ranks
        self._proc = ctx.Process(target=_child_main, args=args, name="medusa-trt-engine")
        with _sigint_ignored():  # inherited: the child starts ignoring Ctrl-C, as it goes on to (``_child_main``)
            self._proc.start()
        child_conn.close()
        child_faults.close()
        self._closed = False
        self._rank_pids: list[int] = []
        try:
            _preload_tokenizer_classes()  # while the child loads: what unpickling its tokenizer imports
            facts = self._ready()
            # the child's tokenizer, as it loaded it (the server detokenizes); loaded here only if it did
            # not pickle: AutoTokenizer imports torch and the model classes, seconds the server never needs
            tokenizer = _unpickled(facts["tokenizer"])
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(checkpoint_dir(path), Path(path))
            self.model_name, self.max_seq_len, self.tp = facts["model_name"], facts["max_seq_len"], facts["tp"]
            self.has_medusa, self.num_medusa_heads = facts["has_medusa"], facts["num_medusa_heads"]
            self.tree, self.torch_threads = facts["tree"], facts["torch_threads"]
            self._rank_pids = facts["rank_pids"]
        except BaseException:
            self._kill()
            raise
        self._tree_choices: dict[str, int] = facts["tree_choices"]
        self._busy = False

    @property
    def pid(self) -> int | None:
        """The engine process's id."""
        return self._proc.pid

    def _ready(self) -> dict[str, Any]:
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(STOP_WAIT_S)
            raise CheckpointError(
                f"the engine process {exit_text(self._proc.exitcode)} while loading",
                hint="SIGKILL usually means the machine ran out of memory (see `dmesg`); rerun with --debug.",
            ) from None
        if kind == "error":
            raise payload
        facts: dict[str, Any] = payload
        return facts

    def generate(self, prompt_ids: list[int], params: SamplingParams, medusa: bool = True) -> RemoteGeneration:
        if self._busy:
            raise InvalidInputError(
                "the engine is busy with another generation", hint="Exhaust or close() the previous Generation first."
            )
        self._send(("generate", list(prompt_ids), params, medusa))
        self._busy = True
        return RemoteGeneration(self)

    def tree_choices(self) -> dict[str, int]:
        """Draft nodes adaptive speculation uses now, per regime, as of the last generation's end."""
        return dict(self._tree_choices)

    def ping(self) -> None:
        """A round trip through the child and its ranks; blocks while one of them is stopped or hung."""
        self._send(("ping",))
        message = self._recv()
        if message[0] == "error":
            raise message[1]

    def rank_failures(self) -> list[str]:
        """One line per failed part: the tp ranks the child saw die, then the child itself if it exited."""
        with self._faults_lock:
            if not self._closed:
                with contextlib.suppress(EOFError, OSError):  # EOF: the child is gone (its exit code says how)
                    while self._fault_conn.poll():
                        self._faults.extend(self._fault_conn.recv())
            lines = list(self._faults)
        code = self._proc.exitcode
        if code is not None and not self._closed:
            lines.append(f"the engine process {exit_text(code)}")
        return lines

    def abort(self) -> None:
        """Kill the child and its tp ranks now (a stopped rank cannot see its parent go)."""
        self._kill()

    def close(self) -> None:
        """Ask the child to close its engine and exit; kill it if it does not within STOP_WAIT_S."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._conn.send(("stop",))
        self._proc.join(STOP_WAIT_S)
        if self._proc.exitcode == 0:  # it closed its engine: the ranks are stopped and reaped
            self._rank_pids = []
        self._kill()
        self._conn.close()
        with self._faults_lock:
            self._fault_conn.close()

    def _kill(self) -> None:
        # the ranks too, once: a stopped rank cannot see its parent go (pids are not reused within seconds)
        pids, self._rank_pids = self._rank_pids, []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self._proc.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                self._proc.kill()
            self._proc.join(STOP_WAIT_S)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            raise self._lost() from None

    def _recv(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError, ValueError):
            raise self._lost() from None
        return message

    def _lost(self) -> EngineFailedError:
        self._proc.join(1.0)  # the pipe closes a moment before the exit code is there to read
        return EngineFailedError(
            f"the engine process {exit_text(self._proc.exitcode)}",
            hint="Check the machine's memory (the OOM killer) and the server's log.",
        )

    def _finished(self, tree_choices: dict[str, int] | None) -> None:
        self._busy = False
        if tree_choices is not None:
            self._tree_choices = tree_choices

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteGeneration:
    """The chunks of one generation as the child sends them; ``stats`` once exhausted, ``close()`` cancels."""

    def __init__(self, engine: EngineProcess) -> None:
        self._engine = engine
        self._done = False
        self.stats: GenerationStats | None = None

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        if self._done:
            raise StopIteration
        try:
            message = self._engine._recv()
        except BaseException:
            self._end(None)
            raise
        if message[0] == "chunk":
            chunk: Chunk = message[1]
            return chunk
        self._end(message[2])  # "end" or "error": (kind, stats or error, tree choices)
        if message[0] == "error":
            raise message[1]
        self.stats = message[1]
        raise StopIteration

    def close(self) -> None:
        """Cancel: the child stops after the step in flight; its remaining messages are read and dropped,
        so the pipe is clean for the next generation."""
        if self._done:
            return
        self._engine._send(("cancel",))
        while not self._done:
            message = self._engine._recv()
            if message[0] in ("end", "error"):
                self._end(message[2])

    def _end(self, tree_choices: dict[str, int] | None) -> None:
        self._done = True
        self._engine._finished(tree_choices)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (main thread only): a process started meanwhile inherits that, and
    Python then installs no KeyboardInterrupt handler in it, so a Ctrl-C during its start prints nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the child ---------------------------------------------------------------------------------------
def _child_main(
    conn: Any,
    path: str,
    device: str,
    tree: str | list[list[int]] | None,
    adapt: bool | None,
    threads: int | None,
    faults: Any,
    parent: int,
) -> None:
    from medusa_trt.runtime.exiting import end_process
    from medusa_trt.runtime.tp import watch_parent

    # Ctrl-C (and systemd's SIGTERM) reach the whole process group: the server decides when the engine
    # stops (it sends "stop", or kills it), so a signal never fails the streams it is still ending
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch_parent(parent)  # a killed server leaves no engine behind
    engine = _load(conn, path, device, tree, adapt, threads)
    if engine is None:
        end_process(0)
    if engine.tp > 1:
        _monitor(engine, faults)
    try:
        _serve(conn, engine)
    finally:
        with contextlib.suppress(Exception):
            engine.close()
        end_process(0)  # a process that ran torch.distributed ends without finalization (runtime.exiting)


def _load(
    conn: Any, path: str, device: str, tree: str | list[list[int]] | None, adapt: bool | None, threads: int | None
) -> Any:
    import torch

    from medusa_trt.runtime import load_engine
    from medusa_trt.serve.worker import engine_threads

    try:
        engine = load_engine(Path(path), device=device, tree=tree, adapt=adapt)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        count = threads if threads is not None else engine_threads(engine.tp, cores, torch.get_num_threads())
        if count is not None:
            torch.set_num_threads(count)
    except BaseException as e:
        conn.send(("error", _portable(e)))
        return None
    facts = {
        "model_name": engine.model_name,
        "max_seq_len": engine.max_seq_len,
        "has_medusa": engine.has_medusa,
        "num_medusa_heads": engine.num_medusa_heads,
        "tree": engine.tree,
        "tp": engine.tp,
        "torch_threads": torch.get_num_threads(),
        "tree_choices": engine.tree_choices(),
        "rank_pids": engine.rank_pids(),
        "tokenizer": _pickled(engine.tokenizer),
    }
    conn.send(("ready", facts))
    return engine


def _serve(conn: Any, engine: Any) -> None:
    while True:
        try:
            kind, *args = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if kind == "stop":
            return
        if kind == "generate":
            if _generate(conn, engine, *args):
                return
        elif kind == "ping":
            try:
                engine.ping()
                conn.send(("pong", None))
            except Exception as e:
                conn.send(("error", _portable(e)))
        # a "cancel" that crossed the generation's end on the pipe: nothing left to cancel


def _generate(conn: Any, engine: Any, ids: list[int], params: SamplingParams, medusa: bool) -> bool:
    """One generation's messages; True when the server asked to stop meanwhile."""
    gen = None
    try:
        gen = engine.generate(ids, params, medusa=medusa)
        for chunk in gen:
            conn.send(("chunk", chunk))
            if conn.poll():  # a select() per step: microseconds
                kind = conn.recv()[0]  # "cancel" or "stop": either ends this generation now
                gen.close()
                conn.send(("end", None, engine.tree_choices()))
                return kind == "stop"
    except Exception as e:
        if gen is not None:
            with contextlib.suppress(Exception):
                gen.close()
        conn.send(("error", _portable(e), engine.tree_choices()))
        return False
    conn.send(("end", gen.stats, engine.tree_choices()))
    return False


def _monitor(engine: Any, faults: Any) -> None:
    """Send the tp ranks' failures to the server as soon as one shows (its watchdog reads them)."""

    def watch() -> None:
        import time

        while True:
            lines = engine.rank_failures()
            if lines:
                faults.send(lines)
                return
            time.sleep(MONITOR_S)

    threading.Thread(target=watch, daemon=True, name="medusa-trt-rank-monitor").start()


def _pickled(tokenizer: Any) -> bytes | None:
    """The tokenizer as bytes for the server; None when there is none or it does not pickle."""
    if tokenizer is None:
        return None
    try:
        return pickle.dumps(tokenizer)
    except Exception:  # a tokenizer class holding something unpicklable: the server loads its own
        return None


def _unpickled(blob: bytes | None) -> Any:
    """The child's tokenizer, or None (none sent, or it does not unpickle here: the server loads its own)."""
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None


def _preload_tokenizer_classes() -> None:
    with contextlib.suppress(ImportError):
        from transformers import PreTrainedTokenizerFast  # noqa: F401


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else the nearest of our error classes with its message and hint
    (an error's own constructor may take other arguments; a torch error may not pickle at all)."""
    with contextlib.suppress(Exception):
        back: BaseException = pickle.loads(pickle.dumps(e))
        return back
    hint = getattr(e, "hint", None)
    for cls in (EngineFailedError, CheckpointError, InvalidInputError, MissingDependencyError, MedusaTrtError):
        if isinstance(e, cls):
            return cls(str(e), hint=hint)
    if isinstance(e, ValueError):
        return ValueError(str(e))
    return RuntimeError(f"{type(e).__name__}: {e}")
