"""The TensorRT-LLM engine (1.0-1.2, TensorRT backend): build with trtllm-build, serve with trtllm-serve.

Build: convert (or, for an FP8 profile with a BF16/FP16 source, [fetch] -> quantize.py with ModelOpt,
heads unquantized) -> trtllm-build -> runtime files -> serve config (``medusa.yaml``). Serve: ``trtllm-serve DIR/engine --backend
tensorrt ... --config DIR/medusa.yaml`` supervised as a child (``medusa_trt.supervise``); over several
nodes, the mpirun/srun lines to launch it. The command lines themselves are in ``commands``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts, fsio
from medusa_trt.engines import checkpoint_steps
from medusa_trt.engines.base import (
    CHECKPOINT,
    CONFIG_YAML,
    INTERNAL,
    SOURCES,
    BuildSteps,
    GenerateRequest,
    PlanContext,
    ServeCommand,
    ServeOptions,
    command_text,
    runtime_env,
)
from medusa_trt.engines.spec import BuildSpec, Source
from medusa_trt.engines.trtllm import commands
from medusa_trt.errors import MissingDependencyError
from medusa_trt.outputs import OwnedDir
from medusa_trt.steps import Step, StepKind

STARTUP_ENV = "MEDUSA_TRT_STARTUP_TIMEOUT"
FACTS = engine_facts.get("trtllm")
ENGINE_SUBDIR = str(FACTS.engine_subdir)  # trtllm-build's output: rank{r}.engine and config.json


def quantize_needed(spec: BuildSpec) -> bool:
    """FP8 profile, BF16/FP16 source: ModelOpt PTQ runs before the build (docs/sources.md, checkpoint format)."""
    return spec.quantization == "fp8" and spec.model.format != "modelopt-fp8"


class Trtllm:
    facts = FACTS
    name, title, capabilities = facts.name, facts.title, facts.capabilities
    engine_dir = ENGINE_SUBDIR
    config_file = CONFIG_YAML  # trtllm-serve --config: the speculative_config with the tree

    # --- build -----------------------------------------------------------------------------------

    def build_steps(self, ctx: PlanContext) -> BuildSteps:
        spec, notes = ctx.spec, []
        if quantize_needed(spec):
            notes.append(
                "FP8 profile with a BF16/FP16 source: quantize.py (ModelOpt PTQ, --qformat fp8) runs on the GPU "
                "host before trtllm-build; the Medusa heads stay unquantized (TRT-LLM merges them as float16)"
            )
            steps = _quantize_steps(ctx)
        else:
            if spec.model.format == "modelopt-fp8":
                notes.append(
                    "ModelOpt FP8 checkpoint: converted directly (weights stay FP8, heads from the checkpoint)"
                )
            steps = [checkpoint_steps.convert_step(ctx)]
        steps += [_build_step(ctx), checkpoint_steps.runtime_files_step(spec), _serve_config_step(spec)]
        return BuildSteps(steps, notes, {"medusa_yaml": medusa_yaml(spec)})

    def step_funcs(self, spec: BuildSpec, owned: OwnedDir) -> dict[str, Callable[[], None]]:
        """quantize and trtllm-build are processes; these run in process."""
        out = owned.root

        def serve_config() -> None:
            fsio.write_text(out / CONFIG_YAML, commands.dump_medusa_yaml(medusa_yaml(spec)))

        funcs = {**checkpoint_steps.funcs(spec, owned), "serve-config": serve_config}
        for role, src, kind in (("model", spec.model, "model"), ("medusa", spec.medusa, "heads")):
            if src is not None:
                funcs[f"fetch-{role}"] = _fetcher(src, out / SOURCES / role, kind)
        return funcs

    def check_tools(self, spec: BuildSpec) -> dict[str, str | None]:
        """Exit 3 before any work when TensorRT-LLM (or quantize.py) is missing; returns its version."""
        version = commands.check_trtllm(("trtllm-build",))
        if quantize_needed(spec):
            script = commands.quantize_script()
            if not script.is_file():
                raise MissingDependencyError(
                    f"{script} not found (TensorRT-LLM's examples, needed for FP8 quantization)",
                    hint=f"Set {commands.EXAMPLES_ENV} to the examples directory of your TensorRT-LLM checkout "
                    "(the NVIDIA container has /app/tensorrt_llm/examples).",
                )
        return {"tensorrt_llm": version}

    def manifest_fields(self, spec: BuildSpec, out: Path) -> dict[str, Any]:
        return {}  # the shared fields say everything serve_command reads

    # --- serve -----------------------------------------------------------------------------------

    def serve_command(self, engine_dir: Path, manifest: dict[str, Any], host: str, port: int) -> ServeCommand:
        """trtllm-serve for the built directory; over several nodes, the mpirun/srun launch lines."""
        flags, _extra = commands.serve_settings(_serve_settings(manifest))
        argv = commands.serve_argv(
            engine_dir=engine_dir / (manifest.get("engine_dir") or ENGINE_SUBDIR),
            tokenizer_dir=engine_dir / (manifest.get("tokenizer_dir") or "."),
            config_yaml=engine_dir / (manifest.get("config") or CONFIG_YAML),
            tp=int(manifest.get("tp", 1)),
            pp=int(manifest.get("pp", 1)),
            host=host,
            port=port,
            extra_flags=flags,
        )
        env = runtime_env(manifest)
        world, nodes, per_node = node_layout(manifest)
        lines, multi = [command_text(argv, env)], None
        if nodes > 1:
            multi = commands.multinode_lines(serve=argv, env=env, world_size=world, nodes=nodes, gpus_per_node=per_node)
            lines = [
                f"# {world} ranks over {nodes} nodes ({per_node} GPUs each); rank 0 serves http://{host}:{port}",
                f"# Open MPI (hostfile lists the {nodes} nodes, slots={per_node}):",
                multi["mpirun"],
                "# Slurm:",
                multi["srun"],
            ]
        return ServeCommand(
            engine=self.name,
            model_name=manifest.get("model_name") or engine_dir.name,
            argv=argv,
            env=env,
            child=True,
            description="trtllm-serve (TensorRT backend) with the Medusa --config; run by `medusa-trt run`",
            nodes=nodes,
            lines=lines,
            multinode=multi,
        )

    def serve(self, engine_dir: Path, command: ServeCommand, options: ServeOptions) -> int:
        from medusa_trt.supervise import Supervisor

        commands.check_trtllm(("trtllm-serve",), require_package=False)
        timeout = float(os.environ.get(STARTUP_ENV, "1800"))
        return Supervisor(
            command.argv,
            env=command.env,
            host=options.host,
            port=options.port,
            startup_timeout_s=timeout,
            on_ready=options.on_ready,
        ).run()

    def generate(self, path: Path, request: GenerateRequest) -> dict[str, Any]:
        """One generation on the engine directory's TRT-LLM checkpoint, by the reference runtime (which
        runs that checkpoint as is, on any machine): the same weights trtllm-build compiled."""
        from medusa_trt import engines

        return engines.get(engine_facts.CHECKPOINT_ENGINE).generate(path, request)


def medusa_yaml(spec: BuildSpec) -> dict[str, Any]:
    """The trtllm-serve --config document: speculative_config (the heads, the tree) and the profile's
    serve.extra_llm_api_options."""
    _flags, extra = commands.serve_settings(spec.profile.serve)
    return commands.medusa_yaml_doc(
        max_draft_len=spec.max_draft_len, num_medusa_heads=spec.num_medusa_heads, tree=spec.tree, extra=extra
    )


def _serve_config_step(spec: BuildSpec) -> Step:
    return Step(
        "serve-config",
        f"{CONFIG_YAML}: the trtllm-serve --config YAML (speculative_config with the tree)",
        [INTERNAL, "write", CONFIG_YAML],
        inputs={"yaml": medusa_yaml(spec)},
        outputs=[CONFIG_YAML],
        needs={"gpus": 0, "host": "any"},
        kind=StepKind.PYTHON,
    )


def _serve_settings(manifest: dict[str, Any]) -> Any:
    """The profile's serve section as an object (the manifest keeps the profile as JSON)."""
    from medusa_trt.config.profile import Serve

    serve = (manifest.get("profile", {}).get("profile") or {}).get("serve") or {}
    return Serve.model_validate(serve)


