"""Preflight checks: each returns a Check with a verdict (pass | warn | fail) and a one-line reason.

The prediction check says "estimate" instead of "pass" when it rests on the default tokens/step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medusa_trt import engine_facts, fsio
from medusa_trt.config.model import ModelShape
from medusa_trt.config.profile import HardwareProfile
from medusa_trt.medusa.trees import Tree, tree_problems, tree_stats
from medusa_trt.plan import perf as pm
from medusa_trt.plan.memory import GIB

Verdict = Literal["pass", "estimate", "warn", "fail"]
HEADROOM_WARN = 0.9  # warn above 90% of device memory: fragmentation and the KV pool need slack


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    reason: str


def check_memory(mem: dict[str, float], device: str) -> Check:
    total, avail = mem["total"], mem["available"]
    unit = "GPU" if device == "cuda" else "rank"
    big = max((k for k in mem if k not in ("total", "available")), key=lambda k: mem[k])
    what = f"{total:.1f} GiB of {avail:.1f} GiB per {unit} ({total / avail:.0%}; largest: {big} {mem[big]:.1f} GiB)"
    if total > avail:
        return Check("memory", "fail", f"short by {total - avail:.1f} GiB per {unit}: needs {what}")
    if total > HEADROOM_WARN * avail:
        return Check("memory", "warn", f"fits with under 10% headroom: {what}")
    return Check("memory", "pass", what)


def check_parallelism(p: HardwareProfile) -> Check:
    tp, pp, n = p.parallelism.tp, p.parallelism.pp, p.hardware.count
    if pp > 1:
        return Check(
            "parallelism",
            "fail",
            f"pp {pp}: Medusa runs with tensor parallelism only (TRT-LLM's Medusa support matrix lists TP, not PP)",
        )
    if tp * pp > n:
        return Check("parallelism", "fail", f"tp {tp} x pp {pp} needs {tp * pp} devices, the profile has {n}")
    if tp * pp < n:
        return Check("parallelism", "warn", f"tp {tp} x pp {pp} uses {tp * pp} of {n} devices")
    return Check("parallelism", "pass", f"tp {tp} over {n} device{'s' if n > 1 else ''}")


def check_tp(model: ModelShape, tp: int) -> list[Check]:
    h, kv, i, v = model.num_attention_heads, model.num_key_value_heads, model.intermediate_size, model.vocab_size
    vp = pm.padded_vocab(v, tp)
    return [
        _divides("tp_attention_heads", h, tp, f"{h} heads", f"{h} attention heads are"),
        _check_kv_heads(kv, tp),
        _divides("tp_intermediate", i, tp, f"intermediate {i}", f"intermediate_size {i} is"),
        Check(
            "tp_vocab",
            "pass" if vp == v else "warn",
            f"vocab {v} / tp {tp} = {v // tp} per rank"
            if vp == v
            else f"vocab {v} padded to {vp} for tp {tp} ({vp - v} zero rows in lm_head and heads)",
        ),
    ]


def _divides(name: str, n: int, tp: int, shown: str, subject: str) -> Check:
    """Pass when tp splits ``n`` evenly ("<shown> / tp 8 = k per rank"), else fail ("<subject> not divisible")."""
    if n % tp == 0:
        return Check(name, "pass", f"{shown} / tp {tp} = {n // tp} per rank")
    return Check(name, "fail", f"{subject} not divisible by tp {tp}")


def _check_kv_heads(kv: int, tp: int) -> Check:
    """KV heads split over tp ranks, or, when fewer than tp, replicate evenly (one per rank)."""
    if kv >= tp:
        return _divides("tp_kv_heads", kv, tp, f"{kv} KV heads", f"{kv} KV heads are")
    if tp % kv == 0:
        return Check(
            "tp_kv_heads",
            "pass",
            f"{kv} KV heads < tp {tp}: each replicated {tp // kv}x (one per rank, TRT-LLM's rule)",
        )
    return Check(
        "tp_kv_heads",
        "fail",
        f"{kv} KV heads < tp {tp} and tp is not a multiple of them: TRT-LLM can only replicate KV heads evenly",
    )


def check_limits(p: HardwareProfile, model: ModelShape) -> Check:
    lim, draft = p.limits, p.medusa.max_draft_len
    notes = []
    verdict: Verdict = "pass"
    if lim.max_seq_len > model.max_position_embeddings:
        verdict = "warn"
        notes.append(
            f"max_seq_len {lim.max_seq_len} exceeds the model's max_position_embeddings "
            f"{model.max_position_embeddings} (RoPE positions it was not trained on)"
        )
    need = lim.max_batch_size * (draft + 1)
    if engine_facts.get(p.engine).pads_to_max_draft_len and lim.max_num_tokens < need:
        verdict = "warn"
        notes.append(f"trtllm-build raises max_num_tokens {lim.max_num_tokens} to {need} (batch x (draft+1))")
    return Check(
        "limits",
        verdict,
        "; ".join(notes) or f"batch {lim.max_batch_size}, seq {lim.max_seq_len}, tokens {lim.max_num_tokens}",
    )


def check_tree(tree: Tree, num_heads: int, max_draft_len: int) -> Check:
    problems = tree_problems(tree, num_heads=num_heads, max_draft_len=max_draft_len)
    if problems:
        return Check("medusa_tree", "fail", "; ".join(problems))
    s = tree_stats(tree)
    return Check(
        "medusa_tree",
        "pass",
        f"{s.nodes} nodes, depth {s.depth} <= {num_heads} heads, nodes <= max_draft_len {max_draft_len}, prefix-closed",
    )


def check_waste(p: HardwareProfile, model: ModelShape, tree: Tree, num_heads: int, context_len: int) -> Check:
    nodes, draft = len(tree), p.medusa.max_draft_len
    if not engine_facts.get(p.engine).pads_to_max_draft_len or draft <= nodes:
        return Check("medusa_waste", "pass", f"{nodes + 1} tokens verified per step, none wasted")
    used = pm.step_time_ms(p, model, nodes + 1, context_len, num_heads)
    padded = pm.step_time_ms(p, model, draft + 1, context_len, num_heads)
    return Check(
        "medusa_waste",
        "warn",
        f"TRT-LLM computes max_draft_len+1 = {draft + 1} tokens per step for a "
        f"{nodes}-node tree: {draft - nodes} wasted, +{(padded / used - 1):.0%} step time "
        f"({padded:.2f} vs {used:.2f} ms); set max_draft_len to {nodes}",
    )


def check_disk(need: dict[str, float], free_gib: float, where: str, target_here: bool) -> Check:
    total = need["total"]
    have = need.get("already_on_disk", 0.0)
    # one unit for every figure, with the decimals that tell need and free apart (a small disk is MiB)
    t, hf, ck, en, hv, fr, short = fsio.human_bytes(
        *(x * GIB for x in (total, need["hf_checkpoint"], need["trtllm_checkpoint"], need["engine"], have, free_gib)),
        max(0.0, total - free_gib) * GIB,
    )
    what = (
        f"needs {t} (HF {hf} + TRT-LLM checkpoint {ck} + engine {en}"
        + (f" - {hv} already on disk" if have else "")
        + f"), {fr} free at {where}"
    )
    if free_gib >= total:
        return Check("disk", "pass", what)
    if target_here:
        return Check("disk", "fail", f"short by {short}: {what}")
    return Check("disk", "warn", f"{what}; this machine is not the profile's build host, check there")


def check_prediction(pred: pm.Prediction, *, default_tokens_per_step: bool) -> Check:
    """Pass on a measured tokens/step; on the default one the prediction is only an estimate."""
    b, m = pred.baseline, pred.medusa
    what = (
        f"baseline {b.step_ms:.2f} ms/step, {b.tokens_per_s_per_user:.1f} tok/s/user; Medusa "
        f"{m.step_ms:.2f} ms/step x {m.tokens_per_step:.2f} tok/step = {m.tokens_per_s_per_user:.1f} "
        f"tok/s/user ({pred.speedup:.2f}x)"
    )
    if default_tokens_per_step:
        what += ", at the default tokens/step (not measured)"
    if pred.speedup < 1:
        return Check("prediction", "warn", f"Medusa predicted slower than plain decoding: {what}")
    return Check("prediction", "estimate" if default_tokens_per_step else "pass", what)
