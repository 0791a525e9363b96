"""`medusa-trt plan`: preflight checks and predicted speed for a profile + model (exit 4 if it does not fit)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medusa_trt.cli._common import JsonOpt, ProfileOpt, emit_json, err_console

if TYPE_CHECKING:
    from medusa_trt.plan import PreflightReport

_COLOR = {"pass": "green", "estimate": "cyan", "warn": "yellow", "fail": "red"}


def _render(report: PreflightReport) -> None:
    from rich.table import Table

    d = report.to_dict()
    err_console.print(
        f"[bold]plan[/] {d['model']['name']} on {d['profile']['name']} (id {d['profile']['id']}, "
        f"{d['profile']['engine']}), {d['num_medusa_heads']} Medusa heads, "
        + (
            f"a top-1 chain of {d['tree']['depth']} (vLLM drafts one token per head)"
            if d["tree"].get("drafting") == "chain"
            else f"tree {d['tree']['spec']} ({d['tree']['nodes']} nodes, depth {d['tree']['depth']})"
        )
    )
    mem = Table(title="memory per device (GiB)", title_justify="left")
    mem.add_column("component")
    mem.add_column("GiB", justify="right")
    for k, v in d["memory_gib"].items():
        mem.add_row(k, f"{v:.2f}", style="bold" if k in ("total", "available") else None)
    err_console.print(mem)
    checks = Table(title="checks", title_justify="left")
    for col in ("check", "verdict", "reason"):
        checks.add_column(col, overflow="fold")
    for c in d["checks"]:
        checks.add_row(c["name"], f"[{_COLOR[c['verdict']]}]{c['verdict']}[/]", c["reason"])
    err_console.print(checks)
    p = d["prediction"]
    pred = Table(title=f"prediction (batch 1, context {p['context_len']} tokens)", title_justify="left")
    for col in ("", "verify tokens", "step ms", "tokens/step", "tokens/s/user"):
        pred.add_column(col, justify="right")
    for k in ("baseline", "medusa"):
        s = p[k]
        pred.add_row(
            k,
            str(s["verify_tokens"]),
            f"{s['step_ms']:.2f}",
            f"{s['tokens_per_step']:.2f}",
            f"{s['tokens_per_s_per_user']:.1f}",
        )
    err_console.print(pred)
    err_console.print(f"speedup {p['speedup']:.2f}x; tokens/step: {p['tokens_per_step_source']}")
    verdict = "[green]fits[/]" if d["fits"] else "[red]does not fit[/]"
    err_console.print(f"result: {verdict}")


def plan(
    profile: ProfileOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset (llama-3.1-70b, ...) or a local HF dir.")],
    num_medusa_heads: Annotated[
        int | None, typer.Option("--num-medusa-heads", min=1, help="Heads in the checkpoint (default: the profile's).")
    ] = None,
    medusa: Annotated[
        str | None,
        typer.Option("--medusa", help="Medusa heads (a local dir): their tensors give the head count, as in build."),
    ] = None,
    tokens_per_step: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-step",
            min=1.0,
            help="Expected tokens per Medusa step (measured by bench); "
            "default: a documented estimate from the tree depth.",
        ),
    ] = None,
    accuracy: Annotated[
        Path | None,
        typer.Option(
            "--accuracy",
            help="A head-accuracy table (`medusa-trt tree accuracy`, or heads train's accuracy.csv): "
            "tokens/step predicted for the profile's tree, or vLLM's top-1 chain.",
        ),
    ] = None,
    context_len: Annotated[
        int, typer.Option("--context-len", min=0, help="Tokens in the KV cache for the prediction.")
    ] = 1024,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="Where checkpoints and engine will be written (disk check; default: current directory)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Preflight: memory per GPU, TP divisibility, the Medusa tree, disk, predicted tokens/s/user."""
    from medusa_trt.plan import preflight_report

    if medusa is not None:
        num_medusa_heads = _heads_in(medusa, num_medusa_heads)
    table = None
    if accuracy is not None:
        from medusa_trt.errors import InvalidInputError
        from medusa_trt.medusa.tree_builder import parse_accuracy_csv

        if tokens_per_step is not None:
            raise InvalidInputError("--accuracy and --tokens-per-step exclude each other", hint="Give one.")
        try:
            table = parse_accuracy_csv(accuracy.read_text(), str(accuracy))
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"--accuracy {accuracy}: cannot read ({e.__class__.__name__})") from None
    report = preflight_report(
        profile,
        model,
        num_medusa_heads=num_medusa_heads,
        accuracy=table,
        tokens_per_step=tokens_per_step,
        context_len=context_len,
        work_dir=work_dir,
    )
    if json_out:
        emit_json(report.to_dict())
    else:
        _render(report)
    report.raise_if_not_fits()


def _heads_in(medusa: str, given: int | None) -> int | None:
    """The heads' own count (from their tensors), which --num-medusa-heads may not contradict."""
    from medusa_trt.engines.spec import detect_heads
    from medusa_trt.errors import InvalidInputError

    counted = detect_heads(medusa)[1]
    if given is not None and counted is not None and given != counted:
        raise InvalidInputError(
            f"--num-medusa-heads {given}, but the heads in {medusa} hold {counted}",
            hint="Drop --num-medusa-heads: the heads' tensors decide.",
        )
    return counted if counted is not None else given


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
