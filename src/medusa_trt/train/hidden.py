"""The hidden stage: the frozen backbone's final-norm hidden states, streamed to disk shards.

The reference runtime runs the checkpoint at its tp (gloo on CPU, nccl with ``--device cuda``,
one rank per GPU). States keep the checkpoint's dtype. Shard ``n`` holds sequences
``[n*M, (n+1)*M)`` as tensors named by their index, so a rerun skips the shards already on disk and
only one shard is ever in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from medusa_trt import fsio
from medusa_trt.checkpoint.safetensors_io import read_header
from medusa_trt.steps import Stage

SHARD_BYTES = 256 << 20  # one shard in memory at a time; bounds the stage's peak RSS


def shard_name(n: int) -> str:
    return f"shard-{n:05d}.safetensors"


def sequences_per_shard(seq_len: int, hidden_size: int, itemsize: int, shard_bytes: int = SHARD_BYTES) -> int:
    return max(1, shard_bytes // max(1, seq_len * hidden_size * itemsize))


def run_hidden(
    stage: Stage,
    ckpt: Path,
    sequences: list[list[int]],
    *,
    device: str,
    per_shard: int,
    advance: Callable[[], None],
) -> None:
    """Write every missing shard, then mark the stage done."""
    from safetensors.torch import save

    stage.open()
    if stage.is_done():
        return
    shards = [list(range(i, min(i + per_shard, len(sequences)))) for i in range(0, len(sequences), per_shard)]
    todo = [(n, idx) for n, idx in enumerate(shards) if not (stage.dir / shard_name(n)).is_file()]
    for n, idx in enumerate(shards):
        if (n, idx) not in todo:
            for _ in idx:
                advance()
    if todo:
        from medusa_trt.runtime.config import read_checkpoint
        from medusa_trt.runtime.tp import Runner

        info = read_checkpoint(ckpt)
        _check_disk(
            stage.dir, sum(len(sequences[i]) for _, idx in todo for i in idx) * info.hidden_size * _itemsize(info.dtype)
        )
        runner = Runner(info, device)
        try:
            for n, idx in todo:
                tensors = {}
                for i in idx:
                    ids = torch.tensor(sequences[i], dtype=torch.long, device=runner.device)
                    tensors[str(i)] = runner.hidden_states(ids).to("cpu").contiguous()  # [S_i, D]
                    advance()
                fsio.write_bytes(stage.dir / shard_name(n), save(tensors, metadata={"format": "pt"}))
        finally:
            runner.close()
    stage.finish({"sequences": len(sequences), "shards": len(shards), "per_shard": per_shard})


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _check_disk(where: Path, need: int) -> None:
    """Refuse before computing when the shards cannot fit (a 405B run would fail hours later)."""
    import shutil

    from medusa_trt.errors import InvalidInputError

    free = shutil.disk_usage(where).free
    if free < need * 1.02:
        raise InvalidInputError(
            f"{where}: {free / 2**30:.1f} GiB free, the hidden states need {need / 2**30:.1f} GiB",
            hint="Free disk space or point --hidden-cache at a larger disk.",
        )


class HiddenCache:
    """Random access to the cached states: ``cache[i]`` is sequence i's [S, D] tensor (float32)."""

    def __init__(self, stage_dir: Path, count: int, per_shard: int) -> None:
        self.dir, self.count, self.per_shard = stage_dir, count, per_shard
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        n = i // self.per_shard
        f = self._files.get(n)
        if f is None:  # memory-mapped: reading one sequence does not load the shard
            path = self.dir / shard_name(n)
            read_header(path)  # as strict as safetensors, exit 2 naming the file
            f = self._files[n] = safe_open(str(path), framework="pt")
        return f.get_tensor(str(i)).float()  # type: ignore[attr-defined]
