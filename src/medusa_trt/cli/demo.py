"""`medusa-trt demo`: the embedded default, end to end on this machine, offline."""

from __future__ import annotations

from typing import Annotated

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console


def demo_cmd(
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir",
            envvar="MEDUSA_TRT_CACHE",
            help="Where the demo's model, heads and engine are kept (default: the user cache dir).",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Where the results JSON and plot go (default: <cache>/results); new, empty, or a demo's results.",
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Rebuild everything instead of reusing the cache.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Make a tiny Llama 3, train its Medusa heads, tune the tree, build, serve, bench with and without Medusa."""
    from medusa_trt.demo.pipeline import DemoConfig, run_demo

    result = run_demo(DemoConfig(), cache_dir=cache_dir, output_dir=output, fresh=fresh, log=err_console.print)
    if json_out:
        emit_json(result)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
