"""Loading one rank's TRT-LLM shard into compute-ready tensors (docs/sources.md, TensorRT-LLM checkpoint format).

Per-layer tensors are fused for speed where TRT-LLM fuses at build time (``fc`` and ``gate`` into one
matmul), and the trunk's matmul weights prepacked for the CPU's kernel (``kernels.pack``); Medusa heads are stacked over heads (their lm_heads transposed) so all K run as one batched matmul. FP8 weights are
dequantized once (``weight * weights_scaling_factor``); activation scales are not simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError
from medusa_trt.runtime import kernels
from medusa_trt.runtime.config import CheckpointInfo

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LayerWeights:
    ln1: torch.Tensor  # [D]
    qkv: kernels.Weight  # [(Hl + 2*KVl) * hd, D]
    dense: kernels.Weight  # [D, Hl * hd]
    ln2: torch.Tensor  # [D]
    fc_gate: kernels.Weight  # [2 * Il, D]: fc (activated, from gate_proj) then gate (from up_proj)
    proj: kernels.Weight  # [D, Il]


@dataclass
class ShardWeights:
    embed: torch.Tensor  # [V or V/t, D]
    embed_offset: int  # first vocab row held here (parallel embedding), else 0
    parallel_embedding: bool
    layers: list[LayerWeights]
    ln_f: torch.Tensor  # [D]
    lm_head: kernels.Weight  # [Vl, D] this rank's vocab rows
    vocab_rows: list[int]  # lm_head rows on every rank (for the gather)
    heads_w: list[torch.Tensor]  # per Medusa layer l: [K, D/t, D]
    heads_b: list[torch.Tensor]  # per Medusa layer l: [K, D/t]
    heads_lm_t: torch.Tensor | None  # [K, D, Vl_head]: transposed once, for one batched matmul over heads
    head_rows: list[int]
    # in bfloat16 instead (heads_lm_t None): each head's lm_head [Vl_head, D], packed (``_medusa_lm_heads``)
    heads_lm: list[kernels.Weight] | None = None
    # every head's lm_head is the base lm_head itself (heads trained with it frozen): neither of the
    # above is kept, and the K heads' rows go through ``lm_head`` as one product
    heads_share_lm: bool = False


def shard_rows(info: CheckpointInfo, name: str) -> list[int]:
    """Dim-0 size of ``name`` in every rank file (headers only), or [] when absent."""
    from safetensors import safe_open

    rows = []
    for r in range(info.tp):
        path = info.ckpt_dir / f"rank{r}.safetensors"
        fsio.check_regular(path)  # a FIFO would block safe_open forever
        try:
            with safe_open(str(path), framework="pt") as f:
                if name not in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    return []
                rows.append(int(f.get_slice(name).get_shape()[0]))
        except Exception as e:  # another rank's file is damaged: the same one-line error as our own
            raise CheckpointError(
                f"{path}: cannot read ({e.__class__.__name__}: {e})", hint="The file is damaged; convert again."
            ) from e
    return rows


def _dequant(state: dict[str, torch.Tensor], name: str, dtype: torch.dtype) -> torch.Tensor:
    w = state[name]
    scale_name = name.removesuffix("weight") + "weights_scaling_factor"
    if scale_name in state:  # FP8: stored e4m3 (or int8 bits); the scale divides, so multiply back
        if w.dtype == torch.int8:
            w = w.view(torch.float8_e4m3fn)
        return (w.to(torch.float32) * state[scale_name].to(torch.float32).reshape(-1)[0]).to(dtype)
    return w.to(dtype)


Getter = Callable[[str], torch.Tensor]  # a tensor by name, dequantized, on the device; raises if missing


def load_shard(info: CheckpointInfo, rank: int, device: str) -> ShardWeights:
    path: Path = info.ckpt_dir / f"rank{rank}.safetensors"
    dtype = DTYPES.get(info.dtype)
    if dtype is None:
        raise CheckpointError(
            f"{info.ckpt_dir}: dtype '{info.dtype}' is not supported",
            hint="Convert with --dtype float32, float16 or bfloat16.",
        )
    state = _read_state(path)
    # a small float32 shard keeps its plain weights beside the packed ones (kernels.Packed)
    twin = dtype == torch.float32 and 4 * sum(t.numel() for t in state.values()) <= kernels.TWIN_MAX_BYTES

    def pack(w: torch.Tensor) -> kernels.Weight:
        return kernels.pack(w, twin=twin)

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"{path}: missing tensor '{name}'", hint="Convert the checkpoint again.")
        w = _dequant(state, name, dtype).to(device).contiguous()
        del state[name]  # each is read once: a packed copy (kernels.pack) never coexists with the file's
        return w

    layers = [_layer(get, pack, i) for i in range(info.num_layers)]
    parallel = bool(info.config.get("use_parallel_embedding")) and info.tp > 1
    embed = get("transformer.vocab_embedding.weight")
    embed_rows = shard_rows(info, "transformer.vocab_embedding.weight") if parallel else [embed.shape[0]]
    lm_head, vocab_rows = _lm_head(info, rank, get, "lm_head.weight" in state, embed, parallel, path)
    heads_w, heads_b, head_rows = _medusa_heads(info, get)
    heads_lm_t, heads_lm, share = _medusa_lm_heads(info, get, dtype, lm_head)
    return ShardWeights(
        embed=embed,
        embed_offset=sum(embed_rows[:rank]) if parallel else 0,
        parallel_embedding=parallel,
        layers=layers,
        ln_f=get("transformer.ln_f.weight"),
        lm_head=pack(lm_head),
        vocab_rows=vocab_rows,
        heads_w=heads_w,
        heads_b=heads_b,
        heads_lm_t=heads_lm_t,
        head_rows=head_rows,
        heads_lm=heads_lm,
        heads_share_lm=share,
    )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    fsio.check_regular(path)  # a FIFO would block the read forever
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # truncated or corrupt file
        raise CheckpointError(
            f"{path}: cannot read ({e.__class__.__name__}: {e})", hint="The file is damaged; convert again."
        ) from e


def _layer(get: Getter, pack: Callable[[torch.Tensor], kernels.Weight], i: int) -> LayerWeights:
    p = f"transformer.layers.{i}."
    return LayerWeights(
        ln1=get(p + "input_layernorm.weight"),
        qkv=pack(get(p + "attention.qkv.weight")),
        dense=pack(get(p + "attention.dense.weight")),
        ln2=get(p + "post_layernorm.weight"),
        fc_gate=pack(torch.cat([get(p + "mlp.fc.weight"), get(p + "mlp.gate.weight")], dim=0)),
        proj=pack(get(p + "mlp.proj.weight")),
    )


def _lm_head(
    info: CheckpointInfo, rank: int, get: Getter, present: bool, embed: torch.Tensor, parallel: bool, path: Path
) -> tuple[torch.Tensor, list[int]]:
    """This rank's lm_head rows [Vl, D] and every rank's row count."""
    if present:
        return get("lm_head.weight"), shard_rows(info, "lm_head.weight")
    if not parallel:  # tied embeddings without an explicit lm_head: slice the full embedding
        chunks = torch.chunk(embed, info.tp, dim=0)
        return chunks[rank].contiguous(), [c.shape[0] for c in chunks]
    raise CheckpointError(f"{path}: missing tensor 'lm_head.weight'", hint="Convert the checkpoint again.")


def _medusa_heads(info: CheckpointInfo, get: Getter) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Per Medusa layer the K heads' ResBlock weights and biases stacked, and their lm_heads' row counts."""
    k_heads = info.num_medusa_heads
    if not k_heads:
        return [], [], []
    heads_w: list[torch.Tensor] = []
    heads_b: list[torch.Tensor] = []
    for layer in range(info.num_medusa_layers):
        names = [f"medusa_heads.{k}.medusa_layers.{layer}.linear." for k in range(k_heads)]
        heads_w.append(torch.stack([get(n + "weight") for n in names]))  # [K, D/t, D]
        heads_b.append(torch.stack([get(n + "bias") for n in names]))  # [K, D/t]
    return heads_w, heads_b, shard_rows(info, "medusa_heads.0.lm_head.weight")


