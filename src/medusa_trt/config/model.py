"""Llama 3.x architecture numbers: presets and Hugging Face ``config.json`` parsing.

Both RoPE spellings are read: the hub's ``rope_scaling`` + ``rope_theta`` and transformers 5's
``rope_parameters`` (which carries ``rope_theta`` inside).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError, InvalidInputError

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA32_ROPE = dict(_LLAMA31_ROPE, factor=32.0)


class ModelShape(BaseModel):
    """The numbers every step needs; field names follow Hugging Face's config.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    @property
    def num_params(self) -> int:
        """Base-model parameters (embedding counted once when tied)."""
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = d * (q + 2 * kv) + q * d + 3 * d * i + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_hidden_layers * per_layer + d + head

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str = "local") -> ModelShape:
        """Parse a Llama config.json (either RoPE spelling)."""
        if cfg.get("model_type") not in (None, "llama"):
            raise CheckpointError(
                f"{name}: model_type '{cfg.get('model_type')}' is not a Llama model",
                hint="medusa-trt supports Llama 3.x checkpoints (model_type: llama).",
            )
        try:
            params = cfg.get("rope_parameters")
            scaling: dict[str, Any] | None
            if params:  # transformers 5: theta lives inside rope_parameters
                theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
                scaling = {k: v for k, v in params.items() if k != "rope_theta"}
            else:
                theta = float(cfg.get("rope_theta", 10000.0))
                scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
            if scaling is not None:
                rope_type = scaling.get("rope_type", scaling.get("type", "default"))
                scaling = None if rope_type == "default" else dict(scaling, rope_type=rope_type)
                if scaling is not None:
                    scaling.pop("type", None)
            ints = {k: _positive(cfg, k, name) for k in _REQUIRED_INTS}
            heads = ints["num_attention_heads"]
            return cls(
                name=name,
                **ints,
                num_key_value_heads=_positive(cfg, "num_key_value_heads", name, heads),
                head_dim=_positive(cfg, "head_dim", name, ints["hidden_size"] // heads),
                max_position_embeddings=_positive(cfg, "max_position_embeddings", name, 2048),
                rope_theta=theta,
                rope_scaling=scaling,
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                hidden_act=str(cfg.get("hidden_act", "silu")),
            )
        except KeyError as e:
            raise CheckpointError(
                f"{name}: config.json lacks '{e.args[0]}'",
                hint="Point at a Hugging Face Llama directory with a complete config.json.",
            ) from e
        except (TypeError, ValueError) as e:  # a rope field that is not a number, a malformed rope_scaling
            raise CheckpointError(
                f"{name}: config.json has a malformed field ({e})",
                hint="Point at a Hugging Face Llama directory with a complete config.json.",
            ) from e


def _preset(
    name: str,
    v: int,
    d: int,
    i: int,
    layers: int,
    h: int,
    kv: int,
    rope: dict[str, Any],
    tied: bool = False,
    head_dim: int = 128,
) -> ModelShape:
    return ModelShape(
        name=name,
        vocab_size=v,
        hidden_size=d,
        intermediate_size=i,
        num_hidden_layers=layers,
        num_attention_heads=h,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(rope),
        tie_word_embeddings=tied,
    )


# Architecture numbers from the published Hugging Face configs (meta-llama/*).
PRESETS: dict[str, ModelShape] = {
    p.name: p
    for p in (
        _preset("llama-3.1-8b", 128256, 4096, 14336, 32, 32, 8, _LLAMA31_ROPE),
        _preset("llama-3.1-70b", 128256, 8192, 28672, 80, 64, 8, _LLAMA31_ROPE),
        _preset("llama-3.1-405b", 128256, 16384, 53248, 126, 128, 8, _LLAMA31_ROPE),
        _preset("llama-3.2-1b", 128256, 2048, 8192, 16, 32, 8, _LLAMA32_ROPE, tied=True, head_dim=64),
        _preset("llama-3.2-3b", 128256, 3072, 8192, 28, 24, 8, _LLAMA32_ROPE, tied=True),
        _preset("llama-3.3-70b", 128256, 8192, 28672, 80, 64, 8, _LLAMA31_ROPE),
    )
}


_REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def _positive(cfg: dict[str, Any], key: str, name: str, default: int | None = None) -> int:
    """A config.json integer that must be >= 1 (a missing one raises KeyError unless it has a default)."""
    raw = cfg[key] if default is None else (cfg.get(key) or default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != int(raw) or int(raw) < 1:
        raise CheckpointError(
            f"{name}: config.json '{key}' is {json.dumps(raw)}, not a positive integer",
            hint="Fix config.json, or point at the model's original directory.",
        )
    return int(raw)


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.exists():
        raise CheckpointError(f"{model_dir}: no config.json", hint="Point at a Hugging Face model directory.")
    data = fsio.read_json(path, "config.json")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def resolve_model(name_or_dir: str) -> ModelShape:
    """A preset name (``llama-3.1-70b``) or a local Hugging Face directory."""
    if name_or_dir in PRESETS:
        return PRESETS[name_or_dir]
    path = Path(name_or_dir)
    if path.is_dir():
        return ModelShape.from_hf_config(read_hf_config(path), name=path.name)
    raise InvalidInputError(
        f"unknown model '{name_or_dir}': not a preset and not a local directory",
        hint=f"Presets: {', '.join(PRESETS)}; or a directory holding a config.json.",
    )
