"""vLLM server flags a profile's ``vllm:`` section may not set: medusa-trt sets them from the profile.

Keys are vLLM flag names without the dashes, underscores for hyphens (``enforce_eager`` is
``--enforce-eager``), as ``vllm serve --help`` lists them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping

# Profile keys medusa-trt sets itself (from the profile's sections and the build), never through `vllm:`
VLLM_MANAGED: dict[str, str] = {
    "model": "the build's model reference (--model)",
    "revision": "the build's model revision (--revision)",
    "tokenizer": "the build's model reference",
    "tokenizer_revision": "the build's model revision",
    "served_model_name": "the model's name",
    "dtype": "precision.dtype",
    "quantization": "precision.quantization",
    "kv_cache_dtype": "precision.kv_cache_dtype",
    "tensor_parallel_size": "parallelism.tp",
    "pipeline_parallel_size": "parallelism.pp",
    "max_model_len": "limits.max_seq_len",
    "max_num_seqs": "limits.max_batch_size",
    "max_num_batched_tokens": "limits.max_num_tokens",
    "speculative_config": "medusa (the heads and the chain length)",
    "gpu_memory_utilization": "serve.kv_cache_free_gpu_memory_fraction",
    "host": "run --host",
    "port": "run --port",
    "api_key": "run --api-key",
}

VLLM_PYTHON_ENV = "MEDUSA_TRT_VLLM_PYTHON"  # the interpreter of a separate vLLM environment


def vllm_python(env: Mapping[str, str] | None = None) -> str | None:
    """The interpreter that runs vLLM: $MEDUSA_TRT_VLLM_PYTHON, else ours when vLLM is importable here."""
    env = os.environ if env is None else env
    if env.get(VLLM_PYTHON_ENV):
        return env[VLLM_PYTHON_ENV]
    return sys.executable if importlib.util.find_spec("vllm") is not None else None
