"""The TRT-LLM rank layout: which tensors each rank holds, and how each is cut.

Source: docs/sources.md, TensorRT-LLM checkpoint format.

``rank_tensors`` returns, per rank, the output tensors in file order with their dtype and shape and a
recipe that yields the bytes in row blocks. Nothing is read until a recipe runs, so the same plan
serves validation (shapes, byte totals) and writing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from medusa_trt.checkpoint.readers import BaseModel, Heads, Store
from medusa_trt.checkpoint.safetensors_io import DTYPE_SIZES, NAME_TO_CODE, nbytes_of, torch_dtype

ROW_BLOCK_BYTES = 16 << 20  # read big row-split tensors (the embedding) in blocks of about this size
FP8 = "F8_E4M3"

Recipe = Callable[[], Iterator[Any]]


@dataclass(frozen=True)
class OutTensor:
    name: str
    code: str  # safetensors dtype code
    shape: tuple[int, ...]
    make: Recipe  # yields tensors whose bytes, concatenated, are this tensor's bytes

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.code, self.shape)


@dataclass(frozen=True)
class Layout:
    base: BaseModel
    heads: Heads | None
    num_heads: int  # heads written (the first K of the source)
    tp: int
    dtype: str  # config.json dtype

    @property
    def code(self) -> str:
        return NAME_TO_CODE[self.dtype]

    @property
    def vocab_padded(self) -> int:
        v, t = self.base.spec.vocab_size, self.tp
        return (v + t - 1) // t * t

    def is_fp8(self, store: Store, weight: str) -> bool:
        return store.info(weight).dtype == FP8


# --- recipes ---------------------------------------------------------------------------------


def _cast(t: Any, code: str) -> Any:
    want = torch_dtype(code)
    return t if t.dtype == want else t.to(want)


def rows_recipe(store: Store, name: str, lo: int, hi: int, code: str) -> Recipe:
    """Rows [lo, hi) of a 1-D/2-D tensor; rows past the source's end are zeros (vocab padding)."""
    import torch

    info = store.info(name)
    rest = info.shape[1:]
    row_bytes = max(1, DTYPE_SIZES[info.dtype] * (rest[0] if rest else 1))
    step = max(1, ROW_BLOCK_BYTES // row_bytes)
    valid = info.shape[0]

    def make() -> Iterator[Any]:
        r = lo
        while r < hi:
            e = min(hi, r + step)
            if r < valid:
                e2 = min(e, valid)
                yield _cast(store.read(name, rows=(r, e2)), code)  # [e2-r, D]
                if e2 < e:
                    yield torch.zeros((e - e2, *rest), dtype=torch_dtype(code))
            else:
                yield torch.zeros((e - r, *rest), dtype=torch_dtype(code))
            r = e

    return make


def cols_recipe(store: Store, name: str, lo: int, hi: int, code: str) -> Recipe:
    return lambda: iter([_cast(store.read(name, cols=(lo, hi)), code)])  # [out, hi-lo]


def zeros_recipe(shape: tuple[int, ...], code: str) -> Recipe:
    import torch

    return lambda: iter([torch.zeros(shape, dtype=torch_dtype(code))])


def scale_recipe(store: Store, names: list[str]) -> Recipe:
    """max of scalar scales as float32 shape (1,): the shared scale of a fused or merged module."""
    import torch

    def make() -> Iterator[Any]:
        vals = [store.read(n).to(torch.float32).reshape(-1) for n in names]  # each [1]
        yield torch.stack([v.max() for v in vals]).max().reshape(1)

    return make


def qkv_recipe(lay: Layout, prefix: str, rank: int, code: str) -> Recipe:
    """[q_r; k_r; v_r] rows; KV heads replicated t/KV times first when KV < t (head r*KV//t)."""
    import torch

    s, t, store = lay.base.spec, lay.tp, lay.base.store
    hd, kv = s.head_dim, s.num_key_value_heads
    q_rows = s.num_attention_heads // t * hd
    if kv >= t:
        kv_lo, kv_hi = rank * (kv // t) * hd, (rank + 1) * (kv // t) * hd
    else:
        j = rank * kv // t
        kv_lo, kv_hi = j * hd, (j + 1) * hd
    parts = [
        (f"{prefix}q_proj", (rank * q_rows, (rank + 1) * q_rows)),
        (f"{prefix}k_proj", (kv_lo, kv_hi)),
        (f"{prefix}v_proj", (kv_lo, kv_hi)),
    ]
    fp8 = code == FP8

    def make() -> Iterator[Any]:
        if fp8:  # one scale for the fused module: requantize parts whose scale is below the max
            scales = [float(store.read(f"{p}.weight_scale").float().reshape(-1)[0]) for p, _ in parts]
            top = max(scales)
        for i, (p, rows) in enumerate(parts):
            w = store.read(f"{p}.weight", rows=rows)  # [rows, D]
            if fp8 and scales[i] != top:
                w = (w.to(torch.float32) * (scales[i] / top)).to(torch.float8_e4m3fn)
            yield _cast(w, code)

    return make


# --- the per-rank plan -----------------------------------------------------------------------


def _linear(
    lay: Layout,
    out: str,
    src: str,
    shape: tuple[int, ...],
    recipe: Callable[[str], Recipe],
    store: Store,
    scale_srcs: list[str] | None = None,
) -> list[OutTensor]:
    """A linear layer: its weight (recipe called with the output dtype), plus FP8 scales for FP8 sources."""
    fp8 = lay.is_fp8(store, f"{src}.weight")
    code = FP8 if fp8 else lay.code
    return [
        OutTensor(f"{out}.weight", code, shape, recipe(code)),
        *(_fp8_scales(out, store, scale_srcs or [src]) if fp8 else []),
    ]


def _fp8_scales(out: str, store: Store, srcs: list[str]) -> list[OutTensor]:
    return [
        OutTensor(
            f"{out}.weights_scaling_factor", "F32", (1,), scale_recipe(store, [f"{s}.weight_scale" for s in srcs])
        ),
        OutTensor(
            f"{out}.activation_scaling_factor", "F32", (1,), scale_recipe(store, [f"{s}.input_scale" for s in srcs])
        ),
    ]


def kv_scale_names(store: Store, prefix: str) -> list[str] | None:
    """ModelOpt KV-cache scales of one layer, in any export spelling: ``k_proj.k_scale`` is ModelOpt's HF
    export and what TRT-LLM's own loader reads for ``kv_cache_scaling_factor``; the others are older."""
    for k, v in (
        (f"{prefix}k_proj.k_scale", f"{prefix}v_proj.v_scale"),
        (f"{prefix}k_scale", f"{prefix}v_scale"),
        (f"{prefix}k_proj.output_scale", f"{prefix}v_proj.output_scale"),
    ):
        if k in store.infos and v in store.infos:
            return [k, v]
    return None


def rank_tensors(lay: Layout, rank: int) -> list[OutTensor]:
    """Every tensor of rank{rank}.safetensors, in write order, with shapes filled in."""
    s, t, store, code = lay.base.spec, lay.tp, lay.base.store, lay.code
    d, i_rows, hd = s.hidden_size, s.intermediate_size // t, s.head_dim
    q_cols = s.num_attention_heads * hd // t
    kvr = max(1, s.num_key_value_heads // t)
    out: list[OutTensor] = []
    out.append(
        OutTensor(
            "transformer.vocab_embedding.weight",
            code,
            (s.vocab_size, d),
            rows_recipe(store, "model.embed_tokens.weight", 0, s.vocab_size, code),
        )
    )
    for layer in range(s.num_hidden_layers):
        hf, trt = f"model.layers.{layer}.", f"transformer.layers.{layer}."
        att, mlp = f"{hf}self_attn.", f"{hf}mlp."
        out.append(
            OutTensor(
                f"{trt}input_layernorm.weight",
                code,
                (d,),
                rows_recipe(store, f"{hf}input_layernorm.weight", 0, d, code),
            )
        )
        qkv = [f"{att}q_proj", f"{att}k_proj", f"{att}v_proj"]
        out += _linear(
            lay,
            f"{trt}attention.qkv",
            qkv[0],
            ((s.num_attention_heads // t + 2 * kvr) * hd, d),
            partial(qkv_recipe, lay, att, rank),
            store,
            qkv,
        )
        out += _linear(
            lay,
            f"{trt}attention.dense",
            f"{att}o_proj",
            (d, q_cols),
            partial(cols_recipe, store, f"{att}o_proj.weight", rank * q_cols, (rank + 1) * q_cols),
            store,
        )
        if lay.base.quant and lay.base.quant.kv_cache_quant_algo == "FP8":
            names = kv_scale_names(store, att) or []
            out.append(OutTensor(f"{trt}attention.kv_cache_scaling_factor", "F32", (1,), scale_recipe(store, names)))
        out.append(
            OutTensor(
                f"{trt}post_layernorm.weight",
                code,
                (d,),
                rows_recipe(store, f"{hf}post_attention_layernorm.weight", 0, d, code),
            )
        )
        for trt_name, hf_name in (("fc", "gate_proj"), ("gate", "up_proj")):  # fc is the activated branch
            src = f"{mlp}{hf_name}"
            out += _linear(
                lay,
                f"{trt}mlp.{trt_name}",
                src,
                (i_rows, d),
                partial(rows_recipe, store, f"{src}.weight", rank * i_rows, (rank + 1) * i_rows),
                store,
            )
        out += _linear(
            lay,
            f"{trt}mlp.proj",
            f"{mlp}down_proj",
            (d, i_rows),
            partial(cols_recipe, store, f"{mlp}down_proj.weight", rank * i_rows, (rank + 1) * i_rows),
            store,
        )
    out.append(OutTensor("transformer.ln_f.weight", code, (d,), rows_recipe(store, "model.norm.weight", 0, d, code)))
    vr = lay.vocab_padded // t
    lm_src = "lm_head" if "lm_head.weight" in store.infos else "model.embed_tokens"  # tied: from the embedding
    out += _linear(
        lay,
        "lm_head",
        lm_src,
        (vr, d),
        partial(rows_recipe, store, f"{lm_src}.weight", rank * vr, (rank + 1) * vr),
        store,
    )
    if lay.heads is not None:
        out.extend(_head_tensors(lay, lay.heads, rank))
    return out


def _head_tensors(lay: Layout, h: Heads, rank: int) -> list[OutTensor]:
    """medusa_heads.{k}: L residual layers [D/t, D] + bias [D/t], and lm_head [V_pad/t, D], on every rank."""
    d, t, code, st = lay.base.spec.hidden_size, lay.tp, lay.code, h.store
    dr, vr = d // t, lay.vocab_padded // t
    out: list[OutTensor] = []
    for k in range(lay.num_heads):
        for layer in range(h.num_layers):
            trt, w = f"medusa_heads.{k}.medusa_layers.{layer}.linear", h.linear(k, layer, "weight")
            items = _linear(
                lay,
                trt,
                w.removesuffix(".weight"),
                (dr, d),
                partial(rows_recipe, st, w, rank * dr, (rank + 1) * dr),
                st,
            )
            out.append(items[0])
            b = h.linear(k, layer, "bias")
            bias = (
                rows_recipe(st, b, rank * dr, (rank + 1) * dr, code) if b in st.infos else zeros_recipe((dr,), code)
            )  # TRT-LLM's MedusaLayer always has a bias
            out.append(OutTensor(f"{trt}.bias", code, (dr,), bias))
            out.extend(items[1:])
        w = h.lm_head(k)
        out += _linear(
            lay,
            f"medusa_heads.{k}.lm_head",
            w.removesuffix(".weight"),
            (vr, d),
            partial(rows_recipe, st, w, rank * vr, (rank + 1) * vr),
            st,
        )
    return out
