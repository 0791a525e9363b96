"""Loopback servers for tests: the minimal OpenAI-style streaming server (``medusa_trt.bench.loopback``,
which benchmarks/bench_client.py measures the client against), and our real FastAPI app in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medusa_trt.bench.loopback import LoopbackOptions, LoopbackServer, loopback_server, serve_forever
from tests.helpers import HANG_S

__all__ = ["LoopbackOptions", "LoopbackServer", "app_in_thread", "engine_in_thread", "loopback_server", "serve_forever"]


@contextmanager
def app_in_thread(app: object, start_timeout_s: float = HANG_S) -> Iterator[str]:
    """Serve an ASGI app (our real FastAPI server) with uvicorn on a free loopback port, in a thread."""
    import time

    import uvicorn

    from medusa_trt.serve.server import _bind

    sock = _bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))  # type: ignore[arg-type]
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def engine_in_thread(
    engine_dir: str | Path, model_name: str | None = None, start_timeout_s: float = 60
) -> Iterator[str]:
    """A reference engine loaded from ``engine_dir`` behind our real app (``app_in_thread``); closed after."""
    from medusa_trt.runtime import load_engine
    from medusa_trt.serve import create_app

    with load_engine(engine_dir) as engine, app_in_thread(create_app(engine, model_name), start_timeout_s) as url:
        yield url
