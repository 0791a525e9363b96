"""The ordered steps of a build, from a resolved BuildSpec: what `build --dry-run` prints and `build` runs.

TensorRT-LLM profile, BF16/FP16 source: convert -> trtllm-build -> runtime files -> manifest (+ serve).
TensorRT-LLM FP8 profile, BF16/FP16 source: [fetch] -> quantize (ModelOpt FP8, heads unquantized) ->
trtllm-build -> ... . A ModelOpt FP8 checkpoint converts directly. Reference profile: convert ->
runtime files -> validate (load + one forward at the profile's tp) -> manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import records
from medusa_trt.engine import trtllm
from medusa_trt.engine.spec import BuildSpec
from medusa_trt.steps import Step, StepKind

if TYPE_CHECKING:
    from medusa_trt.config.model import ModelSpec

GIB = 1024**3
CHECKPOINT, ENGINE = "checkpoint", "engine"
TREE_FILE, CONFIG_YAML = "medusa_tree.yaml", "medusa.yaml"
MANIFEST = records.ENGINE.filename
INTERNAL = "(in-process)"  # argv[0] of steps medusa-trt runs itself


@dataclass
class BuildPlan:
    spec: BuildSpec
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    checks: dict[str, Any] | None = None  # the `plan` preflight document, when it ran

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "notes": self.notes,
            "checks": self.checks,
            "steps": [s.to_json() for s in self.steps],
            "medusa_yaml": medusa_yaml(self.spec),
            "layout": layout(self.spec),
        }


def layout(spec: BuildSpec) -> dict[str, str | None]:
    return {
        "checkpoint_dir": CHECKPOINT,
        "engine_dir": ENGINE if spec.engine == "trtllm" else None,
        "tree": TREE_FILE,
        "config": CONFIG_YAML,
        "manifest": MANIFEST,
        "tokenizer_dir": ".",
    }


def medusa_yaml(spec: BuildSpec) -> dict[str, Any]:
    _flags, extra = trtllm.serve_settings(spec.profile.serve)
    return trtllm.medusa_yaml_doc(
        max_draft_len=spec.max_draft_len, num_medusa_heads=spec.num_medusa_heads, tree=spec.tree, extra=extra
    )


# --- size estimates (the same arithmetic as `plan`'s memory check, per step) ------------------------


def known_model(spec: BuildSpec) -> ModelSpec | None:
    """The model's shape: read from a local directory, else a preset matching the hub id's name; None if unknown."""
    from medusa_trt.config.model import PRESETS, resolve_model

    if spec.model.local is not None:
        return resolve_model(str(spec.model.local))
    name = spec.model.spec.split("/")[-1].lower()
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


def _needs(spec: BuildSpec, est: dict[str, float], step: str, checks: dict[str, Any] | None) -> dict[str, Any]:
    gpu_mem = float(spec.profile.hardware.memory_gib)
    gpu = spec.profile.hardware.gpu or "cpu"
    if not est:
        return {"host": "GPU host" if step in ("quantize", "build", "serve") else "any"}
    disk = (checks or {}).get("disk_gib") or {}
    # `plan`'s disk check when it ran (the same numbers `medusa-trt plan` prints), else our own estimate
    ckpt = round(float(disk.get("trtllm_checkpoint", est["checkpoint"])), 1)
    if "hf_checkpoint" in disk:
        est = {**est, "source": float(disk["hf_checkpoint"])}
    if step == "fetch-model":
        return {"disk_gib": round(est["source"], 1), "gpus": 0, "host": "any (network)"}
    if step == "fetch-medusa":  # the heads alone, not the base model
        return {"disk_gib": round(est["heads"], 1), "gpus": 0, "host": "any (network)"}
    if step == "convert":
        return {"disk_gib": ckpt, "host_memory_gib": 2.0, "gpus": 0, "host": "any (streams one tensor at a time)"}
    if step == "quantize":
        # ModelOpt loads the whole BF16 model across the visible GPUs for calibration
        gpus = min(spec.profile.hardware.count, max(1, math.ceil(est["base_dense"] / (0.85 * gpu_mem))))
        return {
            "disk_gib": ckpt,
            "gpu_memory_gib_total": round(est["base_dense"] * 1.1, 1),
            "gpus": gpus,
            "host_memory_gib": round(est["base_dense"], 1),
            "host": f"GPU host ({gpu})",
        }
    if step == "build":
        return {
            "disk_gib": round(float(disk.get("engine", ckpt)), 1),
            "host_memory_gib": ckpt,
            "gpus": spec.world_size,
            "host": f"GPU host ({spec.world_size}x {gpu}, same GPU model as serving)",
        }
    if step == "validate":
        return {"host_memory_gib": round(est["checkpoint"] * 1.2 + 0.1, 2), "gpus": 0, "host": "any"}
    if step == "serve":
        per_gpu = (checks or {}).get("memory_gib", {})
        total = per_gpu.get("total") if isinstance(per_gpu, dict) else None
        return {"gpus": spec.world_size, "gpu_memory_gib_per_gpu": total, "host": f"{spec.world_size}x {gpu}"}
    return {}


# --- steps ----------------------------------------------------------------------------------------


def _convert_argv(spec: BuildSpec, out: Path, *, with_heads: bool) -> list[str]:
    argv = [
        "medusa-trt",
        "convert",
        "--model",
        str(spec.model.local or spec.model.spec),
        "--output",
        str(out / CHECKPOINT),
    ]
    if with_heads and spec.medusa is not None:
        argv += ["--medusa", str(spec.medusa.local or spec.medusa.spec)]
    argv += [
        "--tp",
        str(spec.tp),
        "--pp",
        str(spec.pp),
        "--dtype",
        spec.dtype,
        "--num-medusa-heads",
        str(spec.num_medusa_heads),
        "--max-draft-len",
        str(spec.max_draft_len),
        "--workers",
        str(spec.convert_workers),
    ]
    if spec.model.local is None and spec.model.revision:
        argv += ["--revision", spec.model.revision]
    return argv


def _source_inputs(spec: BuildSpec) -> dict[str, Any]:
    inputs: dict[str, Any] = {"model": spec.model.spec, "model_revision": spec.model.revision}
    if spec.model.local is not None:
        inputs["model_dir"] = str(spec.model.local)
    if spec.medusa is not None:
        inputs["medusa"] = spec.medusa.spec
        inputs["medusa_revision"] = spec.medusa.revision
        if spec.medusa.local is not None:
            inputs["medusa_dir"] = str(spec.medusa.local)
    return inputs


def make_build_plan(spec: BuildSpec, *, checks: dict[str, Any] | None = None) -> BuildPlan:
    """Every step of the build (and the serve step `run` would use), nothing executed."""
    out = spec.output.resolve()
    est = estimates(spec)
    steps: list[Step] = []
    notes: list[str] = [f"source format: {spec.model.format}", *spec.model.notes]
    if spec.engine == "vllm":
        from medusa_trt.engine import vllm

        vllm.check_sources(spec)
        steps, more = vllm.build_steps(spec, out)
        return BuildPlan(spec, steps, notes + more, checks)
    if spec.quantize_needed:
        notes.append(
            "FP8 profile with a BF16/FP16 source: quantize.py (ModelOpt PTQ, --qformat fp8) runs on the GPU "
            "host before trtllm-build; the Medusa heads stay unquantized (TRT-LLM merges them as float16)"
        )
        steps += _quantize_steps(spec, out, est, checks)
    else:
        if spec.model.format == "modelopt-fp8":
            notes.append("ModelOpt FP8 checkpoint: converted directly (weights stay FP8, heads from the checkpoint)")
        steps.append(_convert_step(spec, out, _needs(spec, est, "convert", checks)))
    if spec.engine == "trtllm":
        steps.append(_trtllm_build_step(spec, out, _needs(spec, est, "build", checks)))
    steps.append(_runtime_files_step(spec))
    if spec.engine == "reference":
        steps.append(_validate_step(spec, out, _needs(spec, est, "validate", checks)))
    steps.append(
        Step(
            "manifest",
            f"write {MANIFEST} (inputs, versions, commands, timings)",
            [INTERNAL, "write", MANIFEST],
            outputs=[MANIFEST],
            kind=StepKind.PYTHON,
        )
    )
    steps.append(serve_step(spec, out, needs=_needs(spec, est, "serve", checks)))
    return BuildPlan(spec, steps, notes, checks)


def _convert_step(spec: BuildSpec, out: Path, needs: dict[str, Any]) -> Step:
    return Step(
        "convert",
        "TRT-LLM checkpoint (config.json + rank{r}.safetensors) from the HF model and heads",
        _convert_argv(spec, out, with_heads=spec.model.format not in ("modelopt-fp8", "modelopt")),
        inputs={
            **_source_inputs(spec),
            "tp": spec.tp,
            "pp": spec.pp,
            "dtype": spec.dtype,
            "num_medusa_heads": spec.num_medusa_heads,
            "max_draft_len": spec.max_draft_len,
        },
        outputs=[CHECKPOINT],
        needs=needs,
        kind=StepKind.PYTHON,
    )


def _trtllm_build_step(spec: BuildSpec, out: Path, needs: dict[str, Any]) -> Step:
    argv = trtllm.build_argv(
        checkpoint_dir=out / CHECKPOINT,
        output_dir=out / ENGINE,
        world_size=spec.world_size,
        limits=spec.limits,
        profile_flags=spec.profile.trtllm_build_args(),
    )
    return Step(
        "build",
        "TensorRT engines (rank{r}.engine) with trtllm-build",
        argv,
        inputs={"checkpoint_dir": CHECKPOINT},
        outputs=[ENGINE],
        needs=needs,
        kind=StepKind.PROCESS,
        notes=["max_draft_len is inherited from the checkpoint (not passed)"],
    )


def _runtime_files_step(spec: BuildSpec) -> Step:
    return Step(
        "runtime-files",
        "tokenizer, medusa_tree.yaml and the trtllm-serve --config YAML",
        [INTERNAL, "write", "tokenizer files", TREE_FILE, CONFIG_YAML],
        inputs={"checkpoint_dir": CHECKPOINT, "yaml": medusa_yaml(spec)},
        outputs=[TREE_FILE, CONFIG_YAML],
        needs={"gpus": 0, "host": "any"},
        kind=StepKind.PYTHON,
    )


def _validate_step(spec: BuildSpec, out: Path, needs: dict[str, Any]) -> Step:
    """The reference engine's "build": load the checkpoint and run one forward, as `run` would."""
    return Step(
        "validate",
        f"load the checkpoint and run one forward at tp {spec.tp}",
        ["medusa-trt", "run", str(out / CHECKPOINT), "--prompt", "hello", "--max-tokens", "1"],
        env=spec.runtime_env,
        inputs={"checkpoint_dir": CHECKPOINT, "tp": spec.tp},
        needs=needs,
        kind=StepKind.PYTHON,
    )


