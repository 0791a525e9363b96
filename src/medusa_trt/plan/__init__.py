"""What fits and how fast: the preflight every build runs first and `medusa-trt plan` prints.

- ``report``: ``preflight_report(profile, model, ...) -> PreflightReport`` (fits, checks, memory, disk,
  prediction; ``raise_if_not_fits()`` is exit 4);
- ``checks`` and ``memory``: the checks one by one, memory per GPU and disk;
- ``perf``: the analytic step-time model (docs/perf-model.md);
- ``hw``: what this machine has (GPUs, CPU cores, RAM) and whether a profile can run on it.
"""

from medusa_trt.plan.perf import (
    DEFAULT_CONTEXT_LEN,
    Prediction,
    StepPrediction,
    default_tokens_per_step,
    predict,
    step_breakdown,
    step_time_curve,
    step_time_ms,
    verify_tokens_for,
)
from medusa_trt.plan.report import PreflightReport, preflight_report

__all__ = [
    "DEFAULT_CONTEXT_LEN",
    "Prediction",
    "PreflightReport",
    "StepPrediction",
    "default_tokens_per_step",
    "predict",
    "preflight_report",
    "step_breakdown",
    "step_time_curve",
    "step_time_ms",
    "verify_tokens_for",
]
