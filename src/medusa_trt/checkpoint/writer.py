"""Writing a checkpoint directory: rank files streamed in parallel, copied side files, all hashed on the way."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from medusa_trt.checkpoint.layout import OutTensor
from medusa_trt.checkpoint.safetensors_io import HashingFile, safetensors_header, tensor_bytes
from medusa_trt.errors import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.json",
    "chat_template.jinja",
)
COPY_BLOCK = 8 << 20


class Cancelled(Exception):
    """Another rank failed or the user interrupted: stop between blocks."""


def write_rank(
    path: Path, tensors: list[OutTensor], advance: Callable[[int], None], cancel: threading.Event
) -> dict[str, Any]:
    """One rank{r}.safetensors: header from the plan, then each tensor's blocks in order."""
    out = HashingFile(path)
    try:
        out.write(safetensors_header([(t.name, t.code, t.shape) for t in tensors], {"format": "pt"}))
        for t in tensors:
            written = 0
            for block in t.make():
                if cancel.is_set():
                    raise Cancelled
                buf = tensor_bytes(block)
                out.write(buf)
                written += len(buf)
                advance(len(buf))
            if written != t.nbytes:  # a recipe that disagrees with the plan would corrupt every later offset
                raise CheckpointError(f"internal error: {t.name} produced {written} bytes, planned {t.nbytes}")
    finally:
        digest = out.close()
    return {"size": out.size, "hash": digest}


def write_ranks(
    tmp: Path, plans: list[list[OutTensor]], workers: int, advance: Callable[[int], None]
) -> dict[str, dict[str, Any]]:
    """All rank files, ``workers`` at a time; the first failure cancels the others."""
    cancel = threading.Event()
    files: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(plans)))) as pool:
        futures = {
            pool.submit(write_rank, tmp / f"rank{r}.safetensors", plan, advance, cancel): r
            for r, plan in enumerate(plans)
        }
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            for fut, r in futures.items():
                files[f"rank{r}.safetensors"] = fut.result()
        except BaseException:
            cancel.set()  # the other ranks stop at their next block; the pool then joins them
            raise
    return files


def copy_hashed(src: Path, dst: Path) -> dict[str, Any]:
    out = HashingFile(dst)
    try:
        with src.open("rb") as f:
            while block := f.read(COPY_BLOCK):
                out.write(block)
    finally:
        digest = out.close()
    shutil.copystat(src, dst)
    return {"size": out.size, "hash": digest}


def write_hashed(dst: Path, data: bytes) -> dict[str, Any]:
    out = HashingFile(dst)
    try:
        out.write(data)
    finally:
        digest = out.close()
    return {"size": out.size, "hash": digest}


def existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (for free-space checks before creating it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
