"""`medusa-trt profiles list|show`: the shipped and user hardware profiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console

if TYPE_CHECKING:
    from medusa_trt.config.profile import HardwareProfile


def _summary(p: HardwareProfile) -> dict[str, Any]:
    hw = p.hardware
    return {
        "name": p.name,
        "id": p.id,
        "path": str(p.source) if p.source else None,
        "engine": p.engine,
        "device": hw.device,
        "gpu": hw.gpu,
        "count": hw.count,
        "memory_gib": hw.memory_gib,
        "tp": p.parallelism.tp,
        "dtype": p.precision.dtype,
        "quantization": p.precision.quantization,
        "kv_cache_dtype": p.precision.kv_dtype,
        "description": p.description,
    }


def list_profiles_cmd(json_out: JsonOpt = False) -> None:
    """List the profiles and whether this machine can run each."""
    from rich.table import Table

    from medusa_trt.config.profile import list_profiles, profile_dirs
    from medusa_trt.plan.hw import can_run, detect_gpus

    gpus = detect_gpus()
    rows = []
    for p in list_profiles():
        ok, why = can_run(p, gpus)
        rows.append(dict(_summary(p), runnable=ok, reason=why))
    if json_out:
        emit_json(
            {
                "gpus": [{"index": g.index, "name": g.name, "memory_gib": round(g.memory_gib, 1)} for g in gpus],
                "profile_dirs": [str(d) for d in profile_dirs()],
                "profiles": rows,
            }
        )
        return
    table = Table(title="hardware profiles", title_justify="left")
    for col in ("name", "engine", "hardware", "tp", "precision", "here"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        hw = f"{r['count']}x {r['gpu']}" if r["device"] == "cuda" else f"{r['count']}x cpu"
        prec = r["dtype"] + (f"+{r['quantization']}" if r["quantization"] != "none" else "")
        here = "[green]yes[/]" if r["runnable"] else "[red]no[/]"
        table.add_row(r["name"], r["engine"], hw, str(r["tp"]), prec, here)
    err_console.print(table)
    # the reasons go below the table: long sentences in a column are unreadable on an 80-column terminal
    for r in rows:
        err_console.print(f"  {r['name']}: {r['reason']}", soft_wrap=True, markup=False)
    found = ", ".join(g.name for g in gpus) or "none"
    err_console.print(f"GPUs here: {found}. Profile directories: {', '.join(str(d) for d in profile_dirs())}")


def show(
    name: Annotated[str, typer.Argument(help="Profile name or YAML file path.")], json_out: JsonOpt = False
) -> None:
    """Show one profile, validated and normalised (named tree resolved)."""
    import yaml

    from medusa_trt.config.profile import load_profile
    from medusa_trt.medusa.trees import tree_stats

    p = load_profile(name)
    doc = p.model_dump(mode="json")
    stats = tree_stats(p.tree)
    if json_out:
        emit_json(
            {
                "name": p.name,
                "id": p.id,
                "path": str(p.source) if p.source else None,
                "profile": doc,
                "tree": {"paths": p.tree, "nodes": stats.nodes, "depth": stats.depth},
                "trtllm_build_args": p.trtllm_build_args(),
            }
        )
        return
    err_console.print(f"[bold]{p.name}[/] (id {p.id}) from {p.source}")
    err_console.print(f"tree: {stats.nodes} nodes, depth {stats.depth}, per depth {stats.nodes_per_depth}")
    shown = p.model_dump(mode="json", exclude_none=True)
    err_console.print(yaml.safe_dump(shown, sort_keys=False), markup=False, soft_wrap=True, end="")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        help="Hardware profiles: list them (and what this machine can run), show one.", no_args_is_help=True
    )
    sub.command("list")(list_profiles_cmd)
    sub.command("show")(show)
    app.add_typer(sub, name="profiles")
