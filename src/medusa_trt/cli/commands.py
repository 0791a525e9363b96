"""Command registration. Each name is a thin module in medusa_trt.cli exposing `register(app)`.

Modules must stay import-light (typer, rich, pydantic, yaml): no torch/transformers at import time.
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: tuple[str, ...] = (
    # in the order `--help` lists them: the pipeline first, then the tools around it
    "demo",
    "convert",
    "build",
    "run",
    "bench",
    "plan",
    "profiles",
    "heads",
    "tree",
    "verify",
)


def register(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"medusa_trt.cli.{name}").register(app)
