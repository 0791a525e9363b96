"""The engine interface: what every engine (TensorRT-LLM, the reference runtime, vLLM) provides.

An engine is one module (or package) ``medusa_trt.engines.<name>`` exposing ``ENGINE``, an object
with the attributes and methods of :class:`Engine`, and one row in ``medusa_trt.engine_facts``.
Nothing else dispatches on an engine's name: ``build``, ``run``, ``run --prompt``, ``bench --engine`` (which
starts ``medusa-trt run``) and ``plan`` all go through ``engines.get(name)``.

The contract, method by method:

- ``facts``: its row in ``medusa_trt.engine_facts`` (what the layers below ``engines/`` know of it:
  profile rules, `plan`'s model). ``name`` (the profile's ``engine:`` value and the manifest's
  ``"engine"`` key), ``title`` (the name shown to people, "TensorRT-LLM"), ``capabilities`` (what the
  engine can do, :class:`Capabilities`) and ``engine_dir`` (the sub-directory of engine files its
  build writes, the manifest's ``engine_dir``, e.g. TensorRT-LLM's ``engine/``, or None when it has
  none) are the row's. ``config_file``: the serve configuration its build writes beside the manifest
  (TensorRT-LLM's ``medusa.yaml``, the manifest's ``config``), or None.
- ``build_steps(ctx)``: the ordered steps that turn the profile's sources into the engine's files
  under ``ctx.out``, from the first step (fetch, convert, quantize) up to, not including, the
  manifest, which the build writes itself. Pure: it reads ``ctx.spec`` and returns
  :class:`BuildSteps` (steps, the notes ``build --dry-run`` shows and the documents of the files it
  writes that ``build --dry-run --json`` shows); nothing is run or written.
  A ``StepKind.PYTHON`` step is run by its function from ``step_funcs``; a ``StepKind.PROCESS`` step
  runs its argv. The steps of the engines that serve a TRT-LLM checkpoint (convert, runtime files)
  are in ``engines.checkpoint_steps``, each with its function.
- ``step_funcs(spec, owned)``: the function of every ``StepKind.PYTHON`` step ``build_steps`` lists,
  by step name, writing under ``owned.root`` (the output directory, ``outputs.OwnedDir``: claim what
  is not a step's declared output before writing it). Called only by ``build``, after ``check_tools``.
- ``check_tools(spec)``: raise ``MissingDependencyError`` (exit 3) before any work when a tool the
  build steps run is missing; return the versions found (package name -> version), which the
  manifest's ``tools`` records.
- ``manifest_fields(spec, out)``: the engine's own fields of the manifest, laid over the shared ones
  (``recipe.spec_record``): what its ``serve_command`` reads back. Pure; called by ``build --dry-run``
  (for the serve step) and by ``build`` once the steps ran (for the manifest).
- ``serve_command(engine_dir, manifest, host, port)``: how ``run DIR`` serves a built directory,
  as a :class:`ServeCommand` (argv and environment of a child server, or the equivalent
  ``medusa-trt run`` line of an in-process server). Pure: called by ``build --dry-run`` too, with
  the manifest the build will write.
- ``serve(engine_dir, command, options)``: serve until interrupted; return the process exit code.
  A child server is started and watched by ``medusa_trt.supervise`` (never by hand).
- ``generate(path, request)``: one generation for ``run DIR --prompt``; return the
  ``run --prompt --json`` document (``text``, ``token_ids``, ``finish_reason``, ``prompt_tokens``,
  ``completion_tokens``, ``num_steps``, ``tokens_per_step``, ``stats``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medusa_trt import records
from medusa_trt.engine_facts import Capabilities, EngineFacts
from medusa_trt.steps import Step

if TYPE_CHECKING:
    from medusa_trt.engines.spec import BuildSpec
    from medusa_trt.outputs import OwnedDir
    from medusa_trt.runtime.types import SamplingParams
    from medusa_trt.serve.guard import ServeGuard

GIB = 1024**3
CHECKPOINT = "checkpoint"  # the TRT-LLM checkpoint, a sub-directory of an engine directory
SOURCES = "sources"  # hub sources a build step fetched (links into the Hugging Face cache)
TREE_FILE, CONFIG_YAML = "medusa_tree.yaml", "medusa.yaml"
MANIFEST = records.ENGINE.filename
INTERNAL = "(in-process)"  # argv[0] of steps medusa-trt runs itself


@dataclass
class BuildSteps:
    """An engine's part of a build plan: its steps, in order, and notes for `build --dry-run`."""

    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)  # files it writes, as `build --dry-run --json` shows them