def node_layout(manifest: dict[str, Any]) -> tuple[int, int, int]:
    """(world size, nodes, GPUs per node): hardware.count is the GPUs of one node."""
    world = int(manifest.get("tp", 1)) * int(manifest.get("pp", 1))
    hardware = (manifest.get("profile", {}).get("profile") or {}).get("hardware") or {}
    per_node = int(hardware.get("count", world)) or world
    return world, max(1, math.ceil(world / per_node)), min(per_node, world)


def _build_step(ctx: PlanContext) -> Step:
    spec, out = ctx.spec, ctx.out
    argv = commands.build_argv(
        checkpoint_dir=out / CHECKPOINT,
        output_dir=out / ENGINE_SUBDIR,
        world_size=spec.world_size,
        limits=spec.limits,
        profile_flags=spec.profile.trtllm_build_args(),
    )
    return Step(
        "build",
        "TensorRT engines (rank{r}.engine) with trtllm-build",
        argv,
        inputs={"checkpoint_dir": CHECKPOINT},
        outputs=[ENGINE_SUBDIR],
        needs=_build_needs(ctx),
        kind=StepKind.PROCESS,
        notes=["max_draft_len is inherited from the checkpoint (not passed)"],
    )


def _fetcher(src: Source, local: Path, kind: str) -> Callable[[], None]:
    return lambda: fetch(src.given, src.revision, local, kind)


