"""Per-request records and the run metrics computed from them (vLLM key names).

Definitions (trtllm-bench, vLLM and NVIDIA AIPerf agree on them; docs/sources.md, Benchmark metric definitions):
- TTFT: first chunk with non-empty text - request start.
- TPOT: (e2el - ttft) / (output_tokens - 1), output tokens from the server's `usage`, never chunks
  (with Medusa one chunk carries the tokens of one decoding step).
- ITL: every gap between consecutive text chunks (inter-chunk latency, not per token).
- E2EL: end of stream - request start.
- output_tokens_per_s_per_user: per request 1/TPOT, i.e. excluding TTFT, as trtllm-bench's
  "Per User Output Speed" and NVIDIA's tokens/s/user figures.
- tokens_per_step (acceptance length): (output tokens - 1) / decoding steps (prefill makes the first token), over the requests whose
  server reported `usage.decoding_steps`; None when none did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from medusa_trt.bench.stats import PERCENTILES, summarize

# Failure kinds, counted per run: refused/failed connection, timeout, HTTP 4xx/5xx, a stream that is
# not valid SSE JSON or ends without [DONE], an error object inside the stream, no `usage` chunk.
ERROR_KINDS: tuple[str, ...] = (
    "connect",
    "timeout",
    "http_4xx",
    "http_5xx",
    "malformed_stream",
    "stream_error",
    "missing_usage",
    "other",
)


@dataclass
class RequestRecord:
    """What one streamed request did. Times are seconds relative to the request start."""

    index: int  # position of the prompt in the drawn prompt list
    medusa: bool | None = None  # the request's "medusa" field; None = not sent
    ttft_s: float | None = None
    e2el_s: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each non-empty text chunk
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    decoding_steps: int | None = None
    text: str = ""
    finish_reason: str | None = None
    error_kind: str | None = None  # one of ERROR_KINDS when the request failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.output_tokens is None or self.output_tokens < 2:
            return None
        assert self.e2el_s is not None and self.ttft_s is not None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        return [b - a for a, b in pairwise(self.chunk_times)]

    @property
    def tokens_per_s(self) -> float | None:
        tpot = self.tpot_s
        return 1.0 / tpot if tpot else None

    def to_json(self) -> dict[str, Any]:
        """The per-request record kept in the result document (text left out: it can be large)."""
        ms = _ms
        return {
            "index": self.index,
            "medusa": self.medusa,
            "ok": self.ok,
            "ttft_ms": ms(self.ttft_s),
            "tpot_ms": ms(self.tpot_s),
            "e2el_ms": ms(self.e2el_s),
            "itls_ms": [x * 1e3 for x in self.itls_s],
            "num_chunks": len(self.chunk_times),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "decoding_steps": self.decoding_steps,
            "output_tokens_per_s": self.tokens_per_s,
            "finish_reason": self.finish_reason,
            "error_kind": self.error_kind,
            "error": self.error,
        }


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


def _flat(name: str, samples_ms: list[float], out: dict[str, Any]) -> None:
    """vLLM's flat keys: mean_<m>_ms, median_<m>_ms, std_<m>_ms, p<P>_<m>_ms."""
    s = summarize(samples_ms, PERCENTILES)
    out[f"mean_{name}_ms"] = s["mean"]
    out[f"median_{name}_ms"] = s["median"]
    out[f"std_{name}_ms"] = s["std"]
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = s[f"p{p}"]


def compute_metrics(records: list[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Run-level metrics over `records` measured in `duration_s` of wall time."""
    ok = [r for r in records if r.ok]
    errors = {k: 0 for k in ERROR_KINDS}
    for r in records:
        if r.error_kind is not None:
            errors[r.error_kind] = errors.get(r.error_kind, 0) + 1
    total_out = sum(r.output_tokens or 0 for r in ok)
    total_in = sum(r.prompt_tokens or 0 for r in ok)
    with_steps = [r for r in ok if r.decoding_steps]
    steps = sum(r.decoding_steps or 0 for r in with_steps)
    out: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": {k: v for k, v in errors.items() if v},
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "total_decoding_steps": steps if with_steps else None,
        "request_throughput": len(ok) / duration_s if duration_s > 0 else None,
        "output_throughput": total_out / duration_s if duration_s > 0 else None,
        "total_token_throughput": (total_in + total_out) / duration_s if duration_s > 0 else None,
        # the first token of each request comes from prefill, not from a decoding step
        "tokens_per_step": (sum((r.output_tokens or 1) - 1 for r in with_steps) / steps) if steps else None,
    }
    _flat("ttft", [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None], out)
    _flat("tpot", [t * 1e3 for r in ok if (t := r.tpot_s) is not None], out)
    _flat("itl", [g * 1e3 for r in ok for g in r.itls_s], out)
    _flat("e2el", [r.e2el_s * 1e3 for r in ok if r.e2el_s is not None], out)
    tps = [t for r in ok if (t := r.tokens_per_s) is not None]
    s = summarize(tps, PERCENTILES)
    out["output_tokens_per_s_per_user"] = {k: s[k] for k in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES))}
    out["mean_output_tokens_per_s_per_user"] = s["mean"]
    out["median_output_tokens_per_s_per_user"] = s["median"]
    return out
