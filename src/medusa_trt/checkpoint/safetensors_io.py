"""safetensors at the byte level: header parsing with truncation checks, and a streaming writer.

The writer knows every tensor's name, dtype and shape before the first byte (the conversion layout
does), so it writes the header first and then streams tensor bytes, hashing them as they go:
no tensor is held longer than it takes to write it, and no file is re-read to hash it. Bytes that
are a verbatim range of a source file (a ``Span``) are read straight into the direct-I/O buffer, or,
where the filesystem has no direct I/O, read for the hash and copied by the kernel.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError, InvalidInputError

HASH_ALGORITHM = "xxh3_128"

# safetensors dtype code -> bytes per element
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# our dtype names (config.json spelling) <-> safetensors codes
NAME_TO_CODE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3"}
CODE_TO_NAME = {v: k for k, v in NAME_TO_CODE.items()}


def torch_dtype(code: str) -> Any:
    import torch

    return {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }[code]


def dtype_code(t: Any) -> str:
    """The safetensors code of a torch dtype."""
    name = str(t).removeprefix("torch.")
    for code in DTYPE_SIZES:
        if str(torch_dtype(code)).removeprefix("torch.") == name:
            return code
    raise CheckpointError(f"unsupported tensor dtype {name}")


def nbytes_of(code: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of safetensors dtype ``code`` and ``shape``."""
    n = DTYPE_SIZES[code]
    for dim in shape:
        n *= dim
    return n


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    offset: int = -1  # absolute file offset of the data (safetensors files only)

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


