"""The ordered steps of a build, from a resolved BuildSpec: what `build --dry-run` prints and `build` runs.

The engine (``engines.get(spec.engine)``) lays out its own steps (``Engine.build_steps``, e.g.
TensorRT-LLM: [fetch] -> convert or quantize -> trtllm-build -> runtime files -> serve config;
reference: convert -> runtime files -> validate; the two share ``engines.checkpoint_steps``); this
module adds what every build shares: the manifest step, the serve step `run` would use
(``Engine.serve_command``), the size estimates and the manifest's fields from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import engines
from medusa_trt.engines.base import CHECKPOINT, GIB, INTERNAL, MANIFEST, TREE_FILE, PlanContext
from medusa_trt.engines.spec import BuildSpec
from medusa_trt.steps import Step, StepKind

if TYPE_CHECKING:
    from medusa_trt.config.model import ModelShape


@dataclass
class BuildPlan:
    spec: BuildSpec
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] | None = None  # the `plan` preflight document, when it ran
    documents: dict[str, Any] = field(default_factory=dict)  # the engine's own files, e.g. TRT-LLM's medusa_yaml

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "notes": self.notes,
            "checks": self.checks,
            "steps": [s.to_json() for s in self.steps],
            **self.documents,
            "layout": layout(self.spec),
        }


def layout(spec: BuildSpec) -> dict[str, str | None]:
    return {
        "checkpoint_dir": CHECKPOINT,
        "engine_dir": engines.get(spec.engine).engine_dir,
        "tree": TREE_FILE,
        "config": engines.get(spec.engine).config_file,
        "manifest": MANIFEST,
        "tokenizer_dir": ".",
    }


# --- size estimates (the same arithmetic as `plan`'s memory check, per step) ------------------------


def known_model(spec: BuildSpec) -> ModelShape | None:
    """The model's shape: read from a local directory, else a preset matching the hub id's name; None if unknown."""
    from medusa_trt.config.model import PRESETS, resolve_model

    if spec.model.local is not None:
        return resolve_model(str(spec.model.local))
    name = spec.model.given.split("/")[-1].lower()
    matches = [p for p in PRESETS if name.startswith(p)]
    return PRESETS[max(matches, key=len)] if matches else None


def estimates(spec: BuildSpec) -> dict[str, float]:
    """GiB of each artefact; empty when the model's shape is unknown (a hub id with no preset)."""
    m = known_model(spec)
    if m is None:
        return {}
    d, v = m.hidden_size, m.vocab_size
    embed = v * d
    lm_head = 0 if m.tie_word_embeddings else v * d
    blocks = m.num_params - embed - lm_head
    heads = spec.num_medusa_heads * (spec.num_medusa_layers * (d * d + d) + v * d)
    wide = 4 if spec.dtype == "float32" else 2
    replicated = (spec.tp - 1) * embed * wide  # the full embedding is written on every rank
    linear = 1 if spec.quantization == "fp8" else wide
    return {
        "source": (m.num_params * 2 + heads * 2) / GIB,
        "heads": heads * 2 / GIB,
        "checkpoint": (blocks * linear + (embed + lm_head + heads) * wide + replicated) / GIB,
        "base_dense": (m.num_params + heads) * wide / GIB,
    }


# --- the plan ------------------------------------------------------------------------------------


def make_build_plan(spec: BuildSpec, *, checks: dict[str, Any] | None = None) -> BuildPlan:
    """Every step of the build (and the serve step `run` would use), nothing executed."""
    ctx = PlanContext(spec, spec.output.resolve(), estimates(spec), checks)
    part = engines.get(spec.engine).build_steps(ctx)
    steps = [
        *part.steps,
        Step(
            "manifest",
            f"write {MANIFEST} (inputs, versions, commands, timings)",
            [INTERNAL, "write", MANIFEST],
            outputs=[MANIFEST],
            kind=StepKind.PYTHON,
        ),
        serve_step(spec, ctx.out, needs=_serve_needs(ctx)),
    ]
    notes = [f"source format: {spec.model.format}", *spec.model.notes, *part.notes]
    return BuildPlan(spec, steps, notes, checks, part.documents)


def _serve_needs(ctx: PlanContext) -> dict[str, Any]:
    """The GPUs serving takes, and the memory per GPU `plan` found (its memory check), when it ran."""
    world = ctx.spec.world_size
    if not ctx.sizes:  # the profile's devices still say where: "8x H200", "1x cpu"
        return {"host": f"{world}x {ctx.gpu}"}
    per_gpu = (ctx.checks or {}).get("memory_gib", {})
    total = per_gpu.get("total") if isinstance(per_gpu, dict) else None
    return {"gpus": world, "gpu_memory_gib_per_gpu": total, "host": f"{world}x {ctx.gpu}"}


def spec_record(spec: BuildSpec) -> dict[str, Any]:
    """The manifest's fields that come from the spec alone (the build adds inputs, tools, commands)."""
    return {
        "engine": spec.engine,
        "checkpoint_dir": CHECKPOINT,
        "engine_dir": engines.get(spec.engine).engine_dir,
        "tokenizer_dir": ".",
        "tree_file": TREE_FILE,
        "config": engines.get(spec.engine).config_file,
        "model_name": spec.model_name,
        "tree": spec.tree,
        "num_medusa_heads": spec.num_medusa_heads,
        "num_medusa_layers": spec.num_medusa_layers,
        "max_draft_len": spec.max_draft_len,
        "tp": spec.tp,
        "pp": spec.pp,
        "dtype": spec.dtype,
        "quantization": spec.quantization,
        "kv_cache_dtype": spec.kv_cache_dtype,
        "limits": spec.limits,
        "profile": {"name": spec.profile.name, "id": spec.profile.id, "profile": spec.profile.model_dump(mode="json")},
        "runtime_env": spec.runtime_env,
        "sources": spec.sources,
    }


def serve_step(
    spec: BuildSpec, out: Path, *, host: str | None = None, port: int | None = None, needs: dict[str, Any] | None = None
) -> Step:
    """The command `medusa-trt run` supervises (not run by build): the engine's serve command for the
    manifest this build writes."""
    engine = engines.get(spec.engine)
    manifest = {**spec_record(spec), **engine.manifest_fields(spec, out)}
    cmd = engine.serve_command(out, manifest, host or spec.profile.serve.host, port or spec.profile.serve.port)
    return Step(
        "serve",
        cmd.description,
        cmd.argv,
        env=cmd.env,
        inputs={"engine_dir": str(out)},
        needs=needs or {},
        kind=StepKind.SERVE,
    )