@dataclass(frozen=True)
class PlanContext:
    """What an engine's ``build_steps`` reads: the spec, the output directory, the size estimates and,
    when it ran, `plan`'s preflight document (whose disk numbers the step needs reuse). Each step
    says what it needs (disk, memory, GPUs, which host) from these; without ``sizes`` (a model of
    unknown shape), only which host."""

    spec: BuildSpec
    out: Path
    sizes: dict[str, float]  # GiB per artefact (``recipe.estimates``); empty when the model's shape is unknown
    checks: dict[str, Any] | None = None

    @property
    def gpu(self) -> str:
        return self.spec.profile.hardware.gpu or "cpu"

    def disk(self) -> dict[str, Any]:
        """`plan`'s disk check in GiB (the numbers `medusa-trt plan` prints); empty when it did not run."""
        return (self.checks or {}).get("disk_gib") or {}

    def checkpoint_gib(self) -> float:
        """The TRT-LLM checkpoint on disk: `plan`'s figure when it ran, else the estimate."""
        return round(float(self.disk().get("trtllm_checkpoint", self.sizes["checkpoint"])), 1)

    def source_gib(self) -> float:
        """The Hugging Face model and heads on disk: `plan`'s figure when it ran, else the estimate."""
        return float(self.disk().get("hf_checkpoint", self.sizes["source"]))


@dataclass(frozen=True)
class ServeCommand:
    """How `run DIR` serves: ``argv`` + ``env`` of a child server when ``child``, else the in-process
    server (``argv`` is then the equivalent ``medusa-trt run`` line). ``lines`` is what ``--print-cmd``
    prints: the shell line, or, over several nodes, the mpirun/srun launch lines."""

    engine: str
    model_name: str
    argv: list[str]
    env: dict[str, str]
    child: bool
    description: str  # the serve step's line in `build --dry-run`
    nodes: int = 1
    lines: list[str] = field(default_factory=list)
    multinode: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The `run --print-cmd --json` document."""
        doc: dict[str, Any] = {
            "engine": self.engine,
            "model_name": self.model_name,
            "nodes": self.nodes,
            "argv": self.argv,
            "env": self.env,
            "lines": self.lines or [command_text(self.argv, self.env)],
        }
        if self.multinode is not None:
            doc["multinode"] = self.multinode
        return doc


@dataclass(frozen=True)
class ServeOptions:
    """What `run DIR` passes to an engine's ``serve``."""

    host: str
    port: int
    guard: ServeGuard
    device: str = "cpu"
    tree: str | None = None
    adapt: bool | None = None
    on_ready: Callable[[str], None] | None = None  # a child server: called with its URL once /health answers
    announce: Callable[[str], None] | None = None  # an in-process server: its status lines (serving at, stopped)


@dataclass(frozen=True)
class GenerateRequest:
    """One generation for `run DIR --prompt`."""

    prompt: str
    params: SamplingParams
    medusa: bool = True
    chat: bool = False
    device: str = "cpu"
    tree: str | None = None
    adapt: bool | None = None
    first_step_timeout_s: float = 0.0
    step_timeout_s: float = 0.0
    on_text: Callable[[str], None] | None = None  # the completion's text as it settles
    status: Callable[[str], AbstractContextManager[Any]] | None = None  # a spinner while the model loads


class Engine(Protocol):
    """One engine; see the module docstring for what each member must do."""

    facts: EngineFacts  # its row in engine_facts; the three below are read from it
    name: str
    title: str
    capabilities: Capabilities
    engine_dir: str | None
    config_file: str | None

    def build_steps(self, ctx: PlanContext) -> BuildSteps: ...

    def step_funcs(self, spec: BuildSpec, owned: OwnedDir) -> dict[str, Callable[[], None]]: ...

    def check_tools(self, spec: BuildSpec) -> dict[str, str | None]: ...

    def manifest_fields(self, spec: BuildSpec, out: Path) -> dict[str, Any]: ...

    def serve_command(self, engine_dir: Path, manifest: dict[str, Any], host: str, port: int) -> ServeCommand: ...

    def serve(self, engine_dir: Path, command: ServeCommand, options: ServeOptions) -> int: ...

    def generate(self, path: Path, request: GenerateRequest) -> dict[str, Any]: ...


# --- helpers every engine uses -------------------------------------------------------------------


def command_text(argv: list[str], env: dict[str, str]) -> str:
    """A copy-pasteable shell line: environment assignments, then the command."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def runtime_env(manifest: dict[str, Any]) -> dict[str, str]:
    """The profile's runtime environment recorded in a manifest, as strings."""
    return {k: str(v) for k, v in (manifest.get("runtime_env") or {}).items()}
