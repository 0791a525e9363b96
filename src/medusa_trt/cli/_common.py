"""Shared CLI pieces: the stderr console, JSON output, option aliases."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

# Human output and progress go to stderr; stdout carries only the --json document.
err_console = Console(stderr=True, highlight=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        "-p",
        envvar="MEDUSA_TRT_PROFILE",
        help="Profile name (see `medusa-trt profiles list`) or a YAML file path.",
    ),
]


def emit_json(doc: Any) -> None:
    """Write one JSON document to stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()
