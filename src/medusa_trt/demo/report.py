"""The demo's comparison: a table on stderr and a PNG (tokens/s/user with and without Medusa, head accuracy)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.outputs import PNG_SOFTWARE


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def render(doc: dict[str, Any], log: Callable[[str], None]) -> None:
    """Print the comparison (Rich on stderr through ``log``)."""
    tps = doc["tokens_per_s_per_user"]
    ok = "[green]yes[/]" if doc["identical_outputs"] else "[red]NO[/]"
    lines = [
        "",
        "[bold]medusa-trt demo: the same server, the same prompts, greedy[/]",
        f"  tokens/s/user   Medusa {_f(tps['medusa'], '{:.1f}')}   without {_f(tps['no_medusa'], '{:.1f}')}"
        f"   speedup [bold]{_f(doc['speedup'])}x[/]",
        f"  tokens/step     {_f(doc['tokens_per_step'])} measured, {_f(doc['expected_tokens_per_step'])} expected "
        "from head accuracy",
        f"  identical greedy outputs: {ok}   tree: {doc['tree_nodes']} nodes   wall {doc['wall_s']} s",
        f"  results: {doc['output_dir']}/demo.json, demo.png",
    ]
    for line in lines:
        log(line)


def write_plot(doc: dict[str, Any], path: Path) -> Path:
    """Two panels: tokens/s/user bars; per-head top-1 accuracy. Written atomically (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    tps = doc["tokens_per_s_per_user"]
    vals = [tps["no_medusa"] or 0.0, tps["medusa"] or 0.0]
    ax1.bar(["without Medusa", "Medusa"], vals, color=["#999999", "#4c72b0"])
    ax1.set_ylabel("output tokens/s per user")
    ax1.set_title(f"speedup {_f(doc['speedup'])}x, {_f(doc['tokens_per_step'])} tokens/step")
    acc = doc["head_accuracy"]
    ax2.bar([f"head {k}" for k in range(len(acc))], [row[0] for row in acc], color="#55a868")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("top-1 accuracy (held out)")
    ax2.set_title(f"tree: {doc['tree_nodes']} nodes")
    fig.tight_layout()
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    return path
