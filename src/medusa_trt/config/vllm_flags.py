"""vLLM server flags a profile's ``vllm:`` section may not set: medusa-trt sets them from the profile.

Keys are vLLM flag names without the dashes, underscores for hyphens (``enforce_eager`` is
``--enforce-eager``), as ``vllm serve --help`` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping

from medusa_trt.engine_facts import VLLM_PYTHON_ENV, VLLM_TOOLKIT

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

__all__ = ["VLLM_MANAGED", "VLLM_PYTHON_ENV", "vllm_python"]


def vllm_python(env: Mapping[str, str] | None = None) -> str | None:
    """The interpreter that runs vLLM: $MEDUSA_TRT_VLLM_PYTHON, else ours when vLLM is importable here."""
    return VLLM_TOOLKIT.interpreter(env)