MAX_HEADER = 100_000_000  # the safetensors library's own bound on the JSON header
_HINT = "Re-download or re-save the file; it is incomplete, damaged or not a safetensors file."


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor infos of one .safetensors file, checked as strictly as the ``safetensors`` library does
    (and a little more); anything malformed is a CheckpointError naming the file (exit 2)."""
    try:
        with fsio.open_input(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)", hint=_HINT)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise CheckpointError(
                    f"{path}: safetensors header of {n} bytes (the limit is {MAX_HEADER})", hint=_HINT
                )
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated safetensors header", hint=_HINT)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    except InvalidInputError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(e.message, hint=e.hint) from e
    if not raw.lstrip(b" ").startswith(b"{"):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)", hint=_HINT)
    try:
        meta = fsio.parse_json(raw, path, "safetensors header")
    except InvalidInputError as e:
        raise CheckpointError(e.message, hint=_HINT) from e
    return header_infos(path, meta, 8 + n, size)


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def header_infos(path: Path, meta: Any, data_start: int, size: int) -> dict[str, TensorInfo]:
    """Validate a parsed header: a dict of tensor entries (dtype, non-negative integer shape and
    offsets), whose byte ranges tile the data section from 0 to its end with no hole or overlap, each
    ``shape x dtype size`` bytes long (the ``safetensors`` library's rules)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)", hint=_HINT)
    md = meta.get("__metadata__")
    if md is not None and not (isinstance(md, dict) and all(isinstance(v, str) for v in md.values())):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings", hint=_HINT)
    spans: list[tuple[int, int, str]] = []
    out: dict[str, TensorInfo] = {}
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        bad = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{bad}: entry is not an object", hint=_HINT)
        if entry.get("dtype") not in DTYPE_SIZES:
            raise CheckpointError(f"{bad}: unsupported dtype {entry.get('dtype')!r}", hint=_HINT)
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(_uint(d) for d in shape):
            raise CheckpointError(f"{bad}: shape must be a list of non-negative integers", hint=_HINT)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_uint(o) for o in offsets)):
            raise CheckpointError(f"{bad}: data_offsets must be two non-negative integers", hint=_HINT)
        begin, stop = offsets
        info = TensorInfo(path, entry["dtype"], tuple(shape), data_start + begin)
        if stop < begin or stop - begin != info.nbytes:
            raise CheckpointError(
                f"{bad}: data_offsets span {stop - begin} bytes, its shape and dtype take {info.nbytes}", hint=_HINT
            )
        spans.append((begin, stop, name))
        out[name] = info
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves a hole of {begin - end} bytes before it"
            raise CheckpointError(f"{path}: tensor {name!r} {what}", hint=_HINT)
        end = stop
    if data_start + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} of {data_start + end} bytes)", hint=_HINT)
    if data_start + end < size:
        raise CheckpointError(f"{path}: {size - data_start - end} bytes after the last tensor", hint=_HINT)
    return out


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of a source file, written out verbatim (no dtype change)."""

    file: Path
    offset: int
    length: int


COPY_CHUNK = 8 << 20  # bytes hashed and copied per step: small enough to stay in cache, big enough for few calls


class HashingFile:
    """A binary file opened for writing that hashes every byte written to it.

    Unbuffered, so that ``write`` and the in-kernel ``copy_file_range`` of ``copy_span`` can share one
    file position.
    """

    def __init__(self, path: Path) -> None:
        import xxhash

        self.path = path
        self._f: IO[bytes] = fsio.open_new(path, buffering=0)
        self._h = xxhash.xxh3_128()
        self._buf: memoryview | None = None
        self._kernel_copy = hasattr(os, "copy_file_range")
        self.size = 0

    def write(self, data: Any, *, hashed: bool = True) -> int:
        mv = memoryview(data).cast("B")
        self._write_all(mv)
        if hashed:
            self._h.update(mv)
        self.size += len(mv)
        return len(mv)

    def copy_span(self, span: Span, *, hashed: bool = True, advance: Callable[[int], None] | None = None) -> None:
        """Append a source byte range: read it only to hash it; the kernel copies it (copy_file_range).

        Copying page cache to page cache in the kernel costs a fraction of the system time of
        write() from a user buffer; where the filesystem cannot, the bytes read are written instead.
        """
        if self._buf is None:
            self._buf = memoryview(bytearray(COPY_CHUNK))
        fd = os.open(span.file, os.O_RDONLY)
        try:
            pos, end = span.offset, span.offset + span.length
            while pos < end:
                n = min(COPY_CHUNK, end - pos)
                chunk = self._read(fd, pos, n, span.file) if hashed else None
                if chunk is not None:
                    self._h.update(chunk)
                if not self._copy_in_kernel(fd, pos, n):
                    self._write_all(chunk if chunk is not None else self._read(fd, pos, n, span.file))
                self.size += n
                pos += n
                if advance is not None:
                    advance(n)
        finally:
            os.close(fd)

    def _read(self, fd: int, pos: int, n: int, name: Path) -> memoryview:
        assert self._buf is not None
        got = os.preadv(fd, [self._buf[:n]], pos)
        if got != n:
            raise CheckpointError(f"{name}: file shrank while reading (short read at byte {pos + got})")
        return self._buf[:n]

    def _write_all(self, mv: memoryview) -> None:
        done = 0
        while done < len(mv):  # a raw write may be partial
            done += self._f.write(mv[done:]) or 0

    def _copy_in_kernel(self, fd: int, pos: int, n: int) -> bool:
        """copy_file_range ``n`` bytes from ``pos`` to this file's position; False where unsupported."""
        if not self._kernel_copy:
            return False
        out, done = self._f.fileno(), 0
        try:
            while done < n:
                k = os.copy_file_range(fd, out, n - done, pos + done)
                if k == 0:
                    raise CheckpointError(f"short copy: {done} of {n} bytes (did the source change?)")
                done += k
        except OSError:  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: another filesystem, or an old kernel
            if done:
                raise
            self._kernel_copy = False
        return self._kernel_copy

    def resume_hash(self, hasher: Any) -> None:
        """Continue from ``hasher``: the bytes so far were written unhashed and are already in its state."""
        self._h = hasher

    def close(self) -> str:
        self._f.close()
        return self._h.hexdigest()


ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the device's block size; 4 KiB suits all
DIRECT_IO = hasattr(os, "O_DIRECT")  # False: always through the page cache (tests compare both)


