"""Writing a checkpoint directory: rank files streamed in parallel, copied side files, all hashed on the way.

Files are written with direct I/O where the filesystem allows it (``open_hashing``). The rank files of
one checkpoint begin with the same bytes (the header and the full embedding, which every rank holds):
those are hashed once, and each file continues from that hash state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.checkpoint.layout import OutTensor
from medusa_trt.checkpoint.safetensors_io import (
    COPY_CHUNK,
    DirectHashingFile,
    HashingFile,
    Span,
    open_hashing,
    safetensors_header,
    tensor_bytes,
)
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


MIN_WORKERS = 8  # direct I/O waits on the disk: 8 writes in flight kept it busy where 4 did not (2 CPUs)


def default_workers(files: int) -> int:
    """Files written at once when --workers is not given: one per usable CPU but at least MIN_WORKERS,
    and at most one per file.

    Each worker reads and hashes on a CPU and then waits for its direct write to reach the disk, so a
    machine with few CPUs still gains from a few more workers than CPUs.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(files, max(cpus, MIN_WORKERS)))


@dataclass(frozen=True)
class Prefix:
    """The leading bytes every rank file shares (header and replicated tensors), hashed once."""

    count: int  # leading tensors shared
    hasher: Any  # hash state after the shared bytes


def shared_prefix(ranks: list[list[OutTensor]], headers: list[bytes]) -> Prefix | None:
    """Rank files of one checkpoint share their header and leading replicated tensors (the embedding
    comes first): hash those bytes once instead of once per rank."""
    import xxhash

    if len(ranks) < 2 or any(h != headers[0] for h in headers):
        return None
    count = 0
    while all(count < len(p) and p[count].replicated for p in ranks):
        count += 1
    if count == 0:
        return None
    h = xxhash.xxh3_128()
    h.update(headers[0])
    for t in ranks[0][:count]:
        for item in t.make():
            if isinstance(item, Span):
                _hash_span(h, item)
            else:
                h.update(tensor_bytes(item))
    return Prefix(count, h)


def _hash_span(h: Any, span: Span) -> None:
    buf = memoryview(bytearray(min(span.length, COPY_CHUNK) or 1))
    with span.file.open("rb", buffering=0) as f:
        pos, end = span.offset, span.offset + span.length
        while pos < end:
            n = os.preadv(f.fileno(), [buf[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                raise CheckpointError(f"{span.file}: file shrank while reading (at byte {pos})")
            h.update(buf[:n])
            pos += n


def write_item(out: HashingFile | DirectHashingFile, item: Any, hashed: bool, advance: Callable[[int], None]) -> int:
    """One piece of a tensor (a Span of a source file, or a tensor); returns its byte count."""
    if isinstance(item, Span):
        out.copy_span(item, hashed=hashed, advance=advance)
        return item.length
    n = out.write(tensor_bytes(item), hashed=hashed)
    advance(n)
    return n


def write_rank(
    path: Path,
    header: bytes,
    tensors: list[OutTensor],
    advance: Callable[[int], None],
    cancel: threading.Event,
    prefix: Prefix | None = None,
) -> dict[str, Any]:
    """One rank{r}.safetensors: header from its tensor list, then each tensor's pieces in order.

    With a ``prefix``, its bytes are written unhashed and the hash continues from its state.
    """
    shared = prefix.count if prefix is not None else 0

    def step(n: int) -> None:  # called per piece and per copied chunk: a cancelled rank stops within 8 MiB
        if cancel.is_set():
            raise Cancelled
        advance(n)

    out = open_hashing(path)
    try:
        out.write(header, hashed=prefix is None)
        for i, t in enumerate(tensors):
            if prefix is not None and i == shared:
                out.resume_hash(prefix.hasher.copy())
            written = 0
            for item in t.make():
                step(0)
                written += write_item(out, item, i >= shared, step)
            if written != t.nbytes:  # a recipe that disagrees with its tensor's size would corrupt every later offset
                raise CheckpointError(f"internal error: {t.name} produced {written} bytes, planned {t.nbytes}")
        if prefix is not None and shared == len(tensors):
            out.resume_hash(prefix.hasher.copy())
    finally:
        digest = out.close()
    return {"size": out.size, "hash": digest}


def write_ranks(
    tmp: Path, ranks: list[list[OutTensor]], workers: int, advance: Callable[[int], None]
) -> dict[str, dict[str, Any]]:
    """All rank files, ``workers`` at a time; the first failure cancels the others."""
    cancel = threading.Event()
    files: dict[str, dict[str, Any]] = {}
    headers = [safetensors_header([(t.name, t.code, t.shape) for t in tensors], {"format": "pt"}) for tensors in ranks]
    prefix = shared_prefix(ranks, headers)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ranks)))) as pool:
        futures = {
            pool.submit(write_rank, tmp / f"rank{r}.safetensors", headers[r], tensors, advance, cancel, prefix): r
            for r, tensors in enumerate(ranks)
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
    with fsio.open_input(src) as f:
        out = open_hashing(dst)
        try:
            while block := f.read(COPY_BLOCK):
                out.write(block)
        finally:
            digest = out.close()
        st = os.fstat(f.fileno())
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime only: the mode is the umask's
    return {"size": out.size, "hash": digest}


def write_hashed(dst: Path, data: bytes) -> dict[str, Any]:
    out = open_hashing(dst)
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