def _quantize_steps(spec: BuildSpec, out: Path, est: dict[str, float], checks: dict[str, Any] | None) -> list[Step]:
    steps: list[Step] = []
    model_dir, medusa_dir = str(spec.model.local or ""), str(spec.medusa.local or "") if spec.medusa else ""
    for role, src in (("model", spec.model), ("medusa", spec.medusa)):
        if src is None or src.local is not None:
            continue
        local = out / "sources" / role
        steps.append(
            Step(
                f"fetch-{role}",
                f"download {src.spec} (quantize.py needs local files)",
                ["hf", "download", src.spec, "--revision", src.revision or "main", "--local-dir", str(local)],
                inputs={"repo": src.spec, "revision": src.revision},
                outputs=[f"sources/{role}"],
                needs=_needs(spec, est, f"fetch-{role}", checks),
                kind=StepKind.PYTHON,
            )
        )
        if role == "model":
            model_dir = str(local)
        else:
            medusa_dir = str(local)
    argv = trtllm.quantize_argv(
        model_dir=model_dir,
        medusa_dir=medusa_dir,
        output_dir=out / CHECKPOINT,
        dtype=spec.dtype,
        tp=spec.tp,
        pp=spec.pp,
        num_medusa_heads=spec.num_medusa_heads,
        num_medusa_layers=spec.num_medusa_layers,
        max_draft_len=spec.max_draft_len,
        kv_cache_dtype=spec.kv_cache_dtype,
    )
    where, source = trtllm.examples_dir()
    steps.append(
        Step(
            "quantize",
            "FP8 TRT-LLM checkpoint (ModelOpt PTQ, 512 calibration samples), heads unquantized",
            argv,
            inputs={**_source_inputs(spec), "model_dir": model_dir, "medusa_dir": medusa_dir},
            outputs=[CHECKPOINT],
            needs=_needs(spec, est, "quantize", checks),
            kind=StepKind.PROCESS,
            notes=[
                f"TensorRT-LLM examples directory: {where} ({source}; set {trtllm.EXAMPLES_ENV})",
                "needs the GPU host and the calibration dataset (cnn_dailymail) reachable",
            ],
        )
    )
    return steps


def serve_step(
    spec: BuildSpec, out: Path, *, host: str | None = None, port: int | None = None, needs: dict[str, Any] | None = None
) -> Step:
    """The command `medusa-trt run` supervises (not run by build)."""
    host = host or spec.profile.serve.host
    port = port or spec.profile.serve.port
    if spec.engine == "trtllm":
        flags, _extra = trtllm.serve_settings(spec.profile.serve)
        argv = trtllm.serve_argv(
            engine_dir=out / ENGINE,
            tokenizer_dir=out,
            config_yaml=out / CONFIG_YAML,
            tp=spec.tp,
            pp=spec.pp,
            host=host,
            port=port,
            extra_flags=flags,
        )
        desc = "trtllm-serve (TensorRT backend) with the Medusa --config; run by `medusa-trt run`"
    else:
        argv = ["medusa-trt", "run", str(out), "--host", host, "--port", str(port)]
        desc = "the reference OpenAI server; run by `medusa-trt run`"
    return Step(
        "serve",
        desc,
        argv,
        env=spec.runtime_env,
        inputs={"engine_dir": str(out)},
        needs=needs or {},
        kind=StepKind.SERVE,
    )
