"""The TRT-LLM rank layout: which tensors each rank holds, and how each is cut.

Source: docs/sources.md, TensorRT-LLM checkpoint format.

``rank_tensors`` returns, per rank, the output tensors in file order with their dtype and shape and a
recipe that yields the bytes in row blocks. Nothing is read until a recipe runs, so the same layout
serves validation (shapes, byte totals) and writing. Rows kept in their source dtype are yielded as a
``Span`` of the source file rather than a tensor: the writer copies those bytes without loading them.
Column windows kept in their dtype and zero padding are raw bytes, so a conversion without a dtype
change never imports torch (over a second of start-up on a small machine).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from medusa_trt.checkpoint.readers import BaseModel, Heads, Store
from medusa_trt.checkpoint.safetensors_io import DTYPE_SIZES, NAME_TO_CODE, Span, TensorInfo, nbytes_of, torch_dtype
from medusa_trt.errors import CheckpointError

ROW_BLOCK_BYTES = 16 << 20  # read big row-split tensors (the embedding) in blocks of about this size
VERBATIM = True  # False: every byte goes through torch (the tests compare both paths byte for byte)
FP8 = "F8_E4M3"

Recipe = Callable[[], Iterator[Any]]


@dataclass(frozen=True)
class OutTensor:
    name: str
    code: str  # safetensors dtype code
    shape: tuple[int, ...]
    make: Recipe  # yields tensors or Spans whose bytes, concatenated, are this tensor's bytes
    replicated: bool = False  # the same bytes on every rank (embedding, norms)

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
        v, t = self.base.shape.vocab_size, self.tp
        return (v + t - 1) // t * t

    def is_fp8(self, store: Store, weight: str) -> bool:
        return store.info(weight).dtype == FP8


# --- recipes ---------------------------------------------------------------------------------


def _cast(t: Any, code: str) -> Any:
    want = torch_dtype(code)
    return t if t.dtype == want else t.to(want)


def verbatim_rows(store: Store, name: str, lo: int, hi: int, code: str) -> Span | None:
    """Rows [lo, hi) as a byte range of the source file, when they are written unchanged."""
    info = store.info(name)
    if info.offset < 0 or info.dtype != code or not VERBATIM:
        return None  # a torch.save'd state dict, or a dtype change
    row_bytes = nbytes_of(info.dtype, info.shape[1:])
    return Span(info.file, info.offset + lo * row_bytes, (hi - lo) * row_bytes)


def _rows(store: Store, name: str, lo: int, hi: int, code: str) -> Any:
    """Rows [lo, hi) of a source tensor in dtype ``code``: a Span, or a tensor [hi-lo, ...]."""
    return verbatim_rows(store, name, lo, hi, code) or _cast(store.read(name, rows=(lo, hi)), code)


def zero_bytes(n: int) -> memoryview:
    """``n`` zero bytes (a zero of every dtype we write is all-zero bits), in an anonymous map that is
    returned to the system on release, like ``read_cols``' windows."""
    return memoryview(mmap.mmap(-1, max(1, n)))[:n]


