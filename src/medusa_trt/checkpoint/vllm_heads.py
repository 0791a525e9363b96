"""Medusa heads in vLLM's own format, biases kept.

vLLM (``vllm/transformers_utils/configs/medusa.py`` and ``vllm/model_executor/models/medusa.py`` at
v0.32.0) reads a directory holding ``config.json`` (``model_type: medusa``, ``num_heads``,
``num_hidden_layers``, ``hidden_size``, ``vocab_size``, ``truncated_vocab_size``, ``medusa_fc_bias``)
and weights ``blocks.{i}.layers.{j}.weight|bias`` (ResBlock j of head i) and ``lm_heads.{i}.weight``.
Its loader also remaps FasterDecoding names, but builds the ResBlock layers with
``bias=config.medusa_fc_bias`` (default false): pointed at FasterDecoding heads it drops their biases
without a word. Written here, ``medusa_fc_bias`` says whether the heads have them.

Heads whose lm_heads are all one tensor (trained with the base lm_head frozen, ``heads train
--share-lm-head``) get ``original_lm_head: true`` and a single ``lm_heads.0.weight``: vLLM's loader then
holds one vocabulary projection for every head (it maps that name to its shared ``lm_head``), not K.

Sources: FasterDecoding heads (``medusa_lm_head.safetensors|.pt``, also what ``heads train`` writes)
and ModelOpt combined checkpoints (``medusa_heads.*``; FP8 layers are dequantized with their
``weight_scale``, since vLLM's Medusa layers are unquantized ``nn.Linear``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.checkpoint.readers import Heads, load_base, load_fasterdecoding_heads, modelopt_heads
from medusa_trt.errors import CheckpointError, InvalidInputError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FILES = (CONFIG, WEIGHTS)
DTYPES = ("float32", "float16", "bfloat16")
logger = logging.getLogger(__name__)


@dataclass
class VllmHeads:
    """What was written (or would be): the shapes found in the tensors and how the source was read."""

    num_heads: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    has_bias: bool
    source_format: str  # fasterdecoding | modelopt
    dtype: str
    notes: list[str] = field(default_factory=list)
    shared_lm_head: bool = False  # every head's lm_head is the same tensor: written once (``tensors``)

    def config(self) -> dict[str, Any]:
        """vLLM's MedusaConfig fields (names verbatim)."""
        return {
            "model_type": "medusa",
            "architectures": ["MedusaModel"],
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "truncated_vocab_size": self.vocab_size,
            "medusa_fc_bias": self.has_bias,
            "torch_dtype": self.dtype,
            **({"original_lm_head": True} if self.shared_lm_head else {}),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "has_bias": self.has_bias,
            "source_format": self.source_format,
            "dtype": self.dtype,
            "shared_lm_head": self.shared_lm_head,
            "notes": self.notes,
        }


def read_heads(source: Path) -> Heads:
    """FasterDecoding heads, or the ``medusa_heads.*`` of a ModelOpt combined checkpoint, from a local dir."""
    if (source / "medusa_lm_head.safetensors").is_file() or (source / "medusa_lm_head.pt").is_file():
        return load_fasterdecoding_heads(source)
    if (source / CONFIG).is_file() and any(source.glob("*.safetensors")):
        heads = modelopt_heads(load_base(source))
        if heads is not None:
            return heads
    raise CheckpointError(
        f"{source}: no Medusa heads (medusa_lm_head.safetensors|.pt, or medusa_heads.* tensors)",
        hint="Give FasterDecoding heads (what `medusa-trt heads train` writes) or a ModelOpt combined checkpoint.",
    )


