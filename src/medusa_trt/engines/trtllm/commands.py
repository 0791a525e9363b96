"""TensorRT-LLM command lines and files: trtllm-build, quantize.py, trtllm-serve, the Medusa YAML.

Pure functions from a resolved BuildSpec (or a manifest) to argv lists and documents; nothing here
runs a process. Every flag name comes from the allow-lists in ``medusa_trt.config.trtllm_flags``
(copied from TensorRT-LLM 1.0-1.2's parsers) and is checked again before it is returned.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medusa_trt.config.trtllm_flags import TRTLLM_BUILD_FLAGS, TRTLLM_SERVE_FLAGS
from medusa_trt.errors import MissingDependencyError, ProfileError

if TYPE_CHECKING:
    from medusa_trt.config.profile import Serve

SUPPORTED_TRTLLM = ((1, 0), (1, 3))  # >=1.0,<1.3: later releases dropped the TensorRT engine backend
INSTALL_HINT = (
    "Install TensorRT-LLM 1.0-1.2 on a Linux GPU host: pip install 'medusa-trt[trtllm]', "
    "or run inside NVIDIA's TensorRT-LLM container (nvcr.io/nvidia/tensorrt-llm/release:1.2.0)."
)
# Where NVIDIA's container keeps the TensorRT-LLM examples (quantize.py lives there).
DEFAULT_EXAMPLES_DIR = "/app/tensorrt_llm/examples"
EXAMPLES_ENV = "MEDUSA_TRT_TRTLLM_EXAMPLES"


def _check_flags(argv: list[str], allowed: frozenset[str], tool: str) -> list[str]:
    for arg in argv:
        if arg.startswith("--") and arg[2:] not in allowed:  # a bug guard: never emit an unknown flag
            raise ProfileError(f"{tool}: flag {arg} is not one TensorRT-LLM 1.x accepts")
    return argv


def build_argv(
    *,
    checkpoint_dir: Path,
    output_dir: Path,
    world_size: int,
    limits: dict[str, int],
    profile_flags: list[str],
    medusa: bool = True,
) -> list[str]:
    """``trtllm-build`` for a Medusa checkpoint.

    max_draft_len is not passed: the builder takes the checkpoint's value when the flag is 0
    (``tensorrt_llm/builder.py``; docs/sources.md, TensorRT-LLM commands), so the engine always matches
    what the converter wrote.
    """
    argv = ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(output_dir)]
    if medusa:
        argv += ["--speculative_decoding_mode", "medusa"]
    argv += ["--workers", str(world_size)]
    for key in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"):
        if limits.get(key) is not None:
            argv += [f"--{key}", str(limits[key])]
    owned = {a for a in argv if a.startswith("--")}
    rest = list(profile_flags)
    for arg in rest:
        if arg in owned:  # the profile validator rejects these too; a second guard for user YAML
            raise ProfileError(f"trtllm_build: {arg} is set by medusa-trt", hint="Remove it from trtllm_build.")
    argv += rest
    return _check_flags(argv, TRTLLM_BUILD_FLAGS, "trtllm-build")


def examples_dir() -> tuple[Path, str]:
    """TensorRT-LLM's examples directory and where that value came from."""
    env = os.environ.get(EXAMPLES_ENV)
    if env:
        return Path(env), f"env {EXAMPLES_ENV}"
    return Path(DEFAULT_EXAMPLES_DIR), "default (NVIDIA container layout)"


def quantize_script() -> Path:
    """``examples/quantization/quantize.py`` in TensorRT-LLM's examples directory."""
    return examples_dir()[0] / "quantization" / "quantize.py"


def quantize_argv(
    *,
    model_dir: str,
    medusa_dir: str,
    output_dir: Path,
    dtype: str,
    tp: int,
    pp: int,
    num_medusa_heads: int,
    num_medusa_layers: int,
    max_draft_len: int,
    calib_size: int = 512,
    kv_cache_dtype: str = "fp8",
) -> list[str]:
    """FP8 post-training quantization of the base model with the heads left unquantized.

    ``examples/quantization/quantize.py --medusa_model_dir``: ModelOpt quantizes the base and merges
    the heads afterwards, excluding
    ``*medusa_heads*`` from quantization (no --quant_medusa_head). The layer count is passed too:
    quantize.py falls back to 1 when the heads' config.json lacks ``medusa_num_layers``.
    """
    argv = ["python3", str(quantize_script()), "--model_dir", model_dir, "--dtype", dtype, "--qformat", "fp8"]
    if kv_cache_dtype == "fp8":
        argv += ["--kv_cache_dtype", "fp8"]
    argv += [
        "--output_dir",
        str(output_dir),
        "--calib_size",
        str(calib_size),
        "--tp_size",
        str(tp),
        "--pp_size",
        str(pp),
        "--medusa_model_dir",
        medusa_dir,
        "--num_medusa_heads",
        str(num_medusa_heads),
        "--num_medusa_layers",
        str(num_medusa_layers),
        "--max_draft_len",
        str(max_draft_len),
    ]
    return argv