def rows_recipe(store: Store, name: str, lo: int, hi: int, code: str) -> Recipe:
    """Rows [lo, hi) of a 1-D/2-D tensor; rows past the source's end are zeros (vocab padding)."""
    info = store.info(name)
    rest = info.shape[1:]
    row_bytes = max(1, DTYPE_SIZES[info.dtype] * (rest[0] if rest else 1))
    step = max(1, ROW_BLOCK_BYTES // row_bytes)
    valid = min(info.shape[0], hi)

    def make() -> Iterator[Any]:
        span = verbatim_rows(store, name, lo, valid, code) if lo < valid else None
        r = valid if span is not None else lo
        if span is not None:
            yield span
        while r < hi:
            e = min(hi, r + step)
            if r < valid:
                e = min(e, valid)
                yield _cast(store.read(name, rows=(r, e)), code)  # [e-r, D]
            else:
                yield zero_bytes(nbytes_of(code, (e - r, *rest)))  # vocab padding rows
            r = e

    return make


def cols_recipe(store: Store, name: str, lo: int, hi: int, code: str) -> Recipe:
    """Columns [lo, hi) of a 2-D tensor, in row blocks of about ROW_BLOCK_BYTES."""
    info = store.info(name)
    if info.offset < 0:  # a torch.save'd state dict: already in memory
        return lambda: iter([_cast(store.read(name, cols=(lo, hi)), code)])  # [out, hi-lo]

    raw = info.dtype == code and VERBATIM

    def make() -> Iterator[Any]:
        rows, size = info.shape[0], DTYPE_SIZES[info.dtype]
        step = max(1, ROW_BLOCK_BYTES // ((hi - lo) * size))
        with info.file.open("rb", buffering=0) as f:
            for r in range(0, rows, step):
                window = (r, min(rows, r + step))
                if raw:  # same dtype: the bytes as read
                    yield read_cols_bytes(f.fileno(), info, window, (lo, hi))
                else:
                    yield _cast(read_cols(f.fileno(), info, window, (lo, hi)), code)

    return make


def read_cols_bytes(fd: int, info: TensorInfo, rows: tuple[int, int], cols: tuple[int, int]) -> memoryview:
    """The bytes of a [rows, cols] window of a 2-D safetensors tensor, row-major, one read per row:
    only the bytes it needs, and no memory map of the source whose touched pages would count toward
    the resident set."""
    (r0, r1), (c0, c1), size = rows, cols, DTYPE_SIZES[info.dtype]
    width, stride = (c1 - c0) * size, info.shape[1] * size
    # Block-sized heap allocations of varying sizes, freed from several threads, fragment malloc's
    # arenas until the resident set grows with the model; an anonymous map is returned on release.
    buf = zero_bytes((r1 - r0) * width)
    base = info.offset + r0 * stride + c0 * size
    for i in range(r1 - r0):
        if os.preadv(fd, [buf[i * width : (i + 1) * width]], base + i * stride) != width:
            raise CheckpointError(f"{info.file}: file shrank while reading")
    return buf


def read_cols(fd: int, info: TensorInfo, rows: tuple[int, int], cols: tuple[int, int]) -> Any:
    """``read_cols_bytes`` as a tensor [rows, cols] of the source dtype."""
    import torch

    buf = read_cols_bytes(fd, info, rows, cols)
    out = torch.frombuffer(buf, dtype=torch.uint8, count=len(buf)) if len(buf) else torch.empty(0, dtype=torch.uint8)
    return out.view(torch_dtype(info.dtype)).reshape(rows[1] - rows[0], cols[1] - cols[0])  # [rows, cols]


def zeros_recipe(shape: tuple[int, ...], code: str) -> Recipe:
    return lambda: iter([zero_bytes(nbytes_of(code, shape))])


def scale_recipe(store: Store, names: list[str]) -> Recipe:
    """max of scalar scales as float32 shape (1,): the shared scale of a fused or merged module."""
    import torch

    def make() -> Iterator[Any]:
        vals = [store.read(n).to(torch.float32).reshape(-1) for n in names]  # each [1]
        yield torch.stack([v.max() for v in vals]).max().reshape(1)

    return make


def qkv_recipe(lay: Layout, prefix: str, rank: int, code: str) -> Recipe:
    """[q_r; k_r; v_r] rows; KV heads replicated t/KV times first when KV < t (head r*KV//t)."""
    s, t, store = lay.base.shape, lay.tp, lay.base.store
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
            import torch

            scales = [float(store.read(f"{p}.weight_scale").float().reshape(-1)[0]) for p, _ in parts]
            top = max(scales)
        for i, (p, rows) in enumerate(parts):
            if fp8 and scales[i] != top:  # in row blocks: the float32 copy is 4x the FP8 rows
                step = max(1, ROW_BLOCK_BYTES // (4 * s.hidden_size))
                for r in range(rows[0], rows[1], step):
                    w = store.read(f"{p}.weight", rows=(r, min(rows[1], r + step)))  # [step, D] FP8
                    yield (w.to(torch.float32) * (scales[i] / top)).to(torch.float8_e4m3fn)
            else:
                yield _rows(store, f"{p}.weight", *rows, code)

    return make


# --- each rank's tensors ----------------------------------------------------------------------


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
    s, t, store, code = lay.base.shape, lay.tp, lay.base.store, lay.code
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
            replicated=True,
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
                replicated=True,
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
                replicated=True,
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
    ln_f = rows_recipe(store, "model.norm.weight", 0, d, code)
    out.append(OutTensor("transformer.ln_f.weight", code, (d,), ln_f, replicated=True))
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
    d, t, code, st = lay.base.shape.hidden_size, lay.tp, lay.code, h.store
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
