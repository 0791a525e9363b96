"""PNG plot: tokens/s/user and TTFT against concurrency, Medusa on and off when compared."""

from __future__ import annotations

from pathlib import Path

from medusa_trt import fsio
from medusa_trt.bench.report import BenchReport
from medusa_trt.outputs import PNG_SOFTWARE

FIGSIZE_IN = (10.0, 4.0)
DPI = 100  # 1000 x 400 pixels


def _series(report: BenchReport) -> dict[str, tuple[list[int], list[float | None], list[float | None]]]:
    names = {None: "measured", True: "Medusa", False: "no Medusa"}
    out: dict[str, tuple[list[int], list[float | None], list[float | None]]] = {}
    for r in sorted(report.runs, key=lambda r: r["concurrency"]):
        xs, tps, ttft = out.setdefault(names[r["medusa"]], ([], [], []))
        xs.append(r["concurrency"])
        tps.append(r["output_tokens_per_s_per_user"]["mean"])
        ttft.append(r["mean_ttft_ms"])
    return out


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """Write the PNG atomically (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    ax_tps, ax_ttft = fig.subplots(1, 2)
    for label, (xs, tps, ttft) in _series(report).items():
        ax_tps.plot(xs, [float("nan") if v is None else v for v in tps], marker="o", label=label)
        ax_ttft.plot(xs, [float("nan") if v is None else v for v in ttft], marker="o", label=label)
    levels = sorted({r["concurrency"] for r in report.runs})
    for ax, ylabel in ((ax_tps, "output tokens/s per user (mean)"), (ax_ttft, "TTFT mean (ms)")):
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])  # plain numbers at the measured levels, not 2^k
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"medusa-trt bench: {report.server.get('model') or ''}")
    fig.tight_layout()
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": PNG_SOFTWARE})
    return path