def inspect(heads: Heads, *, chain: int, dtype: str) -> VllmHeads:
    """Shapes from the tensors, checked head by head; ``chain`` (vLLM's num_speculative_tokens) must fit."""
    if dtype not in DTYPES:
        raise InvalidInputError(f"heads dtype {dtype!r}: vLLM's Medusa layers take {', '.join(DTYPES)}")
    st, where = heads.store, heads.store.label
    lm = st.info(heads.lm_head(0)).shape
    if len(lm) != 2:
        raise CheckpointError(f"{where}: {heads.lm_head(0)} has shape {list(lm)}, expected [vocab, hidden]")
    vocab, hidden = int(lm[0]), int(lm[1])
    for k in range(heads.num_heads):
        _expect(st, heads.lm_head(k), (vocab, hidden), where)
        for layer in range(heads.num_layers):
            _expect(st, heads.linear(k, layer, "weight"), (hidden, hidden), where)
            bias = heads.linear(k, layer, "bias")
            if heads.has_bias:
                _expect(st, bias, (hidden,), where)
            elif bias in st.infos:
                raise CheckpointError(f"{where}: {bias} present but head 0 has no bias", hint="Heads must agree.")
    if not 1 <= chain <= heads.num_heads:
        raise InvalidInputError(
            f"a chain of {chain} draft tokens needs {chain} heads; the tensors in {where} hold {heads.num_heads}",
            hint=f"vLLM drafts one token per head: use a chain of 1..{heads.num_heads} (medusa.max_draft_len).",
        )
    notes = []
    if heads.config_num_heads is not None and heads.config_num_heads != heads.num_heads:
        notes.append(
            f"config.json says {heads.config_num_heads} heads, the tensors hold {heads.num_heads}: using those"
        )
    if any(n.endswith("weight_scale") for k in range(heads.num_heads) for n in heads.names(k)):
        notes.append("FP8 head weights dequantized with their weight_scale (vLLM's Medusa layers are unquantized)")
    if heads.has_bias:
        notes.append(
            "ResBlock biases kept (medusa_fc_bias: true; vLLM's own loader drops them from FasterDecoding files)"
        )
    return VllmHeads(heads.num_heads, heads.num_layers, hidden, vocab, heads.has_bias, heads.fmt, dtype, notes)


def _expect(st: Any, name: str, shape: tuple[int, ...], where: str) -> None:
    if name not in st.infos:
        raise CheckpointError(f"{where}: missing tensor {name}")
    got = tuple(st.info(name).shape)
    if got != shape:
        raise CheckpointError(f"{where}: {name} has shape {list(got)}, expected {list(shape)}")


def _tensor(heads: Heads, name: str, dtype: Any) -> Any:
    """One source tensor in ``dtype``; an FP8 weight times its per-tensor scale (ModelOpt's meaning)."""
    import torch

    t = heads.store.read(name)
    scale = name.removesuffix(".weight") + ".weight_scale"
    if t.dtype == torch.float8_e4m3fn:
        if scale not in heads.store.infos:
            raise CheckpointError(f"{heads.store.label}: FP8 tensor {name} without {scale}")
        t = t.float() * heads.store.read(scale).float()  # [out, in] * [] (per-tensor scale)
    return t.to(dtype).contiguous()


def tensors(heads: Heads, info: VllmHeads) -> dict[str, Any]:
    """vLLM's names -> tensors, every head (vLLM loads the first num_speculative_tokens of them); sets
    ``info.shared_lm_head`` when every head's lm_head equals the first's, which is then the only one."""
    import torch

    dt = getattr(torch, info.dtype)
    out: dict[str, Any] = {}
    first = _tensor(heads, heads.lm_head(0), dt)
    # one at a time (all() stops at the first that differs): a copy is dropped as soon as it is compared
    others = (_tensor(heads, heads.lm_head(k), dt) for k in range(1, info.num_heads))
    info.shared_lm_head = info.num_heads > 1 and all(torch.equal(w, first) for w in others)
    for k in range(info.num_heads):
        for layer in range(info.num_layers):
            out[f"blocks.{k}.layers.{layer}.weight"] = _tensor(heads, heads.linear(k, layer, "weight"), dt)
            if info.has_bias:
                out[f"blocks.{k}.layers.{layer}.bias"] = _tensor(heads, heads.linear(k, layer, "bias"), dt)
        if k == 0:
            out["lm_heads.0.weight"] = first
        elif not info.shared_lm_head:
            out[f"lm_heads.{k}.weight"] = _tensor(heads, heads.lm_head(k), dt)
    if info.shared_lm_head:
        info.notes.append("every head's lm_head is one tensor: written once, original_lm_head: true")
    return out


def write_vllm_heads(source: Path, out: Path, *, chain: int, dtype: str) -> VllmHeads:
    """Write ``out/config.json`` and ``out/model.safetensors`` (each atomically); ``out`` must exist."""
    from safetensors.torch import save

    heads = read_heads(source)
    info = inspect(heads, chain=chain, dtype=dtype)
    state = tensors(heads, info)
    # bytes through fsio, not save_file: that writes 0600 whatever the umask, beside its own temporary
    fsio.write_bytes(out / WEIGHTS, save(state, metadata={"format": "pt"}))
    fsio.write_text(out / CONFIG, json.dumps(info.config(), indent=2) + "\n")
    for note in info.notes:
        logger.info("vLLM heads: %s", note)
    return info
