"""Summary statistics for latency samples, numpy-compatible without numpy.

Percentiles use linear interpolation between closest ranks (numpy's default, R type 7), the
convention vLLM's `bench serve` and AIPerf report; std is the population std (numpy's ddof=0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES: tuple[int, ...] = (50, 90, 99)


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of `samples` with linear interpolation (numpy default)."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    xs = sorted(samples)
    pos = (len(xs) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(samples: Sequence[float]) -> float:
    return math.fsum(samples) / len(samples)


def pstd(samples: Sequence[float]) -> float:
    """Population standard deviation (ddof=0), as numpy.std and vLLM report it."""
    m = mean(samples)
    return math.sqrt(math.fsum((x - m) ** 2 for x in samples) / len(samples))


def summarize(samples: Sequence[float], percentiles: Sequence[int] = PERCENTILES) -> dict[str, float | None]:
    """`{mean, median, std, min, max, p50, p90, p99, count}`; values None when there is no sample."""
    out: dict[str, float | None] = {}
    if not samples:
        for k in ("mean", "median", "std", "min", "max", *(f"p{p}" for p in percentiles)):
            out[k] = None
        out["count"] = 0
        return out
    out["mean"] = mean(samples)
    out["median"] = percentile(samples, 50)
    out["std"] = pstd(samples)
    out["min"] = float(min(samples))
    out["max"] = float(max(samples))
    for p in percentiles:
        out[f"p{p}"] = percentile(samples, p)
    out["count"] = len(samples)
    return out
