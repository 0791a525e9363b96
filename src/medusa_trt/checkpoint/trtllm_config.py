"""The TRT-LLM checkpoint ``config.json``, as ``examples/medusa/convert_checkpoint.py`` writes it.

Source: docs/sources.md, TensorRT-LLM checkpoint format.
"""

from __future__ import annotations

from typing import Any

from medusa_trt.checkpoint.layout import FP8, Layout, OutTensor

# TRT-LLM's own exclusions for modules that are never FP8 linears (combine_medusa_weight's list)
BASE_EXCLUDES = ["*router", "*vocab_embedding", "*position_embedding", "*block_embedding"]


def rotary_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """The full HF rope scaling with both spellings of the type (old builders read ``type``)."""
    if not scaling:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type"))
    # rope_theta rides inside transformers 5's rope dict; TRT-LLM takes it as rotary_base instead
    rest = {k: v for k, v in scaling.items() if k not in ("type", "rope_type", "rope_theta")}
    return {"type": rope_type, "rope_type": rope_type, **rest}


def exclude_modules(lay: Layout, rank0: list[OutTensor]) -> list[str]:
    """Linear modules written unquantized, as fnmatch patterns TRT-LLM's quantize() skips."""
    linears = {
        t.name.removesuffix(".weight"): t.code
        for t in rank0
        if t.name.endswith(".weight")
        and t.name != "transformer.vocab_embedding.weight"
        and not t.name.endswith("layernorm.weight")
        and t.name != "transformer.ln_f.weight"
    }
    plain = sorted(m for m, code in linears.items() if code != FP8)
    out = list(BASE_EXCLUDES)
    medusa = [m for m in linears if m.startswith("medusa_heads.")]
    if medusa and all(m in plain for m in medusa):
        out.append("*medusa_heads*")
        plain = [m for m in plain if not m.startswith("medusa_heads.")]
    return plain + out


def trtllm_config(lay: Layout, rank0: list[OutTensor], *, max_draft_len: int) -> dict[str, Any]:
    s, t = lay.base.shape, lay.tp
    quant: dict[str, Any] = {"quant_algo": None, "kv_cache_quant_algo": None}
    if lay.base.quant is not None and any(x.code == FP8 for x in rank0):
        quant = {
            "quant_algo": "FP8",
            "kv_cache_quant_algo": lay.base.quant.kv_cache_quant_algo,
            "exclude_modules": exclude_modules(lay, rank0),
        }
    elif lay.base.quant is not None and lay.base.quant.kv_cache_quant_algo:
        quant["kv_cache_quant_algo"] = lay.base.quant.kv_cache_quant_algo
    cfg: dict[str, Any] = {
        "architecture": "MedusaForCausalLM" if lay.heads is not None else "LlamaForCausalLM",
        "dtype": lay.dtype,
        "logits_dtype": "float32",
        "num_hidden_layers": s.num_hidden_layers,
        "num_attention_heads": s.num_attention_heads,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_key_value_heads": s.num_key_value_heads,
        "vocab_size": s.vocab_size,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": s.max_position_embeddings,
        "hidden_act": s.hidden_act,
        "rotary_base": s.rope_theta,
        "rotary_scaling": rotary_scaling(s.rope_scaling),
        "norm_epsilon": s.rms_norm_eps,
        "quantization": quant,
        "mapping": {"world_size": t, "tp_size": t, "pp_size": 1},
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
    }
    if s.head_dim != s.hidden_size // s.num_attention_heads:
        cfg["head_size"] = s.head_dim
    if lay.heads is not None:
        cfg.update(max_draft_len=max_draft_len, num_medusa_heads=lay.num_heads, num_medusa_layers=lay.heads.num_layers)
    cfg["model_type"] = "llama"
    return cfg
