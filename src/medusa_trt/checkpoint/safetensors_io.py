"""safetensors at the byte level: header parsing with truncation checks, and a streaming writer.

The writer knows every tensor's name, dtype and shape before the first byte (the conversion plan
does), so it writes the header first and then streams tensor bytes, hashing them as they go:
no tensor is held longer than it takes to write it, and no file is re-read to hash it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medusa_trt.errors import CheckpointError

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


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor infos of one .safetensors file; raises CheckpointError if it is unreadable or truncated."""
    hint = "Re-download or re-save the file; it is incomplete or not a safetensors file."
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)", hint=hint)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path}: truncated safetensors header", hint=hint)
            meta = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header", hint=hint) from e
    out: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')}")
        begin, stop = entry["data_offsets"]
        info = TensorInfo(path, entry["dtype"], tuple(int(s) for s in entry["shape"]), 8 + n + int(begin))
        if stop - begin != info.nbytes:
            raise CheckpointError(f"{path}: tensor {name} has inconsistent offsets", hint=hint)
        end = max(end, stop)
        out[name] = info
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} of {8 + n + end} bytes)", hint=hint)
    return out


class HashingFile:
    """A binary file opened for writing that hashes every byte written to it."""

    def __init__(self, path: Path) -> None:
        import xxhash

        self.path = path
        self._f: IO[bytes] = path.open("wb")
        self._h = xxhash.xxh3_128()
        self.size = 0

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        self._f.write(mv)
        self._h.update(mv)
        self.size += len(mv)
        return len(mv)

    def close(self) -> str:
        self._f.close()
        return self._h.hexdigest()


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
    """A buffer over a tensor's bytes (bf16 and fp8 included, which numpy cannot name)."""
    import torch

    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()