def medusa_yaml_doc(
    *, max_draft_len: int, num_medusa_heads: int, tree: list[list[int]], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``trtllm-serve --config`` document: LLM-API field names, verbatim (``llmapi/llm_args.py``)."""
    doc: dict[str, Any] = dict(extra or {})
    doc["speculative_config"] = {
        "decoding_type": "Medusa",
        "max_draft_len": int(max_draft_len),
        "num_medusa_heads": int(num_medusa_heads),
        "medusa_choices": [list(map(int, p)) for p in tree],
    }
    return doc


def dump_medusa_yaml(doc: dict[str, Any]) -> str:
    """YAML with each tree path on one line (flow style inside), as NVIDIA's examples write it."""
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=10_000)


def serve_settings(serve: Serve) -> tuple[list[str], dict[str, Any]]:
    """The profile's serve section: trtllm-serve flags, and LLM-API keys for the --config YAML."""
    flags: list[str] = []
    for name in ("kv_cache_free_gpu_memory_fraction", "num_postprocess_workers", "log_level"):
        value = getattr(serve, name, None)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags, dict(getattr(serve, "extra_llm_api_options", {}) or {})


def serve_argv(
    *,
    engine_dir: Path,
    tokenizer_dir: Path,
    config_yaml: Path,
    tp: int,
    pp: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    extra_flags: list[str] | None = None,
) -> list[str]:
    """``trtllm-serve ENGINE --backend tensorrt ...`` (the Medusa tree comes from --config)."""
    argv = ["trtllm-serve", str(engine_dir), "--backend", "tensorrt", "--tp_size", str(tp)]
    if pp > 1:
        argv += ["--pp_size", str(pp)]
    argv += ["--host", host, "--port", str(port), "--tokenizer", str(tokenizer_dir), "--config", str(config_yaml)]
    argv += list(extra_flags or [])
    return _check_flags(argv, TRTLLM_SERVE_FLAGS, "trtllm-serve")


def multinode_lines(
    *, serve: list[str], env: dict[str, str], world_size: int, nodes: int, gpus_per_node: int
) -> dict[str, str]:
    """Launch lines for a multi-node TRT-LLM server: one MPI rank per GPU, rank 0 serves HTTP.

    trtllm-llmapi-launch makes the non-zero ranks MPI workers of the LLM API instance on rank 0.
    """
    inner = shlex.join(["trtllm-llmapi-launch", *serve])
    exports = " ".join(f"-x {k}" for k in env)
    env_prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    mpirun = (
        f"{env_prefix + ' ' if env_prefix else ''}mpirun -np {world_size} --hostfile hostfile "
        f"--map-by ppr:{gpus_per_node}:node --allow-run-as-root {exports + ' ' if exports else ''}{inner}"
    )
    srun = (
        f"{env_prefix + ' ' if env_prefix else ''}srun -N {nodes} --ntasks-per-node={gpus_per_node} --mpi=pmix {inner}"
    )
    return {"mpirun": mpirun.replace("  ", " "), "srun": srun}


def _version_tuple(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def trtllm_version() -> str | None:
    """The installed tensorrt_llm version, read from package metadata (no import: it takes seconds)."""
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_trtllm(tools: tuple[str, ...] = ("trtllm-build",), *, require_package: bool = True) -> str | None:
    """Fail with exit 3 unless a supported TensorRT-LLM and the given tools are installed.

    ``require_package=False`` (serving) accepts a tool on PATH whose package this Python cannot see,
    e.g. a wrapper around a container; a visible package must still be a supported version.
    """
    version = trtllm_version()
    if version is None and not require_package:
        for tool in tools:
            if shutil.which(tool) is None:
                raise MissingDependencyError(f"{tool} was not found on PATH", hint=INSTALL_HINT)
        return None
    if version is None:
        raise MissingDependencyError(
            "TensorRT-LLM is not installed (the tensorrt_llm package was not found)", hint=INSTALL_HINT
        )
    lo, hi = SUPPORTED_TRTLLM
    if not lo <= _version_tuple(version) < hi:
        raise MissingDependencyError(
            f"tensorrt_llm {version} is not supported (need >=1.0,<1.3: Medusa runs only on the TensorRT "
            "engine backend, which later releases removed)",
            hint=INSTALL_HINT,
        )
    for tool in tools:
        if shutil.which(tool) is None:
            raise MissingDependencyError(f"{tool} was not found on PATH", hint=INSTALL_HINT)
    return version
