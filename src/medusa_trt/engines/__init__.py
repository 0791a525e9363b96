"""The engines: one module (or package) per engine, each exposing ``ENGINE`` (``engines.base.Engine``).

``get(name)`` is the only dispatch on an engine's name; adding an engine is a module here and its row
in ``medusa_trt.engine_facts``. Kept import-light: an engine's module is imported when first asked for, and imports
torch, transformers or its own toolkit only inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from medusa_trt import engine_facts
from medusa_trt.errors import InvalidInputError

if TYPE_CHECKING:
    from medusa_trt.engines.base import Engine

# name (the profile's `engine:`, the manifest's "engine") -> the module holding its ENGINE
ENGINES = {name: f"{__name__}.{name}" for name in engine_facts.names()}


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def get(name: str) -> Engine:
    """The engine called ``name``; exit 2 for a name no engine has (a hand-edited manifest)."""
    module = ENGINES.get(name)
    if module is None:
        raise InvalidInputError(
            f"unknown engine '{name}'", hint=f"medusa-trt knows these engines: {', '.join(ENGINES)}."
        )
    return cast("Engine", importlib.import_module(module).ENGINE)
