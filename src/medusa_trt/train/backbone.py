"""The frozen backbone as a TRT-LLM checkpoint: an existing one from ``convert``, or a Hugging Face
model (directory or repo id) converted on the fly, without heads, at ``--tp``.

The reference runtime then runs it at the checkpoint's tp (distillation and hidden states), so the
backbone is never loaded whole in one process and never in float32 unless the checkpoint is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError, InvalidInputError
from medusa_trt.steps import digest


@dataclass(frozen=True)
class Backbone:
    ckpt_dir: Path
    tp: int
    dtype: str
    identity: str  # hash of config.json and the rank files' recorded hashes (or sizes): keys the stages
    source: str  # what the user passed


def is_trtllm_checkpoint(path: Path) -> bool:
    """A TRT-LLM checkpoint has config.json with ``architecture`` and rank0.safetensors."""
    cfg = path / "config.json"
    if not cfg.is_file() or not (path / "rank0.safetensors").is_file():
        return False
    try:
        return "architecture" in fsio.read_json(cfg, "config.json")
    except (OSError, InvalidInputError):
        return False


def _identity(ckpt: Path) -> str:
    """Cheap and content-based: the convert manifest records every file's hash; else sizes and mtimes."""
    from medusa_trt import records

    doc: dict[str, Any] = {"config": hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest()}
    if records.CONVERT.path(ckpt).is_file():
        files = records.file_table(records.read(records.CONVERT, ckpt))
        doc["files"] = {k: v.get("hash") for k, v in files.items() if k.startswith("rank")}
    else:
        doc["files"] = {
            p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(ckpt.glob("rank*.safetensors"))
        }
    return digest(doc)


def _source_key(model: str, revision: str | None) -> dict[str, Any]:
    path = Path(model).expanduser()
    if not path.is_dir():
        return {"repo_id": model, "revision": revision}
    stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.glob("*.safetensors"))}
    cfg = path / "config.json"
    config = hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None  # bytes: convert judges them
    return {"path": str(path.resolve()), "files": stats, "config": config}


def resolve_backbone(
    model: str,
    work: Path,
    *,
    tp: int | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> Backbone:
    """An existing checkpoint as is (``tp`` must match it), or ``model`` converted under ``work``."""
    path = Path(model).expanduser()
    if path.is_dir() and is_trtllm_checkpoint(path):
        cfg = fsio.read_json(path / "config.json", "config.json")
        ck_tp = int((cfg.get("mapping") or {}).get("tp_size", 1))
        if tp is not None and tp != ck_tp:
            raise InvalidInputError(
                f"--tp {tp}: {path} is a TRT-LLM checkpoint converted for tp {ck_tp}",
                hint="Drop --tp, or pass the Hugging Face model to convert it at another tp.",
            )
        if dtype is not None and dtype != cfg.get("dtype"):
            raise InvalidInputError(
                f"--dtype {dtype}: {path} holds {cfg.get('dtype')} weights",
                hint="Drop --dtype, or pass the Hugging Face model to convert it.",
            )
        return Backbone(path.resolve(), ck_tp, str(cfg.get("dtype", "float32")), _identity(path), model)
    if path.is_dir() and not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: neither a Hugging Face model nor a TRT-LLM checkpoint (no config.json)",
            hint="Pass a Hugging Face model directory or repo id, or a checkpoint from `medusa-trt convert`.",
        )
    return _convert(model, work, tp or 1, dtype, revision, progress)


def _convert(model: str, work: Path, tp: int, dtype: str | None, revision: str | None, progress: bool) -> Backbone:
    from medusa_trt.checkpoint.convert import convert_checkpoint

    key = {"source": _source_key(model, revision), "tp": tp, "dtype": dtype}
    out = work / f"checkpoint-{digest(key)}"
    if not is_trtllm_checkpoint(out):  # convert publishes by rename: present means complete
        convert_checkpoint(model, out, tp=tp, dtype=dtype, revision=revision, progress=progress)
    cfg = fsio.read_json(out / "config.json", "config.json")
    return Backbone(out, tp, str(cfg.get("dtype", "float32")), _identity(out), model)


def load_tokenizer(ckpt: Path) -> Any:
    """The tokenizer ``convert`` copied next to the ranks."""
    if not ((ckpt / "tokenizer.json").is_file() or (ckpt / "tokenizer_config.json").is_file()):
        raise CheckpointError(
            f"{ckpt}: no tokenizer files",
            hint="Convert from a model directory that holds tokenizer.json / tokenizer_config.json.",
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt))


def read_lm_head(ckpt: Path) -> Any:
    """The base lm_head [V, D] in the checkpoint's dtype: the ranks' vocab rows concatenated."""
    from safetensors import safe_open

    cfg = fsio.read_json(ckpt / "config.json", "config.json")
    tp = int((cfg.get("mapping") or {}).get("tp_size", 1))
    parts = []
    for r in range(tp):
        with safe_open(str(ckpt / f"rank{r}.safetensors"), framework="pt") as f:
            names = set(f.keys())
            if "lm_head.weight" in names:
                parts.append(f.get_tensor("lm_head.weight"))
            elif r == 0 and "transformer.vocab_embedding.weight" in names:  # tied, unsharded embedding
                parts.append(f.get_tensor("transformer.vocab_embedding.weight"))
                break
            else:
                raise CheckpointError(f"{ckpt}/rank{r}.safetensors: no lm_head.weight", hint="Convert again.")
    import torch

    full = torch.cat(parts, dim=0)  # [V (+ padding), D]
    return full[: int(cfg["vocab_size"])].contiguous()