def fetch(repo: str, revision: str | None, local: Path, kind: str) -> None:
    """A fetch step: download through the converter's hub code (pinned commit, clear errors for gated
    or missing repos, HF_HOME/HF_HUB_OFFLINE) and link the snapshot at ``local`` for quantize.py."""
    from medusa_trt.checkpoint.sources import resolve_source

    snapshot = resolve_source(repo, kind=kind, revision=revision).path
    with fsio.atomic_path(local, kind="other") as tmp:
        tmp.symlink_to(snapshot, target_is_directory=True)


def _fetch_needs(ctx: PlanContext, role: str) -> dict[str, Any]:
    if not ctx.sizes:
        return {"host": "any"}
    gib = ctx.source_gib() if role == "model" else ctx.sizes["heads"]  # the heads alone, not the base model
    return {"disk_gib": round(gib, 1), "gpus": 0, "host": "any (network)"}


def _quantize_needs(ctx: PlanContext) -> dict[str, Any]:
    if not ctx.sizes:
        return {"host": "GPU host"}
    # ModelOpt loads the whole BF16 model across the visible GPUs for calibration
    dense, hardware = ctx.sizes["base_dense"], ctx.spec.profile.hardware
    gpus = min(hardware.count, max(1, math.ceil(dense / (0.85 * float(hardware.memory_gib)))))
    return {
        "disk_gib": ctx.checkpoint_gib(),
        "gpu_memory_gib_total": round(dense * 1.1, 1),
        "gpus": gpus,
        "host_memory_gib": round(dense, 1),
        "host": f"GPU host ({ctx.gpu})",
    }


def _build_needs(ctx: PlanContext) -> dict[str, Any]:
    if not ctx.sizes:
        return {"host": "GPU host"}
    ckpt, world = ctx.checkpoint_gib(), ctx.spec.world_size
    return {
        "disk_gib": round(float(ctx.disk().get("engine", ckpt)), 1),
        "host_memory_gib": ckpt,
        "gpus": world,
        "host": f"GPU host ({world}x {ctx.gpu}, same GPU model as serving)",
    }


def _quantize_steps(ctx: PlanContext) -> list[Step]:
    """[fetch-model] [fetch-medusa] quantize: quantize.py needs local files."""
    spec, out = ctx.spec, ctx.out
    steps: list[Step] = []
    model_dir, medusa_dir = str(spec.model.local or ""), str(spec.medusa.local or "") if spec.medusa else ""
    for role, src in (("model", spec.model), ("medusa", spec.medusa)):
        if src is None or src.local is not None:
            continue
        local = out / SOURCES / role
        steps.append(
            Step(
                f"fetch-{role}",
                f"download {src.given} (quantize.py needs local files)",
                ["hf", "download", src.given, "--revision", src.revision or "main", "--local-dir", str(local)],
                inputs={"repo": src.given, "revision": src.revision},
                outputs=[f"{SOURCES}/{role}"],
                needs=_fetch_needs(ctx, role),
                kind=StepKind.PYTHON,
            )
        )
        if role == "model":
            model_dir = str(local)
        else:
            medusa_dir = str(local)
    argv = commands.quantize_argv(
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
    where, source = commands.examples_dir()
    steps.append(
        Step(
            "quantize",
            "FP8 TRT-LLM checkpoint (ModelOpt PTQ, 512 calibration samples), heads unquantized",
            argv,
            inputs={**checkpoint_steps.source_inputs(spec), "model_dir": model_dir, "medusa_dir": medusa_dir},
            outputs=[CHECKPOINT],
            needs=_quantize_needs(ctx),
            kind=StepKind.PROCESS,
            notes=[
                f"TensorRT-LLM examples directory: {where} ({source}; set {commands.EXAMPLES_ENV})",
                "needs the GPU host and the calibration dataset (cnn_dailymail) reachable",
            ],
        )
    )
    return steps


ENGINE = Trtllm()
