"""`bench --engine D1 --engine D2 ...`: the same prompts, settings and seed on each deployment in turn.

Each engine directory is served by `medusa-trt run` on a free loopback port, measured, and stopped
before the next one starts, so the engines never share the machine. One table (a column per engine
and concurrency level), one plot, and whether the greedy outputs are identical across engines (the
completions' SHA-256, prompt by prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts, fsio
from medusa_trt.bench.report import SCHEMA_VERSION, BenchReport
from medusa_trt.bench.runner import BenchConfig, run_benchmark
from medusa_trt.bench.server import read_engine_provenance

MODES = {None: "", True: " Medusa", False: " plain"}


@dataclass
class SideBySide:
    labels: list[str]
    reports: list[BenchReport]
    identical: list[dict[str, Any]] = field(default_factory=list)  # one entry per concurrency level

    @property
    def was_cancelled(self) -> bool:
        return any(r.was_cancelled for r in self.reports)

    def columns(self) -> list[tuple[str, dict[str, Any]]]:
        """(column label, run) per engine, Medusa mode and concurrency level."""
        return [(f"{engine}{MODES[run['medusa']]} c={run['concurrency']}", run) for engine, run in self._runs()]

    def _runs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(label, run) for label, report in zip(self.labels, self.reports, strict=True) for run in report.runs]

    def to_json(self) -> dict[str, Any]:
        """One document; ``runs`` (each with its ``engine`` label) and ``server`` as a single report has."""
        return {
            "schema_version": SCHEMA_VERSION,
            "side_by_side": True,
            "server": {"engines": self.labels},
            "runs": [
                {"engine": engine, "column": column, **run}
                for (engine, run), (column, _) in zip(self._runs(), self.columns(), strict=True)
            ],
            "identical_outputs": self.identical,
            "reports": [{"engine": label, **r.to_json()} for label, r in zip(self.labels, self.reports, strict=True)],
        }

    def write(self, path: str | Path) -> Path:
        return fsio.write_json(Path(path), self.to_json())


def engine_label(report: BenchReport, path: Path) -> str:
    """The engine and how it drafts, from the manifest: ``vllm chain 4``, ``reference tree 15``."""
    manifest = (report.engine or {}).get("manifest") or {}
    kind = manifest.get("engine") or "server"
    tree = manifest.get("tree") or []
    from_paths = all(all(i == 0 for i in p) for p in tree)
    facts = engine_facts.find(kind)
    drafting = f"chain {len(tree)}" if tree and ((facts and facts.chain) or from_paths) else f"tree {len(tree)}"
    return f"{path.name}: {kind} {drafting}" if tree else f"{path.name}: {kind}"


def compare_outputs(sbs: SideBySide) -> list[dict[str, Any]]:
    """Per concurrency level: whether every column produced the same completion for every prompt."""
    out = []
    for level in sorted({run["concurrency"] for _, run in sbs.columns()}):
        cols = [(label, run) for label, run in sbs.columns() if run["concurrency"] == level]
        prompts = sorted(set.intersection(*(set(run.get("output_sha256", {})) for _, run in cols)), key=int)
        differ = [p for p in prompts if len({run["output_sha256"][p] for _, run in cols}) > 1]
        out.append(
            {
                "concurrency": level,
                "columns": [label for label, _ in cols],
                "prompts_compared": len(prompts),
                "identical": (not differ and bool(prompts)) if len(cols) > 1 else None,
                "differing_prompts": [int(p) for p in differ],
            }
        )
    return out


def run_side_by_side(
    cfg: BenchConfig,
    engines: list[Path],
    *,
    on_engine: Callable[[Path], None] | None = None,
    make_callbacks: Callable[[], dict[str, Any]] | None = None,
) -> SideBySide:
    """Measure each engine directory with ``cfg``'s settings, one after the other."""
    reports: list[BenchReport] = []
    labels: list[str] = []
    for path in engines:
        if on_engine is not None:
            on_engine(path)
        manifest = (read_engine_provenance(path).get("manifest") or {}) if path.is_dir() else {}
        # plain decoding beside Medusa needs a server that switches per request (ours); vLLM's cannot.
        # No manifest: a converted checkpoint, served by the engine that serves those.
        facts = engine_facts.find(manifest.get("engine", engine_facts.CHECKPOINT_ENGINE))
        compare = cfg.compare_no_medusa and facts is not None and facts.medusa_per_request
        one = dataclasses.replace(cfg, engine=path, url=None, simulate=None, compare_no_medusa=compare)
        report = run_benchmark(one, **(make_callbacks() if make_callbacks else {}))
        reports.append(report)
        labels.append(engine_label(report, path))
        if report.was_cancelled:
            break
    sbs = SideBySide(labels, reports)
    sbs.identical = compare_outputs(sbs) if cfg.temperature == 0 else []
    return sbs


# (row label, key, decimals): the figures a user picks an engine by
_ROWS: tuple[tuple[str, str, int], ...] = (
    ("tokens/s/user mean", "tps:mean", 1),
    ("TTFT mean (ms)", "mean_ttft_ms", 1),
    ("TPOT mean (ms)", "mean_tpot_ms", 2),
    ("tokens/step", "tokens_per_step", 2),
    ("output throughput (tok/s)", "output_throughput", 1),
)


def rows(sbs: SideBySide) -> list[list[str]]:
    """The table as text: a header row, then one row per metric."""

    def fmt(v: Any, nd: int) -> str:
        return "-" if v is None else f"{v:,.{nd}f}" if isinstance(v, float) else str(v)

    cols = sbs.columns()
    table = [["metric", *(label for label, _ in cols)]]
    table.append(["completed / failed", *(f"{r['completed']} / {r['failed']}" for _, r in cols)])
    for label, key, nd in _ROWS:
        vals = [r["output_tokens_per_s_per_user"][key[4:]] if key.startswith("tps:") else r.get(key) for _, r in cols]
        table.append([label, *(fmt(v, nd) for v in vals)])
    return table


def summary_lines(sbs: SideBySide) -> list[str]:
    lines = []
    for c in sbs.identical:
        if c["identical"] is None:
            continue
        verdict = "identical" if c["identical"] else f"DIFFERENT on prompts {c['differing_prompts']}"
        lines.append(
            f"concurrency {c['concurrency']}: greedy outputs {verdict} across {len(c['columns'])} columns "
            f"({c['prompts_compared']} prompts)"
        )
    return lines


def write_plot(sbs: SideBySide, path: str | Path) -> Path:
    """Bars per column: tokens/s/user and TTFT (Agg backend, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from medusa_trt.outputs import PNG_SOFTWARE

    path = Path(path)
    cols = sbs.columns()
    names = [label for label, _ in cols]
    tps = [r["output_tokens_per_s_per_user"]["mean"] or 0.0 for _, r in cols]
    ttft = [r["mean_ttft_ms"] or 0.0 for _, r in cols]
    fig = Figure(figsize=(max(8.0, 2.2 * len(cols)), 4.0), dpi=100)
    ax_tps, ax_ttft = fig.subplots(1, 2)
    for ax, vals, ylabel in ((ax_tps, tps, "output tokens/s per user (mean)"), (ax_ttft, ttft, "TTFT mean (ms)")):
        ax.bar(range(len(vals)), vals)
        ax.set_xticks(range(len(vals)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("medusa-trt bench: engines side by side")
    fig.tight_layout()
    with fsio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    return path