class DirectHashingFile:
    """``HashingFile`` written with O_DIRECT: bytes go from one aligned staging buffer to the disk.

    Source ranges are read straight into the buffer, so each byte is copied once by the CPU (the read)
    instead of twice (read, then copied again into the page cache), and a checkpoint many times the
    size of memory does not push everything else out of the page cache. The last block is padded to
    the alignment and the file truncated to its real size.
    """

    def __init__(self, path: Path, fd: int) -> None:
        import mmap

        import xxhash

        self.path = path
        self._fd = fd
        self._h = xxhash.xxh3_128()
        self._stage = mmap.mmap(-1, COPY_CHUNK)  # page-aligned anonymous memory
        self._mv = memoryview(self._stage)
        self._fill = 0
        self.size = 0

    def write(self, data: Any, *, hashed: bool = True) -> int:
        mv = memoryview(data).cast("B")
        if hashed:
            self._h.update(mv)
        done = 0
        while done < len(mv):
            n = min(len(mv) - done, COPY_CHUNK - self._fill)
            self._mv[self._fill : self._fill + n] = mv[done : done + n]
            self._advance(n)
            done += n
        return len(mv)

    def copy_span(self, span: Span, *, hashed: bool = True, advance: Callable[[int], None] | None = None) -> None:
        """Append a source byte range, read straight into the staging buffer."""
        fd = os.open(span.file, os.O_RDONLY)
        try:
            pos, end = span.offset, span.offset + span.length
            while pos < end:
                n = min(end - pos, COPY_CHUNK - self._fill)
                piece = self._mv[self._fill : self._fill + n]
                got = os.preadv(fd, [piece], pos)
                if got != n:
                    raise CheckpointError(f"{span.file}: file shrank while reading (short read at byte {pos + got})")
                if hashed:
                    self._h.update(piece)
                piece.release()
                self._advance(n)
                pos += n
                if advance is not None:
                    advance(n)
        finally:
            os.close(fd)

    def _advance(self, n: int) -> None:
        self._fill += n
        self.size += n
        if self._fill == COPY_CHUNK:
            self._flush(COPY_CHUNK)

    def _flush(self, length: int) -> None:
        done = 0
        while done < length:
            done += os.write(self._fd, self._mv[done:length])
        self._fill = 0

    def resume_hash(self, hasher: Any) -> None:
        self._h = hasher

    def close(self) -> str:
        try:
            if self._fill:
                tail = self._fill
                padded = -(-tail // ALIGN) * ALIGN
                self._mv[tail:padded] = bytes(padded - tail)
                self._flush(padded)
                os.ftruncate(self._fd, self.size)
        finally:
            os.close(self._fd)
            self._mv.release()
            self._stage.close()
        return self._h.hexdigest()


def open_hashing(path: Path) -> HashingFile | DirectHashingFile:
    """A hashing writer for ``path``: direct I/O where the filesystem takes it, else the page cache."""
    if DIRECT_IO:
        try:
            # O_EXCL | O_NOFOLLOW: a file we create, never one (or a link) that was there
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECT
            fd = os.open(path, flags, 0o666)
        except OSError as e:  # EINVAL: tmpfs and other filesystems without direct I/O
            if e.errno != errno.EINVAL:
                raise fsio.os_failure(e, path) from e
        else:
            return DirectHashingFile(path, fd)
    return HashingFile(path)


def safetensors_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> bytes:
    """The 8-byte length + JSON header for tensors written back to back in ``entries`` order."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, code, shape in entries:
        n = nbytes_of(code, shape)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data start to 8 bytes
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: Any) -> Any:
    """A buffer over a tensor's bytes (bf16 and fp8 included, which numpy cannot name); raw bytes as they are."""
    if isinstance(t, (bytes, bytearray, memoryview)):
        return t
    import torch

    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()
