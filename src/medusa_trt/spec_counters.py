"""Tokens per step from vLLM's speculative-decoding counters on its Prometheus ``/metrics``.

vLLM's usage carries no step count, but its server counts every draft (one per request per
decoding step that speculated) and the draft tokens accepted, overall and per chain position
(``vllm/v1/spec_decode/metrics.py``, v0.32.0): ``vllm:spec_decode_num_drafts``,
``vllm:spec_decode_num_draft_tokens``, ``vllm:spec_decode_num_accepted_tokens`` and
``vllm:spec_decode_num_accepted_tokens_per_pos{position="i"}`` (``_total`` in the exposition).
Over a measured interval, vLLM's "mean acceptance length" is 1 + accepted / drafts (each step also
makes the target's own token); it counts drafts accepted past ``max_tokens`` too, so the bench's
tokens/step takes only the drafts (the decoding steps) and counts the tokens from ``usage``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

PREFIX = "vllm:spec_decode_"
_LINE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_POSITION = re.compile(r'position="(\d+)"')
logger = logging.getLogger(__name__)


@dataclass
class SpecCounters:
    """One reading of the counters (summed over vLLM's engines and models)."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    per_pos: dict[int, float] = field(default_factory=dict)

    def minus(self, before: SpecCounters) -> dict[str, Any]:
        """What happened between two readings, as the bench report keeps it."""
        drafts = self.drafts - before.drafts
        accepted = self.accepted - before.accepted
        draft_tokens = self.draft_tokens - before.draft_tokens
        positions = sorted(set(self.per_pos) | set(before.per_pos))
        return {
            "source": "vllm /metrics (vllm:spec_decode_*)",
            "num_drafts": int(drafts),
            "num_draft_tokens": int(draft_tokens),
            "num_accepted_tokens": int(accepted),
            "num_accepted_tokens_per_pos": [int(self.per_pos.get(p, 0) - before.per_pos.get(p, 0)) for p in positions],
            "acceptance_length": 1 + accepted / drafts if drafts > 0 else None,  # vLLM's mean acceptance length
            "acceptance_rate": accepted / draft_tokens if draft_tokens > 0 else None,
        }


def parse(text: str) -> SpecCounters | None:
    """The counters in a Prometheus text exposition; None when the server exports none (not vLLM)."""
    out, seen = SpecCounters(), False
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or not m["name"].startswith(PREFIX) or not m["name"].endswith("_total"):
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        seen = True
        name = m["name"].removeprefix(PREFIX).removesuffix("_total")
        if name == "num_drafts":
            out.drafts += value
        elif name == "num_draft_tokens":
            out.draft_tokens += value
        elif name == "num_accepted_tokens":
            out.accepted += value
        elif name == "num_accepted_tokens_per_pos" and (pos := _POSITION.search(m["labels"] or "")):
            out.per_pos[int(pos[1])] = out.per_pos.get(int(pos[1]), 0.0) + value
    return out if seen else None


def read(url: str, timeout_s: float = 10.0) -> SpecCounters | None:
    """GET ``url``/metrics; None when it does not answer or exports no vLLM counters."""
    try:
        resp = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout_s)
    except httpx.HTTPError as e:
        logger.debug("%s/metrics: %s", url, e.__class__.__name__)
        return None
    return parse(resp.text) if resp.status_code == 200 else None
