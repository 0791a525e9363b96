"""Command registration. Each name is a thin module in medusa_trt.cli exposing `register(app)`.

Modules must stay import-light (typer, rich, pydantic, yaml): no torch/transformers at import time.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: tuple[str, ...] = (
    # one entry per command module, in the order `--help` lists them
    "profiles", "plan",
    "heads", "tree", "demo", "bench", "build", "convert", "run",
)


def register(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"medusa_trt.cli.{name}").register(app)
