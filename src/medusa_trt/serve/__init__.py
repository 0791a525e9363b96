"""The OpenAI-compatible reference server over `medusa_trt.runtime` (FastAPI + uvicorn).

Import-light: ``create_app`` (`serve.app`) and ``run_server`` (`serve.server`) load on first use,
with fastapi, uvicorn and torch, not when the package is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medusa_trt.serve.app import create_app
    from medusa_trt.serve.server import run_server

_LAZY = {"create_app": "medusa_trt.serve.app", "run_server": "medusa_trt.serve.server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_app", "run_server"]
