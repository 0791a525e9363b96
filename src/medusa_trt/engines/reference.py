"""The reference engine: the PyTorch reference runtime (``medusa_trt.runtime``) on any machine.

Build: convert -> runtime files -> validate (load the checkpoint at the profile's tp and run one
forward, as `run` would). Serve: the built-in OpenAI server (``medusa_trt.serve``), in this process.
Generate: ``runtime.once.generate_text`` under the step watchdog. A converted checkpoint (from
`convert`, no manifest) is served and generated from as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts
from medusa_trt.engines import checkpoint_steps
from medusa_trt.engines.base import (
    CHECKPOINT,
    BuildSteps,
    GenerateRequest,
    PlanContext,
    ServeCommand,
    ServeOptions,
    command_text,
    runtime_env,
)
from medusa_trt.engines.spec import BuildSpec
from medusa_trt.errors import CheckpointError, MedusaTrtError
from medusa_trt.outputs import OwnedDir
from medusa_trt.steps import Step, StepKind


class Reference:
    facts = engine_facts.get("reference")
    name, title, capabilities = facts.name, facts.title, facts.capabilities
    engine_dir = facts.engine_subdir  # None: it runs the TRT-LLM checkpoint itself
    config_file = None  # the tree and the profile are in the manifest

    def build_steps(self, ctx: PlanContext) -> BuildSteps:
        steps = [checkpoint_steps.convert_step(ctx), checkpoint_steps.runtime_files_step(ctx.spec)]
        return BuildSteps([*steps, _validate_step(ctx)])

    def step_funcs(self, spec: BuildSpec, owned: OwnedDir) -> dict[str, Callable[[], None]]:
        return {**checkpoint_steps.funcs(spec, owned), "validate": lambda: validate(spec, owned.root)}

    def check_tools(self, spec: BuildSpec) -> dict[str, str | None]:
        return {}  # torch and transformers are dependencies of medusa-trt itself

    def manifest_fields(self, spec: BuildSpec, out: Path) -> dict[str, Any]:
        return {}  # the shared fields say everything serve_command reads

    def serve_command(self, engine_dir: Path, manifest: dict[str, Any], host: str, port: int) -> ServeCommand:
        argv = ["medusa-trt", "run", str(engine_dir), "--host", host, "--port", str(port)]
        env = runtime_env(manifest)
        return ServeCommand(
            engine=self.name,
            model_name=manifest.get("model_name") or engine_dir.name,
            argv=argv,
            env=env,
            child=False,
            description="the reference OpenAI server; run by `medusa-trt run`",
            lines=[command_text(argv, env)],
        )

    def serve(self, engine_dir: Path, command: ServeCommand, options: ServeOptions) -> int:
        # the profile's runtime environment, as trtllm-serve gets it (set before torch loads: OMP_NUM_THREADS)
        os.environ.update(command.env)
        from medusa_trt.serve.server import run_server

        return int(
            run_server(
                engine_dir,
                options.host,
                options.port,
                options.device,
                command.model_name,
                tree=options.tree,
                adapt=options.adapt,
                guard=options.guard,
                announce=options.announce,
            )
        )

    def generate(self, path: Path, request: GenerateRequest) -> dict[str, Any]:
        from contextlib import nullcontext

        from medusa_trt.runtime import load_engine
        from medusa_trt.runtime.once import generate_text
        from medusa_trt.runtime.watchdog import run_guarded

        status = request.status("loading the reference engine") if request.status else nullcontext()
        with status:
            engine = load_engine(path, device=request.device, tree=request.tree, adapt=request.adapt)
        with engine:
            # on a thread under the watchdog: a dead or hung tp rank, or a signal, ends the run in seconds
            return run_guarded(
                engine,
                lambda clock: generate_text(
                    engine,
                    request.prompt,
                    request.params,
                    medusa=request.medusa,
                    chat=request.chat,
                    on_text=request.on_text,
                    clock=clock,
                ),
                first_timeout_s=request.first_step_timeout_s,
                step_timeout_s=request.step_timeout_s,
            )


def _validate_step(ctx: PlanContext) -> Step:
    """The reference engine's "build": load the checkpoint and run one forward, as `run` would."""
    spec = ctx.spec
    return Step(
        "validate",
        f"load the checkpoint and run one forward at tp {spec.tp}",
        ["medusa-trt", "run", str(ctx.out / CHECKPOINT), "--prompt", "hello", "--max-tokens", "1"],
        env=spec.runtime_env,
        inputs={"checkpoint_dir": CHECKPOINT, "tp": spec.tp},
        # the checkpoint loaded in memory, and the interpreter's own
        needs={"host_memory_gib": round(ctx.sizes["checkpoint"] * 1.2 + 0.1, 2), "gpus": 0, "host": "any"}
        if ctx.sizes
        else {"host": "any"},
        kind=StepKind.PYTHON,
    )


def validate(spec: BuildSpec, out: Path) -> None:
    """Load the checkpoint on the profile's tp and run one forward (prefill + one step)."""
    from medusa_trt.runtime import SamplingParams, load_engine

    try:
        engine = load_engine(out / CHECKPOINT, device="cpu", tree=spec.tree)
    except MedusaTrtError:
        raise
    except Exception as e:  # a broken checkpoint surfaces here, before anyone serves it
        raise CheckpointError(
            f"the converted checkpoint does not load: {e.__class__.__name__}: {e}",
            hint="Rebuild with --force; report a bug if it persists.",
        ) from e
    try:
        if engine.tp != spec.tp:
            raise CheckpointError(f"validation ran at tp {engine.tp}, the profile needs tp {spec.tp}")
        ids = engine.tokenizer.encode("Hello")
        gen = engine.generate(ids, SamplingParams(max_tokens=1), medusa=engine.has_medusa)
        tokens = [t for chunk in gen for t in chunk.token_ids]
        if not tokens:
            raise CheckpointError("validation forward produced no token", hint="Rebuild with --force.")
    finally:
        engine.close()


ENGINE = Reference()
