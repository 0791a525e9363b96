"""`medusa-trt build`: profile + model (+ heads) -> an engine directory with a manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from medusa_trt import engine_facts
from medusa_trt.cli._common import JsonOpt, ProfileOpt, emit_json, err_console

if TYPE_CHECKING:
    from medusa_trt.engines.recipe import BuildPlan


def build(
    profile: ProfileOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: a local HF directory or a hub repo id.")],
    medusa: Annotated[
        str | None,
        typer.Option(
            "--medusa",
            help="Medusa heads: a local directory or a hub repo id (not needed for a ModelOpt combined checkpoint).",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Engine directory (default: $MEDUSA_TRT_OUTPUT, else engines/<model>-<profile>); new, empty, "
            "or one medusa-trt built (never a foreign one, --force included).",
        ),
    ] = None,
    tree: Annotated[
        str | None,
        typer.Option("--tree", help="Override the profile's Medusa tree (a shipped name, a file, or a list literal)."),
    ] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision of --model.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan of steps; run nothing.")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Redo every step, even finished ones (removes only files medusa-trt wrote)."),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert and build an engine for a profile (resumes an interrupted build; --dry-run shows the steps)."""
    from medusa_trt.engines.build import execute, prepare, rich_status
    from medusa_trt.steps import StepStatus

    plan = prepare(profile, model, medusa=medusa, output=output, tree=tree, revision=revision)
    if dry_run:
        if json_out:
            emit_json({"dry_run": True, **plan.to_json()})
        else:
            _print_plan(plan)
        return
    _print_header(plan)
    manifest = execute(plan, force=force, progress=rich_status)
    for cmd in manifest["commands"]:
        mark = "[green]done[/]" if cmd["status"] == StepStatus.RAN.value else "[dim]skipped (up to date)[/]"
        err_console.print(f"  {cmd['step']:<14} {mark} {cmd['seconds']:.1f} s")
    out = plan.spec.output.resolve()
    err_console.print(f"[bold green]built[/] {out}  (serve it: medusa-trt run {out})")
    if json_out:
        emit_json({"dry_run": False, "output": str(out), "manifest": manifest})


def _print_header(plan: BuildPlan) -> None:
    s = plan.spec
    err_console.print(
        f"[bold]build[/] {s.model.given} -> {s.output} with profile {s.profile.name} "
        f"({s.profile.id}): {s.engine}, tp {s.tp}, {s.dtype}"
        f"{', fp8' if s.quantization == 'fp8' else ''}, {s.num_medusa_heads} heads, "
        + (f"a top-1 chain of {len(s.tree)}" if engine_facts.get(s.engine).chain else f"{len(s.tree)}-node tree")
    )


def _print_plan(plan: BuildPlan) -> None:
    import shlex

    from medusa_trt.steps import StepKind

    _print_header(plan)
    for note in plan.notes:
        err_console.print(f"  [dim]note:[/] {note}")
    for i, step in enumerate(plan.steps, 1):
        tag = " (run by `medusa-trt run`)" if step.kind is StepKind.SERVE else ""
        err_console.print(f"\n[bold]{i}. {step.name}[/]{tag}: {step.description}")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in step.env.items())
        cmd = (
            " ".join(step.argv)
            if step.kind is StepKind.PYTHON and not step.argv[0].startswith("medusa-trt")
            else shlex.join(step.argv)
        )
        err_console.print(f"   $ {env + ' ' if env else ''}{cmd}", soft_wrap=True)
        if step.outputs:
            err_console.print(f"   produces: {', '.join(step.outputs)}")
        if step.needs:
            err_console.print("   needs: " + ", ".join(f"{k}={v}" for k, v in step.needs.items()))


def register(app: typer.Typer) -> None:
    app.command("build")(build)
