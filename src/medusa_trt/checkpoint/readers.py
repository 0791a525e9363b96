"""Readers: Hugging Face Llama safetensors (single or sharded), FasterDecoding heads, ModelOpt combined.

Indexing reads only headers (names, dtypes, shapes); tensor data is read later, one tensor (or one
row block) at a time, through ``safe_open`` opened just for that read so the memory map does not
accumulate resident pages over a whole conversion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.checkpoint.safetensors_io import TensorInfo, dtype_code, read_header
from medusa_trt.config.model import ModelShape, read_hf_config
from medusa_trt.errors import CheckpointError


class Store:
    """Named tensors on disk: metadata up front, data on demand."""

    def __init__(self, infos: dict[str, TensorInfo], label: str) -> None:
        self.infos = infos
        self.label = label

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def read(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> Any:
        """The tensor, or a [rows, cols] window of a 2-D tensor (end-exclusive bounds)."""
        from safetensors import safe_open

        info = self.infos[name]
        with safe_open(str(info.file), framework="pt") as f:
            if rows is None and cols is None:
                return f.get_tensor(name)
            r0, r1 = rows if rows is not None else (0, info.shape[0])
            if len(info.shape) == 1:
                return f.get_slice(name)[r0:r1]
            c0, c1 = cols if cols is not None else (0, info.shape[1])
            return f.get_slice(name)[r0:r1, c0:c1]


class TorchStore(Store):
    """A ``torch.save``d state dict (FasterDecoding ``medusa_lm_head.pt``): small, loaded once."""

    def __init__(self, path: Path) -> None:
        import torch

        fsio.check_regular(path)
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{path}: cannot load ({e.__class__.__name__})".splitlines()[0],
                hint="Re-download the file; it is truncated or not a PyTorch state dict.",
            ) from e
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        self._state = state
        infos = {k: TensorInfo(path, dtype_code(v.dtype), tuple(v.shape)) for k, v in state.items()}
        super().__init__(infos, str(path))

    def read(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> Any:
        t = self._state[name]
        if rows is not None:
            t = t[rows[0] : rows[1]]
        if cols is not None:
            t = t[:, cols[0] : cols[1]]
        return t


def safetensors_store(model_dir: Path) -> Store:
    """``model.safetensors``, or the shards named by ``model.safetensors.index.json``."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = fsio.read_json(index, "safetensors index")
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map)")
        infos: dict[str, TensorInfo] = {}
        for fname in sorted(set(weight_map.values())):
            if fsio.plain_rel(fname) is None:
                raise CheckpointError(f"{index}: shard name {fname!r} is not a file name inside {model_dir}")
            shard = model_dir / fname
            if not shard.exists():
                raise CheckpointError(
                    f"{shard}: missing shard named in the index",
                    hint="Download every model-*.safetensors file of the checkpoint.",
                )
            infos.update(read_header(shard))
        missing = sorted(set(weight_map) - set(infos))
        if missing:
            raise CheckpointError(f"{index}: {len(missing)} tensor(s) listed but not in the shards, e.g. {missing[0]}")
        return Store(infos, str(model_dir))
    single = model_dir / "model.safetensors"
    if single.exists():  # read_header refuses what is not a regular file
        return Store(read_header(single), str(model_dir))
    files = sorted(model_dir.glob("*.safetensors"))
    if len(files) == 1:
        return Store(read_header(files[0]), str(model_dir))
    raise CheckpointError(
        f"{model_dir}: no model.safetensors (or index with shards)",
        hint="medusa-trt reads safetensors checkpoints; convert .bin weights with "
        "transformers' save_pretrained(safe_serialization=True).",
    )


@dataclass
class Quant:
    """ModelOpt FP8 facts of the source."""

    quant_algo: str | None
    kv_cache_quant_algo: str | None
    source_exclude: list[str] = field(default_factory=list)
    producer: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaseModel:
    shape: ModelShape
    store: Store
    config: dict[str, Any]
    quant: Quant | None  # set for ModelOpt checkpoints


def load_base(model_dir: Path) -> BaseModel:
    cfg = read_hf_config(model_dir)
    shape = ModelShape.from_hf_config(cfg, name=model_dir.name)
    quant = _modelopt_quant(model_dir)
    return BaseModel(shape, safetensors_store(model_dir), cfg, quant)


def _modelopt_quant(model_dir: Path) -> Quant | None:
    path = model_dir / "hf_quant_config.json"
    if not path.is_file():
        return None
    doc = fsio.read_json(path, "quantization config")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    producer = doc.get("producer") or {}
    if producer.get("name") != "modelopt":
        raise CheckpointError(
            f"{path}: producer is '{producer.get('name')}', not modelopt",
            hint="Only NVIDIA Model Optimizer (modelopt) quantized checkpoints are supported.",
        )
    q = doc.get("quantization") or {}
    algo = q.get("quant_algo")
    if algo not in (None, "FP8"):
        raise CheckpointError(
            f"{path}: quant_algo {algo} is not supported (FP8 only)",
            hint="Use an FP8 ModelOpt checkpoint or the unquantized model.",
        )
    kv = q.get("kv_cache_quant_algo")
    if kv not in (None, "FP8"):
        raise CheckpointError(f"{path}: kv_cache_quant_algo {kv} is not supported (FP8 or none)")
    return Quant(algo, kv, list(q.get("exclude_modules") or []), producer)


