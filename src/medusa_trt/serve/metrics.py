"""Prometheus text exposition (format 0.0.4) for the reference server, without prometheus_client.

Counters and a histogram, labelled by endpoint/status and by whether Medusa was on, so one server
measured both ways shows both. Thread-safe: the worker thread and the event loop both record.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

Labels = tuple[tuple[str, str], ...]

TOKENS_PER_STEP_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
PREFIX = "medusa_trt"


def _labels(labels: Labels, extra: Sequence[tuple[str, str]] = ()) -> str:
    items = [*labels, *extra]
    if not items:
        return ""
    esc = [(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in items]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Metrics:
    """The server's counters. ``render()`` returns the Prometheus text body."""

    def __init__(self, model_name: str) -> None:
        self._lock = threading.Lock()
        self._model = model_name
        self._requests: dict[Labels, float] = defaultdict(float)
        self._outcomes: dict[Labels, float] = defaultdict(float)
        self._tokens: dict[Labels, float] = defaultdict(float)  # (kind, medusa) -> count
        self._steps: dict[Labels, float] = defaultdict(float)
        self._accepted: dict[Labels, float] = defaultdict(float)  # (depth, ) -> accepted drafts
        self._tps_buckets: dict[Labels, list[int]] = {}
        self._tps_sum: dict[Labels, float] = defaultdict(float)
        self._tps_count: dict[Labels, int] = defaultdict(int)
        self._tree_steps: dict[Labels, float] = defaultdict(float)  # (nodes, ) -> Medusa steps
        self.tree_nodes: dict[str, int] = {}  # regime -> draft nodes adaptive speculation uses now
        self.running = 0
        self.waiting = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._requests[(("endpoint", endpoint), ("status", str(status)))] += 1

    def outcome(self, kind: str) -> None:
        """A generation the engine ran ended: finished, cancelled (client gone, stop string) or failed."""
        with self._lock:
            self._outcomes[(("outcome", kind),)] += 1

    def generation(
        self,
        *,
        medusa: bool,
        prompt_tokens: int,
        completion_tokens: int,
        steps: int,
        accepted_per_depth: Sequence[int] = (),
        tree_nodes_used: dict[int, int] | None = None,
        tree_nodes: dict[str, int] | None = None,
    ) -> None:
        m = ("medusa", "true" if medusa else "false")
        with self._lock:
            self._tokens[(("kind", "prompt"), m)] += prompt_tokens
            self._tokens[(("kind", "completion"), m)] += completion_tokens
            self._steps[(m,)] += steps
            for depth, n in enumerate(accepted_per_depth, start=1):
                self._accepted[(("depth", str(depth)),)] += n
            for nodes, n in (tree_nodes_used or {}).items():
                self._tree_steps[(("nodes", str(nodes)),)] += n
            if medusa and tree_nodes:
                self.tree_nodes = dict(tree_nodes)
            if steps > 0:
                tps = (completion_tokens - 1) / steps  # prefill made the first token
                buckets = self._tps_buckets.setdefault((m,), [0] * len(TOKENS_PER_STEP_BUCKETS))
                for i, le in enumerate(TOKENS_PER_STEP_BUCKETS):
                    if tps <= le:
                        buckets[i] += 1
                self._tps_sum[(m,)] += tps
                self._tps_count[(m,)] += 1

    def render(self) -> str:
        with self._lock:
            out: list[str] = []
            self._family(out, "requests_total", "counter", "HTTP requests by endpoint and status code.", self._requests)
            self._family(
                out,
                "generations_total",
                "counter",
                "Generations the engine ran, by outcome (finished, cancelled, failed).",
                self._outcomes,
            )
            self._family(
                out, "tokens_total", "counter", "Prompt and completion tokens of finished generations.", self._tokens
            )
            self._family(
                out,
                "decoding_steps_total",
                "counter",
                "Decoding steps (verification forwards, prefill excluded).",
                self._steps,
            )
            self._family(
                out,
                "accepted_draft_tokens_total",
                "counter",
                "Accepted Medusa draft tokens by tree depth.",
                self._accepted,
            )
            self._family(
                out,
                "tree_steps_total",
                "counter",
                "Medusa decoding steps by draft nodes of the (sub)tree verified (0: no drafts).",
                self._tree_steps,
            )
            if self.tree_nodes:
                self._family(
                    out,
                    "tree_nodes",
                    "gauge",
                    "Draft nodes adaptive speculation uses now, by decoding regime (greedy, or the "
                    "acceptance rule and temperature band); 0: plain steps.",
                    {(("regime", k),): float(v) for k, v in self.tree_nodes.items()},
                )
            self._histogram(out)
            self._family(
                out, "requests_running", "gauge", "Generations running now (0 or 1).", {(): float(self.running)}
            )
            self._family(
                out,
                "requests_waiting",
                "gauge",
                "Requests queued behind the running generation.",
                {(): float(self.waiting)},
            )
            return "\n".join(out) + "\n"

    def _family(self, out: list[str], name: str, kind: str, help_: str, series: dict[Labels, float]) -> None:
        full = f"{PREFIX}_{name}"
        out += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        model = (("model", self._model),)
        for labels, value in sorted(series.items()):
            out.append(f"{full}{_labels(model + labels)} {_num(value)}")

    def _histogram(self, out: list[str]) -> None:
        full = f"{PREFIX}_tokens_per_step"
        out += [
            f"# HELP {full} Tokens per decoding step (the prefill token excluded), one observation per generation.",
            f"# TYPE {full} histogram",
        ]
        model = (("model", self._model),)
        for labels, buckets in sorted(self._tps_buckets.items()):
            base = model + labels
            for le, n in zip(TOKENS_PER_STEP_BUCKETS, buckets, strict=True):
                out.append(f"{full}_bucket{_labels(base, [('le', _num(le))])} {n}")
            out.append(f"{full}_bucket{_labels(base, [('le', '+Inf')])} {self._tps_count[labels]}")
            out.append(f"{full}_sum{_labels(base)} {_num(self._tps_sum[labels])}")
            out.append(f"{full}_count{_labels(base)} {self._tps_count[labels]}")
