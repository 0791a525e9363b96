"""`run_server`: load a reference engine, serve it with uvicorn, stop cleanly on SIGINT/SIGTERM.

Exit contract (the same as the TensorRT-LLM path of `medusa-trt run`, which forwards the signal to
trtllm-serve and exits 128+signal): 128+signum after a signal (130 for Ctrl-C, 143 for SIGTERM),
0 if the server stopped on its own. On a signal the running and queued generations are cancelled
(streams end with finish_reason "abort"), connections get a short grace period, and the engine is
closed, which stops its tensor-parallel worker processes.

Faults: when a tp rank dies or a step outlives its timeout, the app's watchdog fails the requests,
kills the ranks and this module stops the server FAULT_EXIT_S later with exit code 1, so that
systemd, Kubernetes or Slurm restart it. A signal always ends the process within HARD_EXIT_S:
ranks still busy after KILL_AFTER_S (hung in a collective) are SIGKILLed, and if the shutdown is
still stuck at HARD_EXIT_S the process exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from medusa_trt.errors import EXIT_FAILURE
from medusa_trt.serve.guard import ServeGuard, exposure_warning

if TYPE_CHECKING:
    from medusa_trt.serve.engine_process import EngineProcess

GRACE_S = 2  # how long open connections may finish after a signal before they are cut
FAULT_EXIT_S = 1.0  # after a fault, /health answers 503 this long before the port closes
KILL_AFTER_S = 3.0  # after a signal, ranks still in a step by then are killed
HARD_EXIT_S = 9.0  # after a signal or fault, the process ends by then whatever else is stuck
logger = logging.getLogger(__name__)
Announce = Callable[[str], None]  # where the status lines go (the CLI prints them)


def run_server(
    engine_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    model_name: str | None = None,
    tree: str | list[list[int]] | None = None,
    adapt: bool | None = None,
    guard: ServeGuard | None = None,
    announce: Announce | None = None,
    loop: str = "auto",
    http: str = "auto",
) -> int:
    """Serve ``engine_dir`` (an engine or converted checkpoint directory) until SIGINT/SIGTERM.

    ``announce`` gets the status lines: loading, ``serving MODEL at http://HOST:PORT`` once the port
    accepts connections (port 0 picks a free port; the line shows which), stopped. Without it they
    are logged (info). Faults are logged as errors. Returns the exit code (see module doc).

    ``loop`` and ``http`` are uvicorn's settings: "auto" takes uvloop and httptools where they are
    installed (the defaults' dependencies, uvloop not on Windows), else asyncio's loop and h11.
    """
    from medusa_trt.serve.engine_process import EngineProcess

    say = announce or logger.info
    guard = guard or ServeGuard()
    sock = _bind(host, port)  # first: a busy port fails in a second, not after the engine loaded
    if (warning := exposure_warning(host, guard.api_key)) is not None:
        logger.warning(warning)
    try:
        got: list[int] = []
        with _signals_as_interrupt(got):  # a signal during the (long) engine load still exits cleanly
            try:
                say(f"loading {engine_dir} on {device} ...")
                engine = EngineProcess(Path(engine_dir), device=device, tree=tree, adapt=adapt)
            except KeyboardInterrupt:
                return 128 + (got[0] if got else signal.SIGINT)
        try:
            return _serve(engine, sock, model_name, guard, say, uvicorn_options={"loop": loop, "http": http})
        finally:
            engine.close()
    finally:
        sock.close()


def _serve(
    engine: EngineProcess,
    sock: socket.socket,
    model_name: str | None,
    guard: ServeGuard,
    say: Announce,
    uvicorn_options: dict[str, str],
) -> int:
    from medusa_trt.serve.app import create_app

    holder: list[_Server] = []
    faults: list[str] = []

    def on_fault(reason: str) -> None:  # the watchdog's thread
        faults.append(reason)
        logger.error("%s; exiting with %d", reason, EXIT_FAILURE)
        _hard_exit_after(HARD_EXIT_S, EXIT_FAILURE, engine)
        _later(FAULT_EXIT_S, lambda: holder[0].stop_for_fault())

    logger.info("engine process: %d torch thread(s)", engine.torch_threads)
    app = create_app(engine, model_name, guard, on_fault)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACE_S,
        lifespan="on",
        **uvicorn_options,  # type: ignore[arg-type]  # uvicorn's Literal names, checked by uvicorn
    )
    name = app.state.model_name
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{_url_host(bound_host)}:{bound_port}"
    worker = app.state.worker

    def on_signal(sig: int) -> None:  # off the signal handler: closing joins the engine thread
        _hard_exit_after(HARD_EXIT_S, 128 + sig, engine)

        def kill_if_busy() -> None:
            if worker.busy():
                engine.abort()

        _later(KILL_AFTER_S, kill_if_busy)
        worker.close()

    server = _Server(
        config,
        on_signal=on_signal,
        on_started=lambda: say(f"serving {name} at {url} (OpenAI API under {url}/v1; Ctrl-C to stop)"),
    )
    holder.append(server)
    try:
        server.run(sockets=[sock])  # on the loop config.loop names (uvicorn's loop factory)
    finally:
        app.state.watchdog.stop()
        worker.close(timeout=2)
        if worker.busy():  # still inside a step after the grace: a hung rank; close() would wait on it
            engine.abort()
    if server.signals:
        say(f"stopped ({signal.Signals(server.signals[0]).name})")
        return 128 + server.signals[0]
    if faults:
        return EXIT_FAILURE
    return 0


def _hard_exit_after(seconds: float, code: int, engine: EngineProcess) -> None:
    """The last resort: kill the ranks and end the process if the orderly shutdown is still stuck."""

    def fire() -> None:
        logger.error("shutdown did not finish within %g s; exiting now", seconds)
        with contextlib.suppress(Exception):
            engine.abort()
        os._exit(code)

    _later(seconds, fire)


def _later(seconds: float, fn: Callable[[], object]) -> None:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True  # a process that ended in time does not wait for it
    timer.start()


class _Server(uvicorn.Server):
    """uvicorn.Server that records the signal instead of re-raising it at exit, and cancels generations."""

    def __init__(
        self, config: uvicorn.Config, on_signal: Callable[[int], None], on_started: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self.signals: list[int] = []
        self._on_signal = on_signal
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        loop, http = type(asyncio.get_running_loop()), self.config.http_protocol_class
        logger.info("event loop %s.%s, HTTP %s", loop.__module__, loop.__qualname__, getattr(http, "__name__", http))
        if self.started:  # no await since the socket began listening: this line precedes any response
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # a second signal: stop waiting for connections
            self.force_exit = True
            return
        self.signals.append(sig)
        self.should_exit = True
        # end running streams now (their generations would run on to max_tokens); off the signal
        # handler because closing joins the engine thread
        threading.Thread(target=self._on_signal, args=(sig,), daemon=True).start()

    def stop_for_fault(self) -> None:
        """Shut down after a fault (no signal recorded: the exit code says failure)."""
        self.should_exit = True


@contextlib.contextmanager
def _signals_as_interrupt(got: list[int]) -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt) inside the block; ``got`` records which."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(sig: int, frame: FrameType | None) -> None:
        got.append(sig)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _bind(host: str, port: int) -> socket.socket:
    from medusa_trt.errors import InvalidInputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP
    # (asyncio.base_events._set_nodelay), and accepted sockets inherit the listener's. Without it a
    # response's headers and body are two writes, and on a kept-alive connection the body waits for the
    # client's delayed ACK (about 40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InvalidInputError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="pick another --port (0 picks a free one) or stop what uses it",
        ) from e
    # no listen() yet: asyncio listens once the app is ready, so clients get "connection refused"
    # (not a hang) while the engine loads
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
