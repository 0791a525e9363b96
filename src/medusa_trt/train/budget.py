"""``heads train --dry-run``: memory per device, disk and an estimated time for each stage.

Pure arithmetic on the model's shape and a hardware profile; nothing is loaded. Estimates are
rooflines (bytes / bandwidth, FLOPs / peak FLOPS), so real runs are slower; the output says so.

- distil (local): the backbone shard, a KV cache and prefill activations for each of the
  ``--distil-batch`` ``--seq-len`` sequences decoded together, and their last position's float32
  logits; each decode step reads the whole shard once for the batch.
- hidden: the same backbone at the same tp, one ``--seq-len`` forward per sequence.
- train: per training process, the heads in float32 with their gradients and AdamW moments
  (replicated by DDP), the frozen lm_head when shared (its dtype, plus the float32 copy the
  forward makes), and the logits of the process's share of the batch (float32, kept for backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medusa_trt import fsio
from medusa_trt.config.model import ModelShape

GIB = float(1 << 30)
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class StageBudget:
    devices: int
    memory_gib_per_device: float
    breakdown_gib: dict[str, float]
    disk_gib: float
    est_seconds: float | None  # None: done elsewhere (a teacher server)
    fits: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "memory_gib_per_device": round(self.memory_gib_per_device, 2),
            "breakdown_gib": {k: round(v, 3) for k, v in self.breakdown_gib.items()},
            "disk_gib": round(self.disk_gib, 2),
            "est_seconds": None if self.est_seconds is None else round(self.est_seconds, 1),
            "fits": self.fits,
        }


@dataclass
class TrainBudget:
    model: str
    profile: str
    device_memory_gib: float
    stages: dict[str, StageBudget]
    hints: list[str] = field(default_factory=list)
    trainable_params: int = 0
    weights_dtype: str = "bfloat16"

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "model": self.model,
            "profile": self.profile,
            "device_memory_gib": self.device_memory_gib,
            "weights_dtype": self.weights_dtype,
            "trainable_params": self.trainable_params,
            "stages": {k: v.to_json() for k, v in self.stages.items()},
            "hints": self.hints,
            "estimates": "rooflines from the profile's bandwidth and FLOPS: lower bounds on time",
        }


@dataclass
class Workload:
    sequences: int
    seq_len: int
    gen_tokens: int
    num_heads: int
    num_layers: int
    steps: int
    batch_size: int
    tp: int
    train_devices: int
    share_lm_head: bool
    teacher: bool
    distil_batch: int = 1


def trainable_params(m: ModelShape, num_heads: int, num_layers: int, share: bool) -> int:
    d, v = m.hidden_size, m.vocab_size
    per_head = num_layers * (d * d + d) + (0 if share else v * d)
    return num_heads * per_head


def training_budget(m: ModelShape, profile: Any, w: Workload) -> TrainBudget:
    """Every stage's budget against ``profile`` (a HardwareProfile)."""
    hw = profile.hardware
    dtype = profile.precision.dtype if profile.precision.dtype in _BYTES else "bfloat16"
    # the reference runtime dequantizes FP8 linears at load: the backbone sits in the profile dtype
    wb = _BYTES[dtype]
    bw = hw.hbm_bandwidth_tbps * 1e12
    flops_lo = _peak(hw.dense_tflops, dtype)
    backbone = m.num_params * wb / w.tp
    kv = 2 * m.num_hidden_layers * _kv_heads_per_rank(m, w.tp) * m.head_dim * w.seq_len * wb
    act = w.seq_len * (2 * m.hidden_size * 4 + 2 * m.intermediate_size // w.tp * wb)
    logits = w.seq_len * m.vocab_size * 4 + w.seq_len * m.vocab_size // w.tp * 4  # gathered + local

    base = {"backbone_shard": backbone / GIB, "kv_cache": kv / GIB, "activations": (act + logits) / GIB}
    prefill_s = 2 * m.num_params * w.sequences * w.seq_len / (w.tp * flops_lo)
    # distil decodes --distil-batch sequences together: a KV cache and prefill activations per sequence,
    # the logits of each one's last position only; each step reads the shard once for the whole batch
    b = max(1, w.distil_batch)
    dlogits = b * m.vocab_size * 4 * 2  # gathered + local, float32
    dbase = {"backbone_shard": backbone / GIB, "kv_cache": b * kv / GIB, "activations": (b * act + dlogits) / GIB}
    decode_s = -(-w.sequences // b) * w.gen_tokens * (backbone / bw)
    distil = StageBudget(w.tp, sum(dbase.values()), dbase, 0.0, None if w.teacher else prefill_s + decode_s)
    if w.teacher:
        distil = StageBudget(0, 0.0, {}, 0.0, None)
    disk = w.sequences * w.seq_len * m.hidden_size * wb / GIB
    hidden = StageBudget(w.tp, sum(base.values()), dict(base), disk, prefill_s)

    n_train = trainable_params(m, w.num_heads, w.num_layers, w.share_lm_head)
    local_b = -(-w.batch_size // w.train_devices)
    lm = m.vocab_size * m.hidden_size
    shared = lm * (wb + 4) if w.share_lm_head else 0  # the frozen buffer + its float32 copy in forward
    head_logits = 3 * w.num_heads * local_b * w.seq_len * m.vocab_size * 4  # logits, softmax, their grad
    hidden_in = local_b * w.seq_len * m.hidden_size * 4 * (2 + 2 * w.num_layers * w.num_heads)
    tr = {
        "heads": n_train * 4 / GIB,
        "gradients": n_train * 4 / GIB,
        "optimizer_state": n_train * 8 / GIB,
        "shared_lm_head": shared / GIB,
        "activations": (head_logits + hidden_in) / GIB,
    }
    per_head_flops = 2 * (w.num_layers * m.hidden_size**2 + lm)
    tokens = w.steps * w.batch_size * w.seq_len
    train_s = 3 * w.num_heads * per_head_flops * tokens / (w.train_devices * _peak(hw.dense_tflops, "float32"))
    train = StageBudget(w.train_devices, sum(tr.values()), tr, 0.0, train_s)

    budget = TrainBudget(m.name, profile.name, hw.memory_gib, {"distil": distil, "hidden": hidden, "train": train})
    budget.trainable_params, budget.weights_dtype = n_train, dtype
    for st in budget.stages.values():
        st.fits = st.devices <= hw.count and st.memory_gib_per_device <= hw.memory_gib
    budget.hints = _hints(budget, w, hw.count)
    return budget


def _kv_heads_per_rank(m: ModelShape, tp: int) -> int:
    return max(1, -(-m.num_key_value_heads // tp))


def _peak(tflops: Any, dtype: str) -> float:
    """Peak FLOPS for ``dtype``: the profile's figure, else the next one it lists (bf16, fp16)."""
    key = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    for k in (key, "bf16", "fp16", "fp32"):
        v = getattr(tflops, k, None)
        if v:
            return float(v) * 1e12
    return 1e12  # a profile without FLOPS (CPU): 1 TFLOPS, clearly labelled a rough estimate


def _hints(b: TrainBudget, w: Workload, count: int) -> list[str]:
    hints = []
    for name in ("distil", "hidden"):
        st = b.stages[name]
        if not st.fits:
            more = min(count, w.tp * 2)
            hints.append(
                f"{name}: {st.memory_gib_per_device:.1f} GiB per device > {b.device_memory_gib} GiB: "
                + (f"convert at --tp {more}" if more > w.tp else "the backbone does not fit this node at this dtype")
                + (", or --teacher-url for distil" if name == "distil" else "")
                + (", or a shorter --seq-len" if st.breakdown_gib.get("activations", 0) > 1 else "")
            )
    t = b.stages["train"]
    if not t.fits:
        opts = []
        if not w.share_lm_head:
            opts.append("--share-lm-head")
        if w.train_devices < min(count, w.batch_size):
            opts.append(f"--train-devices {min(count, w.batch_size)}")
        opts.append("a shorter --seq-len")
        hints.append(
            f"train: {t.memory_gib_per_device:.1f} GiB per device > {b.device_memory_gib} GiB: " + ", ".join(opts)
        )
    return hints


def shape_for(model: str) -> ModelShape:
    """A preset name, a Hugging Face directory, or a TRT-LLM checkpoint directory (its config.json)."""
    from pathlib import Path

    from medusa_trt.config.model import resolve_model
    from medusa_trt.train.backbone import is_trtllm_checkpoint

    path = Path(model).expanduser()
    if path.is_dir() and is_trtllm_checkpoint(path):
        c = fsio.read_json(path / "config.json", "config.json")
        heads = int(c["num_attention_heads"])
        return ModelShape(
            name=path.name,
            vocab_size=int(c["vocab_size"]),
            hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_size") or int(c["hidden_size"]) // heads),
            max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
            rope_theta=float(c.get("rotary_base", 10000.0)),
        )
    return resolve_model(model)