def _medusa_lm_heads(
    info: CheckpointInfo, get: Getter, dtype: torch.dtype, base: torch.Tensor
) -> tuple[torch.Tensor | None, list[kernels.Weight] | None, bool]:
    """The heads' lm_heads: (None, None, True) when every one equals the base lm_head ``base`` [Vl, D]
    (heads trained with it frozen, written as copies): nothing more is kept, and the heads' K rows go
    through the base lm_head as one product, reading its weight once instead of K copies. Otherwise
    transposed and stacked [K, D, Vl] for one batched matmul, or in bfloat16 one packed weight [Vl, D]
    per head (``kernels.pack``; a plain one where oneDNN does not take it).

    Each is one row times a [D, Vl] matrix: in bfloat16 oneDNN's packed product reads a large one about
    twice as fast as the batched matmul (``benchmarks/prefill.py``'s heads column, Llama 3.1 8B-shaped);
    in float32 the batched matmul over the transposed weights is the faster."""
    k_heads = info.num_medusa_heads
    if not k_heads:
        return None, None, False
    names = [f"medusa_heads.{k}.lm_head.weight" for k in range(k_heads)]
    first = get(names[0])
    later: dict[int, torch.Tensor] = {}  # heads after a shared first one that are not copies (held until used)
    if _same(first, base):
        for k in range(1, k_heads):  # one at a time: a copy is dropped as soon as it is compared
            if not _same(w := get(names[k]), base):
                later[k] = w
        if not later:
            return None, None, True
        first = base

    def head(k: int) -> torch.Tensor:  # [Vl_head, D]; read only when used: the K copies never coexist
        if k == 0:
            return first
        return later.pop(k, base) if first is base else get(names[k])

    if dtype == torch.bfloat16:
        return None, [kernels.pack(head(k)) for k in range(k_heads)], False
    heads_lm = torch.empty(k_heads, first.shape[1], first.shape[0], dtype=first.dtype, device=first.device)
    for k in range(k_heads):
        heads_lm[k] = head(k).t()
    return heads_lm, None, False


def _same(w: torch.Tensor, base: torch.Tensor) -> bool:
    return w.shape == base.shape and w.dtype == base.dtype and torch.equal(w, base)
