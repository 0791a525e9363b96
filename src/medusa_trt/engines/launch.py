"""`medusa-trt run DIR`: serve a built directory, or generate once, through its engine.

The directory's manifest names the engine (``engines.get``); a converted checkpoint (from
`convert`, no manifest) is the reference engine's. The engine says how it serves (a supervised
child such as trtllm-serve, or the in-process reference server) and how it generates once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import engine_facts, engines, records
from medusa_trt.engines.base import Engine, GenerateRequest, ServeCommand, ServeOptions
from medusa_trt.errors import CheckpointError, InvalidInputError
from medusa_trt.runtime.watchdog import FIRST_STEP_TIMEOUT_S, STEP_TIMEOUT_S
from medusa_trt.serve.chat import TEMPLATE_TIMEOUT_S
from medusa_trt.serve.guard import DEFAULT_MAX_REQUEST_MB, ServeGuard
from medusa_trt.serve.guard import api_key_setting as api_key_setting  # for the CLI, which imports no serve

logger = logging.getLogger(__name__)
Say = Callable[[str], None]  # a line for the user; the CLI prints it
SERVED = ("tree", "num_medusa_heads", "max_draft_len", "profile")  # what serving reads from a manifest


def load(engine_dir: Path) -> tuple[Engine, dict[str, Any]]:
    """The engine of a built directory (or a converted checkpoint) and its manifest."""
    if (
        not records.ENGINE.path(engine_dir).is_file()
        and (engine_dir / "config.json").is_file()
        and any(engine_dir.glob("rank*.safetensors"))
    ):
        # a converted checkpoint (from `convert`) is served by the reference runtime as is
        name = engine_facts.CHECKPOINT_ENGINE
        return engines.get(name), {"engine": name, "model_name": engine_dir.name, "runtime_env": {}}
    if not engine_dir.is_dir():
        raise CheckpointError(
            f"{engine_dir}: no such engine directory",
            hint="Build one first: medusa-trt build --profile cpu --model DIR --medusa DIR",
        )
    if not records.ENGINE.path(engine_dir).is_file():
        raise CheckpointError(
            f"{engine_dir}: no {records.ENGINE.filename} (not a finished medusa-trt build)",
            hint="Run `medusa-trt build` again with the same arguments: it resumes.",
        )
    manifest = records.read(records.ENGINE, engine_dir, require=SERVED)
    return engines.get(str(manifest["engine"])), manifest


def serve_command(engine_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ServeCommand:
    """What `run DIR` executes: engine, argv, environment, and the shell lines `--print-cmd` shows
    (for more than one node, the mpirun/srun launch lines instead)."""
    engine_dir = Path(engine_dir).resolve()
    engine, manifest = load(engine_dir)
    return engine.serve_command(engine_dir, manifest, host, port)


def serve(
    engine_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    print_cmd: bool = False,
    device: str = "cpu",
    api_key: str | None = None,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    step_timeout_s: float = STEP_TIMEOUT_S,
    first_step_timeout_s: float = FIRST_STEP_TIMEOUT_S,
    template_timeout_s: float = TEMPLATE_TIMEOUT_S,
    tree: str | None = None,
    adapt: bool | None = None,
    show: Say | None = None,
    announce: Say | None = None,
) -> int:
    """Serve a built engine directory until interrupted; returns the process exit code.

    The API key, body limit and step timeouts (``serve.ServeGuard``) go to an engine that checks
    them; a key is refused for an engine whose server has no API-key option (trtllm-serve).
    ``show`` gets the command lines (``print_cmd``, and the launch lines for more than one node),
    ``announce`` the status lines (serving at URL, stopped); without them they are logged (info).
    """
    show, announce = show or logger.info, announce or logger.info
    if max_request_mb <= 0:
        raise InvalidInputError(f"--max-request-mb must be positive, got {max_request_mb}")
    if not template_timeout_s > 0:
        raise InvalidInputError(f"--template-timeout must be positive, got {template_timeout_s}")
    guard = ServeGuard(
        api_key=api_key or None,
        max_request_bytes=int(max_request_mb * 2**20),
        step_timeout_s=step_timeout_s,
        first_step_timeout_s=first_step_timeout_s,
        template_timeout_s=template_timeout_s,
    )
    engine_dir = Path(engine_dir).resolve()
    engine, manifest = load(engine_dir)
    cmd = engine.serve_command(engine_dir, manifest, host, port)
    if guard.api_key and not engine.capabilities.api_key:
        # never serve unprotected by surprise
        raise InvalidInputError(
            f"--api-key is not supported for {engine.name} engines: {cmd.argv[0]} has no API-key option",
            hint=f"Bind {cmd.argv[0]} to 127.0.0.1 behind a reverse proxy that checks the key, or unset "
            "--api-key/MEDUSA_TRT_API_KEY.",
        )
    if print_cmd or cmd.nodes > 1:  # several nodes: the launch lines, to run from the login node
        show("\n".join(cmd.to_json()["lines"]))
        return 0

    def ready(url: str) -> None:
        announce(f"serving {cmd.model_name} ({engine.title}, Medusa) at {url}/v1")

    options = ServeOptions(
        host=host, port=port, guard=guard, device=device, tree=tree, adapt=adapt, on_ready=ready, announce=announce
    )
    return engine.serve(engine_dir, cmd, options)


def generate(path: str | Path, request: GenerateRequest) -> dict[str, Any]:
    """One generation for `run DIR --prompt`, by the directory's engine."""
    path = Path(path)
    # without a manifest, `path` is a checkpoint (or not one): the reference runtime says which
    has_manifest = records.ENGINE.path(path).is_file()
    engine = load(path.resolve())[0] if has_manifest else engines.get(engine_facts.CHECKPOINT_ENGINE)
    return engine.generate(path, request)
