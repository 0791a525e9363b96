"""The vLLM engine: the heads in vLLM's native layout, served by vLLM's OpenAI server (a top-1 chain).

Build: model-ref (the model by reference, a hub id pinned to its commit) -> heads (vLLM-native,
biases kept). Serve: ``python -m vllm.entrypoints.openai.api_server ...`` supervised as a child
(``medusa_trt.supervise``), the API key through ``VLLM_API_KEY``. Generate: that server for one
request, tokens per step from vLLM's speculative-decoding counters. Command lines are in ``commands``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts, records
from medusa_trt.engines.base import (
    BuildSteps,
    GenerateRequest,
    PlanContext,
    ServeCommand,
    ServeOptions,
    command_text,
)
from medusa_trt.engines.spec import BuildSpec
from medusa_trt.engines.vllm import commands
from medusa_trt.outputs import OwnedDir


class Vllm:
    facts = engine_facts.get("vllm")
    name, title, capabilities = facts.name, facts.title, facts.capabilities
    engine_dir = facts.engine_subdir  # None: the heads are in the manifest's vllm.heads_dir
    config_file = None  # its server flags are in the manifest's vllm.args

    def build_steps(self, ctx: PlanContext) -> BuildSteps:
        commands.check_sources(ctx.spec)
        steps, notes = commands.build_steps(ctx.spec, ctx.out)
        return BuildSteps(steps, notes)

    def step_funcs(self, spec: BuildSpec, owned: OwnedDir) -> dict[str, Callable[[], None]]:
        out = owned.root

        def model_ref() -> None:
            commands.write_model_ref(spec, out)

        def heads() -> None:
            commands.write_heads(spec, out)

        return {"model-ref": model_ref, "heads": heads}

    def check_tools(self, spec: BuildSpec) -> dict[str, str | None]:
        return {}  # the build writes files only; `run` finds vLLM's interpreter

    def manifest_fields(self, spec: BuildSpec, out: Path) -> dict[str, Any]:
        # the model reference the model-ref step pinned, once it ran
        ref = commands.read_model_ref(out) if records.MODEL_REF.path(out).is_file() else None
        section = commands.manifest_section(spec, out, ref)
        return {
            "checkpoint_dir": None,
            "vllm": section,
            # what `run` starts, less --host/--port (run's) and with the interpreter it finds then
            "serve": {
                "argv": [commands.vllm_python() or "python", "-m", commands.SERVER_MODULE, *section["args"]],
                "env": spec.runtime_env,
            },
        }

    def serve_command(self, engine_dir: Path, manifest: dict[str, Any], host: str, port: int) -> ServeCommand:
        argv, env = commands.serve_command(engine_dir, manifest, host, port)
        return ServeCommand(
            engine=self.name,
            model_name=manifest.get("model_name") or engine_dir.name,
            argv=argv,
            env=env,
            child=True,
            description="vLLM's OpenAI server with Medusa; run by `medusa-trt run`",
            lines=[command_text(argv, env)],
        )

    def serve(self, engine_dir: Path, command: ServeCommand, options: ServeOptions) -> int:
        argv = [commands.require_python(), *command.argv[1:]]  # the interpreter found now, not at build
        sup = commands.supervise(
            argv, command.env, options.host, options.port, api_key=options.guard.api_key, on_ready=options.on_ready
        )
        return int(sup.run())

    def generate(self, path: Path, request: GenerateRequest) -> dict[str, Any]:
        from contextlib import nullcontext

        manifest = records.read(records.ENGINE, path)
        with request.status("starting vLLM") if request.status else nullcontext():
            return commands.generate(
                path.resolve(),
                manifest,
                request.prompt,
                request.params,
                medusa=request.medusa,
                chat=request.chat,
                on_text=request.on_text,
            )


ENGINE = Vllm()
