"""`medusa-trt run DIR` (server mode): dispatch on the manifest's engine.

- reference engine: the built-in OpenAI server (``medusa_trt.serve.server.run_server``);
- trtllm engine: supervise ``trtllm-serve DIR/engine --backend tensorrt ... --config DIR/medusa.yaml``
  with the profile's runtime environment; more than one node prints the mpirun/srun lines instead.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import records
from medusa_trt.engine import trtllm
from medusa_trt.engine.supervise import Supervisor
from medusa_trt.errors import CheckpointError, InvalidInputError
from medusa_trt.runtime.watchdog import FIRST_STEP_TIMEOUT_S, STEP_TIMEOUT_S
from medusa_trt.serve.chat import TEMPLATE_TIMEOUT_S
from medusa_trt.serve.guard import DEFAULT_MAX_REQUEST_MB, ServeGuard
from medusa_trt.serve.guard import api_key_setting as api_key_setting  # for the CLI, which imports no serve

if TYPE_CHECKING:
    from medusa_trt.config.profile import Serve

logger = logging.getLogger(__name__)
Say = Callable[[str], None]  # a line for the user; the CLI prints it
STARTUP_ENV = "MEDUSA_TRT_STARTUP_TIMEOUT"
SERVED = ("tree", "num_medusa_heads", "max_draft_len", "profile")  # what serving reads from a manifest


def _serve_settings(manifest: dict[str, Any]) -> Serve:
    """The profile's serve section as an object (the manifest keeps the profile as JSON)."""
    from medusa_trt.config.profile import Serve

    serve = (manifest.get("profile", {}).get("profile") or {}).get("serve") or {}
    return Serve.model_validate(serve)


def trtllm_command(
    engine_dir: Path, manifest: dict[str, Any], host: str, port: int
) -> tuple[list[str], dict[str, str]]:
    """The trtllm-serve argv and the environment additions for a built TensorRT-LLM engine directory."""
    flags, _extra = trtllm.serve_settings(_serve_settings(manifest))
    argv = trtllm.serve_argv(
        engine_dir=engine_dir / (manifest.get("engine_dir") or "engine"),
        tokenizer_dir=engine_dir / (manifest.get("tokenizer_dir") or "."),
        config_yaml=engine_dir / (manifest.get("config") or "medusa.yaml"),
        tp=int(manifest.get("tp", 1)),
        pp=int(manifest.get("pp", 1)),
        host=host,
        port=port,
        extra_flags=flags,
    )
    env = {k: str(v) for k, v in (manifest.get("runtime_env") or {}).items()}
    return argv, env


def node_layout(manifest: dict[str, Any]) -> tuple[int, int, int]:
    """(world size, nodes, GPUs per node): hardware.count is the GPUs of one node."""
    world = int(manifest.get("tp", 1)) * int(manifest.get("pp", 1))
    hardware = (manifest.get("profile", {}).get("profile") or {}).get("hardware") or {}
    per_node = int(hardware.get("count", world)) or world
    return world, max(1, math.ceil(world / per_node)), min(per_node, world)


