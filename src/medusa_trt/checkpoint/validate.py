"""Everything checked before a byte is written: parallelism, source tensors, heads, and config.json."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from medusa_trt.checkpoint.layout import FP8, Layout, kv_scale_names
from medusa_trt.checkpoint.readers import BaseModel, Heads
from medusa_trt.config.model import ModelShape
from medusa_trt.errors import CheckpointError, InvalidInputError

FLOAT_CODES = {"F32", "F16", "BF16"}
SCALAR = (-1,)  # marker: a scale, shape () or (1,)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # buffers some exports carry; TRT-LLM recomputes them


def check_parallel(model: ModelShape, tp: int, pp: int) -> None:
    if pp != 1:
        raise InvalidInputError(
            f"--pp {pp}: pipeline parallelism is not supported for Medusa checkpoints",
            hint="TensorRT-LLM's Medusa support matrix has tensor parallelism only; use --tp.",
        )
    if tp < 1:
        raise InvalidInputError(f"--tp {tp}: must be at least 1")
    h, kv, i, d = model.num_attention_heads, model.num_key_value_heads, model.intermediate_size, model.hidden_size
    problems = []
    if h % tp:
        problems.append(f"num_attention_heads {h}")
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        problems.append(f"num_key_value_heads {kv} (KV heads are replicated only when tp is a multiple of them)")
    if i % tp:
        problems.append(f"intermediate_size {i}")
    if d % tp:
        problems.append(f"hidden_size {d}")
    if problems:
        divisors = [
            t
            for t in (1, 2, 4, 8, 16)
            if h % t == 0 and i % t == 0 and d % t == 0 and ((kv >= t and kv % t == 0) or (kv < t and t % kv == 0))
        ]
        raise InvalidInputError(
            f"--tp {tp} does not divide " + ", ".join(problems),
            hint=f"Valid tp sizes for this model: {', '.join(map(str, divisors))}.",
        )


def expected_base(base: BaseModel) -> dict[str, tuple[int, ...]]:
    """Source tensor name -> shape, for every tensor the writer reads from the base checkpoint."""
    s, st = base.shape, base.store
    d, hd, v = s.hidden_size, s.head_dim, s.vocab_size
    q, kv = s.num_attention_heads * hd, s.num_key_value_heads * hd
    exp: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if "lm_head.weight" in st.infos or not s.tie_word_embeddings:
        exp["lm_head.weight"] = (v, d)
    linears = {
        "self_attn.q_proj": (q, d),
        "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d),
        "self_attn.o_proj": (d, q),
        "mlp.gate_proj": (s.intermediate_size, d),
        "mlp.up_proj": (s.intermediate_size, d),
        "mlp.down_proj": (d, s.intermediate_size),
    }
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        exp[f"{p}input_layernorm.weight"] = (d,)
        exp[f"{p}post_attention_layernorm.weight"] = (d,)
        for name, shape in linears.items():
            exp[f"{p}{name}.weight"] = shape
            if base.quant and st.infos.get(f"{p}{name}.weight") and st.info(f"{p}{name}.weight").dtype == FP8:
                exp[f"{p}{name}.weight_scale"] = SCALAR
                exp[f"{p}{name}.input_scale"] = SCALAR
        if base.quant and base.quant.kv_cache_quant_algo == "FP8":
            names = kv_scale_names(st, f"{p}self_attn.")
            if names is None:
                raise CheckpointError(
                    f"{st.label}: kv_cache_quant_algo is FP8 but layer {i} has no k/v scales",
                    hint="Re-export the checkpoint with ModelOpt, or drop kv_cache_quant_algo.",
                )
            exp.update(dict.fromkeys(names, SCALAR))
    if base.quant and st.infos.get("lm_head.weight") and st.info("lm_head.weight").dtype == FP8:
        exp["lm_head.weight_scale"] = SCALAR
        exp["lm_head.input_scale"] = SCALAR
    return exp


def expected_heads(h: Heads, model: ModelShape) -> dict[str, tuple[int, ...]]:
    d, v = model.hidden_size, model.vocab_size
    exp: dict[str, tuple[int, ...]] = {}

    def weight(name: str, shape: tuple[int, ...]) -> None:
        exp[name] = shape
        info = h.store.infos.get(name)
        if info is not None and info.dtype == FP8:  # an FP8 weight is unusable without its scales
            exp[name.removesuffix("weight") + "weight_scale"] = SCALAR
            exp[name.removesuffix("weight") + "input_scale"] = SCALAR

    for k in range(h.num_heads):
        for layer in range(h.num_layers):
            weight(h.linear(k, layer, "weight"), (d, d))
            if h.has_bias:
                exp[h.linear(k, layer, "bias")] = (d,)
        weight(h.lm_head(k), (v, d))
        for n in h.names(k):
            if n.endswith(("weight_scale", "input_scale")):
                exp[n] = SCALAR
    return exp


def check_tensors(
    label: str, infos: dict[str, Any], exp: dict[str, tuple[int, ...]], *, fp8_ok: bool, others: Collection[str] = ()
) -> None:
    """Missing, misshapen, wrongly typed or unexpected tensors: one error naming the first few.

    With ``fp8_ok``, FP8 is accepted only for linear weights that come with their scales (``exp`` lists
    ``*.weight_scale`` for them); an FP8 embedding, norm or bias would be cast without a scale."""
    problems: list[str] = []
    missing = [n for n in exp if n not in infos]
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {', '.join(missing[:3])}")
    for name, want in exp.items():
        info = infos.get(name)
        if info is None:
            continue
        if want == SCALAR:
            if len(info.shape) > 1 or (info.shape and info.shape[0] != 1):
                problems.append(f"{name} has shape {list(info.shape)}, expected a scalar scale")
        elif info.shape != want:
            problems.append(f"{name} has shape {list(info.shape)}, expected {list(want)}")
        scaled = name.endswith(".weight") and name.removesuffix("weight") + "weight_scale" in exp
        if info.dtype not in FLOAT_CODES and not (fp8_ok and info.dtype == FP8 and scaled):
            problems.append(f"{name} has dtype {info.dtype}")
    extra = sorted(n for n in infos if n not in exp and n not in others and not n.endswith(IGNORED_SUFFIXES))
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s): {', '.join(extra[:3])}")
    if problems:
        raise CheckpointError(
            f"{label}: " + "; ".join(problems[:4]),
            hint="The tensors do not match a Llama config.json / Medusa heads layout; check "
            "that --medusa heads belong to this --model.",
        )


def check_layout(lay: Layout) -> None:
    base, h = lay.base, lay.heads
    exp = expected_base(base)
    head_names: set[str] = set()
    if h is not None:
        hexp = expected_heads(h, base.shape)
        if h.store is base.store:  # ModelOpt: heads live in the same files
            exp.update(hexp)
        else:
            head_d = h.store.info(h.linear(0, 0, "weight")).shape if h.num_layers else None
            if head_d and head_d[-1] != base.shape.hidden_size:
                raise CheckpointError(
                    f"{h.store.label}: head hidden size {head_d[-1]} does not match the model's "
                    f"{base.shape.hidden_size}",
                    hint="These Medusa heads were trained for another base model.",
                )
            check_tensors(h.store.label, h.store.infos, hexp, fp8_ok=False)
        head_names = {n for n in h.store.infos if n.startswith(h.prefix)} if h.prefix else set()
    check_tensors(base.store.label, base.store.infos, exp, fp8_ok=base.quant is not None, others=head_names)
