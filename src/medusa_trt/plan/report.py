"""`medusa-trt plan`: the preflight every build runs first (memory, TP, tree, disk, predicted speed).

``preflight_report`` never raises for a model that does not fit: it returns ``fits=False`` and the failing
checks; :meth:`PreflightReport.raise_if_not_fits` turns that into an IncompatibleError (exit 4).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts
from medusa_trt.config.model import ModelShape, resolve_model
from medusa_trt.config.profile import HardwareProfile, load_profile
from medusa_trt.errors import IncompatibleError, InvalidInputError, MedusaTrtError
from medusa_trt.medusa.tree_builder import expected_tokens_per_step, validate_accuracy
from medusa_trt.medusa.trees import top1_chain, tree_name, tree_stats, validate_tree
from medusa_trt.plan import checks as ck
from medusa_trt.plan import perf as pm
from medusa_trt.plan.memory import GIB, disk_need, memory_per_gpu

logger = logging.getLogger(__name__)

__all__ = ["PreflightReport", "preflight_report"]


@dataclass
class PreflightReport:
    profile: HardwareProfile
    model: ModelShape
    num_medusa_heads: int
    fits: bool
    memory_gib: dict[str, float]
    disk_gib: dict[str, float]
    checks: list[ck.Check]
    prediction: pm.Prediction
    tokens_per_step_source: str
    tree: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[ck.Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    def to_dict(self) -> dict[str, Any]:
        pred = self.prediction.to_dict()
        pred["tokens_per_step_source"] = self.tokens_per_step_source
        src = self.profile.source
        return {
            "profile": {
                "name": self.profile.name,
                "id": self.profile.id,
                "path": str(src) if src else None,
                "engine": self.profile.engine,
            },
            "model": {"name": self.model.name, "num_params": self.model.num_params},
            "num_medusa_heads": self.num_medusa_heads,
            "tree": self.tree,
            "fits": self.fits,
            "memory_gib": {k: round(v, 3) for k, v in self.memory_gib.items()},
            "disk_gib": {k: round(v, 3) for k, v in self.disk_gib.items()},
            "checks": [{"name": c.name, "verdict": c.verdict, "reason": c.reason} for c in self.checks],
            "prediction": pred,
        }

    def raise_if_not_fits(self) -> None:
        if self.fits:
            return
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in self.failures)
        hints = dict.fromkeys(_hint(c.name) for c in self.failures)  # ordered, without repeats
        if all(c.name == "disk" for c in self.failures):  # a full disk is the machine's, not the profile's
            raise MedusaTrtError(f"not enough disk space for {self.model.name}: {reasons}", hint=" ".join(hints))
        raise IncompatibleError(
            f"{self.model.name} does not fit profile {self.profile.name}: {reasons}", hint=" ".join(hints)
        )


def _hint(check: str) -> str:
    """What to change for a failed check, by the check's family."""
    if check == "memory":
        return (
            "Use more or larger GPUs, FP8 (quantization: fp8), a higher tp, or smaller limits "
            "(max_seq_len, max_batch_size)."
        )
    if check.startswith("tp_") or check == "parallelism":
        return "Copy the profile and set parallelism.tp to a value that divides the model's heads and sizes."
    if check.startswith("medusa"):
        return "Fit the tree to the heads and max_draft_len (medusa.tree, medusa.max_draft_len in the profile)."
    if check == "disk":
        return "Free disk space or write the output to a larger disk (--output / --work-dir)."
    return "Adjust the profile (copy it and edit the YAML) or pick another one (medusa-trt profiles list)."


def _dir_bytes(path: Path) -> float:
    return float(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))


def _still_to_write(need: dict[str, float], work_dir: Path | None, local_model: bool) -> dict[str, float]:
    """Subtract what is already on disk: a local model is read, not written; a resumed build's finished
    checkpoint and engine stay. Without this, resuming a finished build on a nearly full disk fails."""
    have = need["hf_checkpoint"] if local_model else 0.0
    for key, sub in (("trtllm_checkpoint", "checkpoint"), ("engine", "engine")):
        if work_dir is not None and (work_dir / sub).is_dir():
            have += min(need[key], _dir_bytes(work_dir / sub) / GIB)
    return {**need, "already_on_disk": have, "total": max(0.0, need["total"] - have)}


def _free_disk(work_dir: Path) -> tuple[float, Path]:
    probe = work_dir.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free / GIB, probe


