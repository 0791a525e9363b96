"""The benchmark result document (one JSON per run) and its Rich table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import MedusaTrtError

SCHEMA_VERSION = 1


@dataclass
class BenchReport:
    """Everything one `bench` invocation measured, with its provenance.

    `runs` holds one entry per (concurrency, medusa) with vLLM's flat keys (`mean_ttft_ms`,
    `p99_itl_ms`, `request_throughput`, ...) plus `output_tokens_per_s_per_user` and
    `tokens_per_step`; `comparisons` one per concurrency when Medusa was compared on/off.
    """

    tool: dict[str, Any]
    server: dict[str, Any]
    config: dict[str, Any]
    start_time: str
    end_time: str = ""
    engine: dict[str, Any] | None = None
    command: list[str] | None = None
    was_cancelled: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    simulation: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def run(self, concurrency: int, medusa: bool | None = None) -> dict[str, Any] | None:
        for r in self.runs:
            if r["concurrency"] == concurrency and r["medusa"] == medusa:
                return r
        return None

    def write(self, path: str | Path) -> Path:
        """Write the JSON atomically (temp name in the same folder, then rename)."""
        return fsio.write_json(Path(path), self.to_json())


def is_report(path: Path) -> bool:
    """A JSON file `bench` wrote (so `--json-out` may overwrite it)."""
    try:
        doc = fsio.read_json(path, "bench report")
    except (OSError, MedusaTrtError):
        return False
    return isinstance(doc, dict) and "schema_version" in doc and "runs" in doc and "server" in doc


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _label(r: dict[str, Any]) -> str:
    return {None: "", True: "on", False: "off"}[r["medusa"]]


# (row label, getter) pairs of the table: one column per run, metrics down the side (vLLM's block).
_ROWS: tuple[tuple[str, str, int], ...] = (
    ("tokens/s/user mean", "tps:mean", 1),
    ("tokens/s/user p50", "tps:p50", 1),
    ("tokens/s/user p90", "tps:p90", 1),
    ("tokens/s/user p99", "tps:p99", 1),
    ("TTFT mean (ms)", "mean_ttft_ms", 1),
    ("TTFT p50 (ms)", "p50_ttft_ms", 1),
    ("TTFT p99 (ms)", "p99_ttft_ms", 1),
    ("TPOT mean (ms)", "mean_tpot_ms", 2),
    ("TPOT p99 (ms)", "p99_tpot_ms", 2),
    ("ITL (inter-chunk) mean (ms)", "mean_itl_ms", 2),
    ("ITL p99 (ms)", "p99_itl_ms", 2),
    ("E2EL mean (ms)", "mean_e2el_ms", 1),
    ("E2EL p99 (ms)", "p99_e2el_ms", 1),
    ("request throughput (req/s)", "request_throughput", 2),
    ("output throughput (tok/s)", "output_throughput", 1),
    ("tokens/step", "tokens_per_step", 2),
)


def render_table(report: BenchReport) -> Any:
    """A Rich table: one column per run (concurrency, Medusa on/off), metrics as rows."""
    from rich.table import Table

    title = f"medusa-trt bench: {report.server.get('model') or '?'} at {report.server.get('url')}"
    if report.was_cancelled:
        title += " (interrupted: partial results)"
    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    for r in report.runs:
        t.add_column(f"c={r['concurrency']} {_label(r)}".strip(), justify="right")
    t.add_row("completed / failed", *(f"{r['completed']} / {r['failed']}" for r in report.runs))
    for label, key, nd in _ROWS:
        if key.startswith("tps:"):
            vals = [r["output_tokens_per_s_per_user"][key[4:]] for r in report.runs]
        else:
            vals = [r[key] for r in report.runs]
        t.add_row(label, *(_f(v, nd) for v in vals))
    return t


def summary_lines(report: BenchReport) -> list[str]:
    """Failures per kind, comparison verdicts and the simulation, one line each."""
    lines = []
    for r in report.runs:
        if r["errors"]:
            kinds = ", ".join(f"{k}={v}" for k, v in r["errors"].items())
            lines.append(f"concurrency {r['concurrency']} {_label(r)}: failed requests: {kinds}")
            if r.get("first_error"):
                lines.append(f"  first error: {r['first_error']}")
    for c in report.comparisons:
        same = {True: "identical", False: "DIFFERENT", None: "not checked (temperature > 0)"}[c["identical_outputs"]]
        lines.append(
            f"concurrency {c['concurrency']}: Medusa speedup {_f(c['speedup'], 2)}x tokens/s/user; "
            f"greedy outputs {same}" + (f" ({len(c['mismatches'])} prompts)" if c["mismatches"] else "")
        )
    sim = report.simulation
    if sim:
        if sim.get("error"):
            lines.append(f"simulation: {sim['error']}")
        else:
            lines.append(
                f"simulation ({sim['profile']}, {sim['model']}, at the {_f(sim['tokens_per_step'], 2)} "
                f"tokens/step measured): {_f(sim['tokens_per_s_per_user'])} tokens/s/user predicted with "
                f"Medusa (step {_f(sim['step_time_ms'], 2)} ms) vs "
                f"{_f(sim['baseline_tokens_per_s_per_user'])} without ({_f(sim['speedup'], 2)}x)"
            )
    return lines
