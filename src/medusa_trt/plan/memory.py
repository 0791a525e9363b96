"""Memory per GPU and disk space for a profile + model (bytes from the same formulas as ``perf``)."""

from __future__ import annotations

from medusa_trt import engine_facts
from medusa_trt.config.model import ModelShape
from medusa_trt.config.profile import DTYPE_BYTES, HardwareProfile
from medusa_trt.plan import perf as pm

GIB = 1024**3

# Runtime reserve per device beyond weights, KV cache and activations. CUDA: the CUDA context and
# cuBLAS/NCCL/userbuffer workspaces take ~1-2 GiB per GPU in TRT-LLM deployments (assumption, see
# docs/perf-model.md); CPU: the Python interpreter, torch and the tokenizer (~0.5 GiB, measured RSS of
# `python -c "import torch, transformers"` is ~0.4-0.5 GiB).
RESERVE_GIB = {"cuda": 2.0, "cpu": 0.5}
LOGITS_BYTES = 4  # TRT-LLM keeps generation logits in float32 (logits_dtype default)


def activation_bytes(profile: HardwareProfile, model: ModelShape, num_medusa_heads: int | None = None) -> float:
    """One layer's activations for max_num_tokens (buffers are reused across layers) plus the logits
    of max_batch_size x (max_draft_len + 1) tokens for the base lm_head and every Medusa head
    (``num_medusa_heads``, default the profile's)."""
    heads = profile.medusa.num_heads if num_medusa_heads is None else num_medusa_heads
    tp, lim = profile.parallelism.tp, profile.limits
    hd, d = model.head_dim, model.hidden_size
    q = model.num_attention_heads * hd / tp
    kv = pm.kv_heads_per_rank(model, tp) * hd
    per_token = 2 * d + q + 2 * kv + 2 * model.intermediate_size / tp
    acts = lim.max_num_tokens * per_token * pm.act_bytes(profile)
    v_rank = pm.padded_vocab(model.vocab_size, tp) / tp
    logits = lim.max_batch_size * (profile.medusa.max_draft_len + 1) * v_rank * LOGITS_BYTES
    return acts + logits * (1 + heads)


def memory_per_gpu(profile: HardwareProfile, model: ModelShape, num_medusa_heads: int) -> dict[str, float]:
    """GiB per device by component; ``total`` sums them, ``available`` is the profile's memory."""
    tp, lim = profile.parallelism.tp, profile.limits
    dtype_b = DTYPE_BYTES[profile.precision.dtype]
    norms = (2 * model.num_hidden_layers + 1) * model.hidden_size * dtype_b
    kv_tokens = lim.max_batch_size * (lim.max_seq_len + profile.medusa.max_draft_len)  # builder adds draft len
    parts = {
        "linear_weights": pm.linear_params_per_rank(model, tp) * pm.weight_bytes(profile) + norms,
        "embedding": model.vocab_size * model.hidden_size * dtype_b,  # replicated on every rank
        "lm_head": 0.0 if model.tie_word_embeddings and tp == 1 else pm.lm_head_params_per_rank(model, tp) * dtype_b,
        "medusa_heads": pm.medusa_head_params_per_rank(model, tp, num_medusa_heads, profile.medusa.num_layers)
        * pm.head_bytes(profile),
        "kv_cache": kv_tokens * pm.kv_bytes_per_token(profile, model),
        "activations": activation_bytes(profile, model, num_medusa_heads),
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["runtime_reserve"] = RESERVE_GIB[profile.hardware.device]
    out["total"] = sum(out.values())
    out["available"] = profile.hardware.memory_gib
    return out


def disk_need(
    profile: HardwareProfile, model: ModelShape, num_medusa_heads: int, hf_bytes: float | None = None
) -> dict[str, float]:
    """GiB on disk: the Hugging Face checkpoint (+ heads), the TRT-LLM checkpoint (all ranks), the engine."""
    tp = profile.parallelism.tp
    d, v = model.hidden_size, model.vocab_size
    heads_hf = num_medusa_heads * (profile.medusa.num_layers * (d * d + d) + v * d) * 2  # bf16/fp16 on the hub
    hf = model.num_params * 2 + heads_hf if hf_bytes is None else hf_bytes  # Meta publishes bf16
    mem = memory_per_gpu(profile, model, num_medusa_heads)
    rank_weights = sum(mem[k] for k in ("linear_weights", "embedding", "lm_head", "medusa_heads")) * GIB
    ckpt = rank_weights * tp * profile.parallelism.pp
    # engine files as large as the checkpoint (TensorRT engines); the others serve the checkpoint or the sources
    engine = ckpt if engine_facts.get(profile.engine).compiles else 0.0
    out = {"hf_checkpoint": hf / GIB, "trtllm_checkpoint": ckpt / GIB, "engine": engine / GIB}
    out["total"] = sum(out.values())
    return out