def preflight_report(
    profile: HardwareProfile | str | Path,
    model: ModelShape | str,
    *,
    num_medusa_heads: int | None = None,
    tokens_per_step: float | None = None,
    context_len: int = pm.DEFAULT_CONTEXT_LEN,
    work_dir: Path | None = None,
    target_here: bool | None = None,
    accuracy: Sequence[Sequence[float]] | None = None,
) -> PreflightReport:
    """Every preflight check and the predicted speed for ``model`` on ``profile``.

    ``tokens_per_step`` defaults to :func:`medusa_trt.plan.perf.default_tokens_per_step` of the tree depth.
    ``work_dir`` is where the checkpoints and engine go (disk check; default: the current directory).
    ``target_here`` says whether this machine is the profile's build host (default: it has the
    profile's hardware); a disk shortfall fails only there and warns elsewhere. ``accuracy`` (a
    `tree accuracy` table: per head, per rank) predicts tokens per step for the tree or chain.
    An engine that drafts a top-1 chain (vLLM) is planned with the chain of min(heads,
    medusa.max_draft_len) tokens it will run.
    """
    prof = profile if isinstance(profile, HardwareProfile) else load_profile(profile)
    shape = model if isinstance(model, ModelShape) else resolve_model(model)
    hf_bytes = _dir_bytes(Path(model)) if isinstance(model, str) and Path(model).is_dir() else None
    heads = prof.medusa.num_heads if num_medusa_heads is None else num_medusa_heads
    if heads < 1:
        raise InvalidInputError(f"--num-medusa-heads must be >= 1, got {heads}")
    facts = engine_facts.get(prof.engine)
    if facts.chain:  # one token per head along the top-1 path: the chain the build will write
        path = top1_chain(heads, prof.medusa.max_draft_len)
        medusa = prof.medusa.model_copy(update={"tree": path, "max_draft_len": len(path), "num_heads": heads})
        prof = prof.model_copy(update={"medusa": medusa})
    tree = prof.tree
    stats = tree_stats(tree)
    if heads != prof.medusa.num_heads:  # the heads decide: a note, or exit 2 if the tree needs a head they lack
        validate_tree(tree, num_heads=heads, max_draft_len=prof.medusa.max_draft_len, name=tree_name(prof.medusa.tree))
        logger.info(
            "profile %s says medusa.num_heads: %d; planning for %d heads (tree %s, depth %d, fits them)",
            prof.name,
            prof.medusa.num_heads,
            heads,
            tree_name(prof.medusa.tree),
            stats.depth,
        )
    drafting = f"top-1 chain of {stats.depth}" if facts.chain else f"{stats.nodes}-node tree"
    if tokens_per_step is None and accuracy is not None:
        table = validate_accuracy(accuracy)
        if len(table) < stats.depth:
            raise InvalidInputError(
                f"the accuracy table has {len(table)} head row(s); the {drafting} needs {stats.depth}",
                hint="Measure every head: medusa-trt tree accuracy --heads DIR.",
            )
        tps = expected_tokens_per_step(table, tree)
        source = f"from the head-accuracy table (expected tokens per step of the {drafting})"
    elif tokens_per_step is None:
        tps = pm.default_tokens_per_step(min(stats.depth, heads))
        source = (
            f"default: sum of {pm.ACCEPTANCE_PER_DEPTH}^d over depths 0..{min(stats.depth, heads)} "
            "(docs/perf-model.md); measure with medusa-trt bench"
        )
    else:
        if not 1.0 <= tokens_per_step <= stats.depth + 1:
            raise InvalidInputError(
                f"--tokens-per-step {tokens_per_step} is outside 1..{stats.depth + 1}",
                hint=f"A depth-{stats.depth} tree emits at most {stats.depth + 1} tokens a step.",
            )
        tps, source = float(tokens_per_step), "given"

    mem = memory_per_gpu(prof, shape, heads)
    disk = _still_to_write(disk_need(prof, shape, heads, hf_bytes), work_dir, hf_bytes is not None)
    free, where = _free_disk(work_dir or Path.cwd())
    if target_here is None:
        from medusa_trt.plan.hw import can_run

        target_here = can_run(prof)[0]
    pred = pm.predict(prof, shape, tps, num_medusa_heads=heads, context_len=context_len)
    checks = [
        ck.check_memory(mem, prof.hardware.device),
        ck.check_parallelism(prof),
        *ck.check_tp(shape, prof.parallelism.tp),
        ck.check_limits(prof, shape),
        ck.check_tree(tree, heads, prof.medusa.max_draft_len),
        ck.check_waste(prof, shape, tree, heads, context_len),
        ck.check_disk(disk, free, str(where), target_here),
        ck.check_prediction(pred, default_tokens_per_step=tokens_per_step is None and accuracy is None),
    ]
    tree_doc = {
        "spec": prof.medusa.tree if isinstance(prof.medusa.tree, str) else "inline",  # `plan --json`'s key: kept
        "nodes": stats.nodes,
        "depth": stats.depth,
        "max_draft_len": prof.medusa.max_draft_len,
        "drafting": facts.drafting.value,
    }
    return PreflightReport(
        prof, shape, heads, not any(c.verdict == "fail" for c in checks), mem, disk, checks, pred, source, tree_doc
    )
