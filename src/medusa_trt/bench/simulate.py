"""`--simulate PROFILE`: the analytic prediction (medusa_trt.plan.perf) at the tokens/step just measured."""

from __future__ import annotations

from typing import Any

from medusa_trt.bench.report import BenchReport


def check_simulation(profile: str, model: str) -> None:
    """Load the profile and the model preset now, so a typo fails before the measurement."""
    from medusa_trt.config.model import resolve_model
    from medusa_trt.config.profile import load_profile

    load_profile(profile)
    resolve_model(model)


def measured_tokens_per_step(report: BenchReport) -> float | None:
    """(Output tokens - 1) / decoding steps over every Medusa-on (or default) request that reported
    steps: the same acceptance length as the metrics (prefill makes each request's first token)."""
    out = steps = 0
    for run in report.runs:
        if run["medusa"] is False:
            continue
        for r in run["requests"]:
            if r["ok"] and r["decoding_steps"]:
                out += r["output_tokens"] - 1
                steps += r["decoding_steps"]
    return out / steps if steps else None


def simulate(profile_name: str, model_name: str, report: BenchReport) -> dict[str, Any]:
    """Predicted baseline and Medusa tokens/s/user for `profile_name` at the measured acceptance."""
    from medusa_trt.config.model import resolve_model
    from medusa_trt.config.profile import load_profile
    from medusa_trt.plan import predict

    tps = measured_tokens_per_step(report)
    base: dict[str, Any] = {"profile": profile_name, "model": model_name, "tokens_per_step": tps}
    if tps is None:
        return {**base, "error": "the server reported no usage.decoding_steps: no measured tokens/step to simulate"}
    profile = load_profile(profile_name)
    pred = predict(profile, resolve_model(model_name), tokens_per_step=tps)
    return {
        **base,
        "profile_id": profile.id,
        "tokens_per_s_per_user": pred.medusa.tokens_per_s_per_user,
        "step_time_ms": pred.medusa.step_ms,
        "baseline_tokens_per_s_per_user": pred.baseline.tokens_per_s_per_user,
        "speedup": pred.speedup,
        "context_len": pred.context_len,
        "prediction": pred.to_dict(),
    }
