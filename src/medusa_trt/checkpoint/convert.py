"""``convert_checkpoint``: Hugging Face Llama (+ Medusa heads, or a ModelOpt combined checkpoint) -> TRT-LLM.

Order: resolve sources, read headers, validate everything, then write into a temporary sibling
directory (ranks in parallel, hashing as bytes go out) and rename it into place. A failure at any
point removes the temporary directory; nothing is written before validation passes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio, outputs, records
from medusa_trt.checkpoint.layout import Layout, OutTensor, rank_tensors
from medusa_trt.checkpoint.readers import BaseModel, Heads, load_base, load_fasterdecoding_heads, modelopt_heads
from medusa_trt.checkpoint.safetensors_io import CODE_TO_NAME, HASH_ALGORITHM
from medusa_trt.checkpoint.sources import ResolvedSource, resolve_source
from medusa_trt.checkpoint.trtllm_config import trtllm_config
from medusa_trt.checkpoint.validate import check_layout, check_parallel
from medusa_trt.checkpoint.writer import (
    TOKENIZER_FILES,
    copy_hashed,
    default_workers,
    existing_ancestor,
    write_hashed,
    write_ranks,
)
from medusa_trt.errors import CheckpointError, InvalidInputError, MedusaTrtError
from medusa_trt.progress import byte_progress

KIND = "checkpoint"  # the ownership kind of a convert output (outputs.py)
DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MAX_DRAFT_LEN = 63  # TRT-LLM's --max_medusa_token_len default: fits the 63-node default tree


@dataclass
class ConvertResult:
    output_dir: Path
    config: dict[str, Any]
    files: dict[str, dict[str, Any]]  # name -> {"size", "hash"}
    sources: dict[str, dict[str, Any]]  # role -> source (path, repo_id, revision, commit, format)
    warnings: list[str] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0
    hash_algorithm: str = HASH_ALGORITHM

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir),
            "config": self.config,
            "files": self.files,
            "sources": self.sources,
            "warnings": self.warnings,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "bytes_per_s": round(self.bytes_per_s),
            "hash_algorithm": self.hash_algorithm,
        }


def _select_heads(base: BaseModel, medusa: ResolvedSource | None) -> Heads | None:
    embedded = (
        modelopt_heads(base)
        if base.quant is not None or any(n.startswith("medusa_heads.") for n in base.store.infos)
        else None
    )
    if medusa is None:
        return embedded
    if embedded is not None:
        raise InvalidInputError(
            f"{base.store.label} already holds Medusa heads (medusa_heads.*)",
            hint="Drop --medusa: a ModelOpt combined checkpoint carries its own heads.",
        )
    return load_fasterdecoding_heads(medusa.path)


def _head_count(heads: Heads, num_heads: int | None, num_layers: int | None, warnings: list[str]) -> int:
    """Trust the tensors; the flag may select the first K heads; config.json only earns a warning."""
    found = heads.num_heads
    if heads.config_num_heads is not None and heads.config_num_heads != found:
        warnings.append(
            f"heads config.json says {heads.config_num_heads} heads but the tensors hold {found}; "
            f"using {found} (published configs are known to be wrong)"
        )
    if heads.config_num_layers is not None and heads.config_num_layers != heads.num_layers:
        warnings.append(
            f"heads config.json says {heads.config_num_layers} layers per head but the tensors hold "
            f"{heads.num_layers}; using {heads.num_layers}"
        )
    if num_layers is not None and num_layers != heads.num_layers:
        raise CheckpointError(
            f"--num-medusa-layers {num_layers}: the heads have {heads.num_layers} layer(s) each",
            hint="Drop the flag; the layer count is read from the tensors.",
        )
    if num_heads is None:
        return found
    if num_heads < 1 or num_heads > found:
        raise CheckpointError(
            f"--num-medusa-heads {num_heads}: the tensors hold {found} head(s)",
            hint=f"Pass 1..{found}, or drop the flag to write all {found}.",
        )
    if num_heads < found:
        warnings.append(f"--num-medusa-heads {num_heads}: writing the first {num_heads} of {found} heads")
    return num_heads


def _check_draft(
    max_draft_len: int | None, tree: str | list[list[int]] | None, num_heads: int, max_positions: int
) -> int:
    from medusa_trt.medusa.trees import load_tree, tree_name, validate_tree

    mdl = DEFAULT_MAX_DRAFT_LEN if max_draft_len is None else max_draft_len
    if mdl < 1:
        raise InvalidInputError(
            f"--max-draft-len {mdl}: must be at least 1",
            hint="TRT-LLM requires max_draft_len > 0 for Medusa; it bounds the tree's nodes.",
        )
    if mdl >= max_positions:  # every step verifies max_draft_len + 1 tokens: they must fit the context
        raise InvalidInputError(
            f"--max-draft-len {mdl}: must be below the model's max_position_embeddings ({max_positions})",
            hint=f"Pass the tree's node count (default {DEFAULT_MAX_DRAFT_LEN}).",
        )
    if tree is not None:
        validate_tree(load_tree(tree), num_heads=num_heads, max_draft_len=mdl, name=tree_name(tree))
    return mdl


def convert_checkpoint(
    model: str | Path,
    output_dir: str | Path,
    *,
    medusa: str | Path | None = None,
    tp: int = 1,
    pp: int = 1,
    dtype: str | None = None,
    num_medusa_heads: int | None = None,
    num_medusa_layers: int | None = None,
    max_draft_len: int | None = None,
    revision: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    tree: str | list[list[int]] | None = None,
    medusa_revision: str | None = None,
) -> ConvertResult:
    """Write a TRT-LLM checkpoint for ``tp`` ranks into ``output_dir`` (see module docstring).

    ``workers``: rank files written at once; None picks one per usable CPU, at most ``tp``.
    """
    t0 = time.perf_counter()
    output_dir = outputs.output_path(output_dir)
    outputs.check_overlap(output_dir, {"--model": str(model), "--medusa": str(medusa) if medusa else None})
    if dtype is not None and dtype not in DTYPES:
        raise InvalidInputError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}")
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers {workers}: must be at least 1", hint="Drop it to use the default.")
    outputs.check_free(output_dir)
    outputs.check_replace(output_dir, KIND, force)  # refuse before reading anything
    src = resolve_source(model, kind="model", revision=revision)
    base = load_base(src.path)
    check_parallel(base.shape, tp, pp)
    heads_src = resolve_source(medusa, kind="heads", revision=medusa_revision) if medusa is not None else None
    heads = _select_heads(base, heads_src)
    warnings: list[str] = []
    if heads is None and (num_medusa_heads is not None or num_medusa_layers is not None):
        raise InvalidInputError(
            "--num-medusa-heads/--num-medusa-layers given but there are no Medusa heads",
            hint="Pass --medusa DIR, or use a ModelOpt checkpoint with medusa_heads.* tensors.",
        )
    k = _head_count(heads, num_medusa_heads, num_medusa_layers, warnings) if heads is not None else 0
    mdl = _check_draft(max_draft_len, tree, k, base.shape.max_position_embeddings) if heads is not None else 0
    src_code = base.store.info("model.embed_tokens.weight").dtype
    lay = Layout(base, heads, k, tp, dtype or CODE_TO_NAME.get(src_code, "bfloat16"))
    check_layout(lay)
    side = _side_files(src.path)
    ranks = [rank_tensors(lay, r) for r in range(tp)]
    config = trtllm_config(lay, ranks[0], max_draft_len=mdl)
    total = sum(t.nbytes for tensors in ranks for t in tensors)
    free = shutil.disk_usage(existing_ancestor(output_dir)).free
    if free < total * 1.02:  # a full disk is a failure of the machine, not of the input (exit 1)
        have, need = fsio.human_bytes(free, total * 1.02)
        raise MedusaTrtError(
            f"{existing_ancestor(output_dir)}: {have} free, the checkpoint needs {need}",
            hint="Free disk space or choose another --output.",
        )

    sources = {"model": dict(src.to_json(), format="modelopt" if base.quant else "hf")}
    if heads_src is not None:
        sources["medusa"] = dict(heads_src.to_json(), format="fasterdecoding")
    with outputs.replacing(output_dir, kind=KIND, inputs={"--model": src.path}, force=force) as tmp:
        with byte_progress(total, f"convert tp={tp}", enabled=progress) as advance:
            files = write_ranks(tmp, ranks, workers or default_workers(tp), advance)
        files["config.json"] = write_hashed(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        for name in side:
            files[name] = copy_hashed(src.path / name, tmp / name)
        seconds = time.perf_counter() - t0
        result = ConvertResult(
            output_dir,
            config,
            dict(sorted(files.items())),
            sources,
            warnings,
            sum(f["size"] for f in files.values()),
            seconds,
        )
        _write_manifest(tmp, result, lay, mdl)
    result.seconds = time.perf_counter() - t0
    return result


def _side_files(model_dir: Path) -> list[str]:
    """The tokenizer files to copy, each a regular file; the JSON ones parsed now (bounded size and
    nesting), so a malformed one fails here, naming it, and not at `run`."""
    names = [n for n in TOKENIZER_FILES if os.path.lexists(model_dir / n)]
    for name in names:
        fsio.check_regular(model_dir / name)
        if name.endswith(".json"):
            fsio.read_json(model_dir / name, name)
    return names


def _write_manifest(tmp: Path, r: ConvertResult, lay: Layout, mdl: int) -> None:
    doc = {
        "hash_algorithm": r.hash_algorithm,
        "sources": r.sources,
        "options": {
            "tp": lay.tp,
            "pp": 1,
            "dtype": lay.dtype,
            "num_medusa_heads": lay.num_heads or None,
            "num_medusa_layers": lay.heads.num_layers if lay.heads else None,
            "max_draft_len": mdl or None,
        },
        "files": r.files,
        "bytes_written": r.bytes_written,
        "seconds": round(r.seconds, 3),
        "warnings": r.warnings,
    }
    records.write(records.CONVERT, tmp, doc)


__all__ = ["ConvertResult", "OutTensor", "convert_checkpoint"]