def command_text(argv: list[str], env: dict[str, str]) -> str:
    """A copy-pasteable shell line: environment assignments, then the command."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def _load(engine_dir: Path) -> dict[str, Any]:
    if (
        not records.ENGINE.path(engine_dir).is_file()
        and (engine_dir / "config.json").is_file()
        and any(engine_dir.glob("rank*.safetensors"))
    ):
        # a converted checkpoint (from `convert`) is served by the reference runtime as is
        return {"engine": "reference", "model_name": engine_dir.name, "runtime_env": {}}
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
    return records.read(records.ENGINE, engine_dir, require=SERVED)


def serve_command(engine_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """What `run DIR` executes: engine kind, argv, environment, and the shell lines `--print-cmd` shows
    (for more than one node, the mpirun/srun launch lines instead)."""
    engine_dir = Path(engine_dir).resolve()
    manifest = _load(engine_dir)
    doc: dict[str, Any] = {
        "engine": manifest["engine"],
        "model_name": manifest.get("model_name") or engine_dir.name,
        "nodes": 1,
    }
    if manifest["engine"] == "reference":
        env = {k: str(v) for k, v in (manifest.get("runtime_env") or {}).items()}
        argv = ["medusa-trt", "run", str(engine_dir), "--host", host, "--port", str(port)]
        return {**doc, "argv": argv, "env": env, "lines": [command_text(argv, env)]}
    if manifest["engine"] == "vllm":
        from medusa_trt.engine import vllm

        argv, env = vllm.serve_command(engine_dir, manifest, host, port)
        return {**doc, "argv": argv, "env": env, "lines": [command_text(argv, env)]}
    argv, env = trtllm_command(engine_dir, manifest, host, port)
    world, nodes, per_node = node_layout(manifest)
    doc.update(argv=argv, env=env, lines=[command_text(argv, env)], nodes=nodes)
    if nodes > 1:
        multi = trtllm.multinode_lines(serve=argv, env=env, world_size=world, nodes=nodes, gpus_per_node=per_node)
        doc["multinode"] = multi
        doc["lines"] = [
            f"# {world} ranks over {nodes} nodes ({per_node} GPUs each); rank 0 serves http://{host}:{port}",
            f"# Open MPI (hostfile lists the {nodes} nodes, slots={per_node}):",
            multi["mpirun"],
            "# Slurm:",
            multi["srun"],
        ]
    return doc


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

    The reference server takes the API key, body limit and step timeouts (``serve.ServeGuard``);
    trtllm-serve has no API-key option, so a key is refused for a TensorRT-LLM engine.
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
    cmd = serve_command(engine_dir, host, port)
    if cmd["engine"] == "vllm":
        return _serve_vllm(engine_dir, cmd, host, port, print_cmd, guard.api_key, show, announce)
    if guard.api_key and cmd["engine"] != "reference":
        # trtllm-serve (TensorRT-LLM 1.0-1.2) has no API-key option: never serve unprotected by surprise
        raise InvalidInputError(
            "--api-key is not supported for TensorRT-LLM engines: trtllm-serve has no API-key option",
            hint="Bind trtllm-serve to 127.0.0.1 behind a reverse proxy that checks the key, or unset "
            "--api-key/MEDUSA_TRT_API_KEY.",
        )
    if print_cmd or cmd["nodes"] > 1:  # several nodes: the launch lines, to run from the login node
        show("\n".join(cmd["lines"]))
        return 0
    if cmd["engine"] == "reference":
        # the profile's runtime environment, as trtllm-serve gets it (set before torch loads: OMP_NUM_THREADS)
        os.environ.update(cmd["env"])
        from medusa_trt.serve.server import run_server

        return int(
            run_server(
                engine_dir,
                host,
                port,
                device,
                cmd["model_name"],
                tree=tree,
                adapt=adapt,
                guard=guard,
                announce=announce,
            )
        )
    trtllm.check_trtllm(("trtllm-serve",), require_package=False)
    timeout = float(os.environ.get(STARTUP_ENV, "1800"))

    def ready(url: str) -> None:
        announce(f"serving {cmd['model_name']} (TensorRT-LLM, Medusa) at {url}/v1")

    return Supervisor(
        cmd["argv"], env=cmd["env"], host=host, port=port, startup_timeout_s=timeout, on_ready=ready
    ).run()


def _serve_vllm(
    engine_dir: Path,
    cmd: dict[str, Any],
    host: str,
    port: int,
    print_cmd: bool,
    key: str | None,
    show: Say,
    announce: Say,
) -> int:
    """Supervise vLLM's OpenAI server; its own --api-key check gets the key (through VLLM_API_KEY)."""
    from medusa_trt.engine import vllm

    if print_cmd:
        show("\n".join(cmd["lines"]))
        return 0
    argv, env = vllm.serve_command(engine_dir, _load(engine_dir), host, port, vllm.require_python())

    def ready(url: str) -> None:
        announce(f"serving {cmd['model_name']} (vLLM, Medusa) at {url}/v1")

    return int(vllm.supervise(argv, env, host, port, api_key=key, on_ready=ready).run())