@dataclass
class Heads:
    """Medusa heads, whatever the source format, addressed by (head k, layer l)."""

    store: Store
    num_heads: int  # K found in the tensors
    num_layers: int  # L
    has_bias: bool
    fmt: str  # "fasterdecoding" | "modelopt"
    prefix: str = ""  # "medusa_heads." in ModelOpt checkpoints
    config_num_heads: int | None = None
    config_num_layers: int | None = None
    source_path: Path | None = None

    def linear(self, k: int, layer: int, part: str) -> str:
        """Source name of a head layer tensor; part: weight, bias, weight_scale, input_scale."""
        return f"{self.prefix}{k}.{layer}.linear.{part}"

    def lm_head(self, k: int, part: str = "weight") -> str:
        return f"{self.prefix}{k}.{self.num_layers}.{part}"

    def names(self, k: int) -> list[str]:
        """Every source tensor name of head k that the writer consumes (when present)."""
        parts = ("weight", "bias", "weight_scale", "input_scale")
        out = [self.linear(k, ly, p) for ly in range(self.num_layers) for p in parts]
        return [
            n
            for n in [*out, self.lm_head(k), self.lm_head(k, "weight_scale"), self.lm_head(k, "input_scale")]
            if n in self.store.infos
        ]


def _scan_heads(names: list[str], prefix: str, where: str) -> tuple[int, int, bool]:
    """(K, L, has_bias) from tensor names ``{k}.{l}.linear.weight`` and ``{k}.{L}.weight``."""
    lin = re.compile(rf"^{re.escape(prefix)}(\d+)\.(\d+)\.linear\.weight$")
    head = re.compile(rf"^{re.escape(prefix)}(\d+)\.(\d+)\.weight$")
    layers: dict[int, set[int]] = {}
    lm: dict[int, int] = {}
    for n in names:
        if m := lin.match(n):
            layers.setdefault(int(m[1]), set()).add(int(m[2]))
        elif m := head.match(n):
            lm[int(m[1])] = int(m[2])
    if not lm:
        raise CheckpointError(
            f"{where}: no Medusa head tensors ({prefix}{{k}}.{{L}}.weight)",
            hint="Expected FasterDecoding-format heads: '{k}.{l}.linear.weight' and '{k}.{L}.weight'.",
        )
    k_count = max(lm) + 1
    num_layers = lm[0]
    for k in range(k_count):
        if lm.get(k) != num_layers or layers.get(k, set()) != set(range(num_layers)):
            raise CheckpointError(
                f"{where}: Medusa head {k} is incomplete or has a different layer count",
                hint=f"Every head needs {num_layers} layer(s) 0..{num_layers - 1} and an lm_head.",
            )
    has_bias = f"{prefix}0.0.linear.bias" in names if num_layers else False
    return k_count, num_layers, has_bias


def load_fasterdecoding_heads(heads_dir: Path) -> Heads:
    st, pt = heads_dir / "medusa_lm_head.safetensors", heads_dir / "medusa_lm_head.pt"
    if st.exists():
        store: Store = Store(read_header(st), str(st))
    elif pt.exists():
        store = TorchStore(pt)
    else:
        raise CheckpointError(
            f"{heads_dir}: no medusa_lm_head.safetensors or medusa_lm_head.pt",
            hint="Point --medusa at a FasterDecoding heads directory.",
        )
    cfg: dict[str, Any] = {}
    if (heads_dir / "config.json").exists():
        cfg = read_hf_config(heads_dir)
    k, layers, bias = _scan_heads(list(store.infos), "", str(heads_dir))
    return Heads(
        store,
        k,
        layers,
        bias,
        "fasterdecoding",
        config_num_heads=cfg.get("medusa_num_heads"),
        config_num_layers=cfg.get("medusa_num_layers"),
        source_path=heads_dir,
    )


def modelopt_heads(base: BaseModel) -> Heads | None:
    """Heads inside a ModelOpt combined checkpoint (``medusa_heads.*``), or None."""
    names = [n for n in base.store.infos if n.startswith("medusa_heads.")]
    if not names:
        return None
    k, layers, bias = _scan_heads(names, "medusa_heads.", base.store.label)
    medusa_cfg = base.config.get("medusa") or {}
    return Heads(
        base.store,
        k,
        layers,
        bias,
        "modelopt",
        prefix="medusa_heads.",
        config_num_heads=medusa_cfg.get("num_medusa_heads"),
        config_num_layers=medusa_cfg.get("num_medusa_layers"),
    )
