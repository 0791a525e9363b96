"""Analytic step-time model for planning; see docs/perf-model.md."""

from medusa_trt.perf.model import (
    DEFAULT_CONTEXT_LEN,
    REFERENCE,
    TRTLLM,
    EngineConstants,
    Prediction,
    StepPrediction,
    default_tokens_per_step,
    predict,
    step_breakdown,
    step_time_curve,
    step_time_ms,
    verify_tokens_for,
)

__all__ = [
    "DEFAULT_CONTEXT_LEN",
    "REFERENCE",
    "TRTLLM",
    "EngineConstants",
    "Prediction",
    "StepPrediction",
    "default_tokens_per_step",
    "predict",
    "step_breakdown",
    "step_time_curve",
    "step_time_ms",
    "verify_tokens_for",
]
