"""The OpenAI-compatible reference server over `medusa_trt.runtime` (FastAPI + uvicorn).

Import-light: fastapi, uvicorn and torch load only when a function here is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt.serve.guard import ServeGuard

if TYPE_CHECKING:
    from fastapi import FastAPI


def run_server(
    engine_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    model_name: str | None = None,
    tree: str | list[list[int]] | None = None,
    guard: ServeGuard | None = None,
) -> int:
    """Serve an engine directory until SIGINT/SIGTERM; returns the exit code (128+signal after one,
    1 after a tp rank died or hung)."""
    from medusa_trt.serve.server import run_server as _run

    return _run(engine_dir, host=host, port=port, device=device, model_name=model_name, tree=tree, guard=guard)


def create_app(engine: Any, model_name: str | None = None, guard: ServeGuard | None = None) -> FastAPI:
    """The FastAPI app over a loaded engine (the caller closes the engine)."""
    from medusa_trt.serve.app import create_app as _create

    return _create(engine, model_name, guard)


__all__ = ["ServeGuard", "create_app", "run_server"]
