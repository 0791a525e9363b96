"""tp > 1 rank processes never outlive their engine: failed starts and close() stop every rank.

Its own module: a tp > 1 engine cannot start while another module's tp engine fixture is open.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medusa_trt.runtime import SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint


def _rank_children() -> set[int]:
    """pids of this process's spawned rank workers (not multiprocessing's resource tracker)."""
    import psutil

    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in p.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("bad_rank", [0, 1])
def test_failed_start_leaves_no_rank_running(tmp_path: Path, tiny_llama: Path, tiny_heads: Path, bad_rank: int) -> None:
    """A damaged rank file (the spawned rank's or rank 0's own) fails load_engine with a CheckpointError,
    stops every rank already started and leaves torch.distributed free for the next engine."""
    import psutil
    import torch.distributed as dist

    from medusa_trt.errors import CheckpointError

    ckpt = make_checkpoint(tiny_llama, tmp_path / "ck", heads=tiny_heads, tp=2)
    good = (ckpt / f"rank{bad_rank}.safetensors").read_bytes()
    # same size (the start-up check compares sizes), bytes that are no safetensors file
    (ckpt / f"rank{bad_rank}.safetensors").write_bytes(b"\xff" * len(good))
    before = _rank_children()
    with pytest.raises(CheckpointError, match="cannot read"):
        load_engine(ckpt)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in _rank_children() - before], timeout=10)
    assert not alive and not dist.is_initialized()
    (ckpt / f"rank{bad_rank}.safetensors").write_bytes(good)
    with load_engine(ckpt) as engine:  # the process is clean: a new tp engine starts and works
        started = _rank_children() - before
        assert len(started) == 1
        assert [t for c in engine.generate([3, 4], SamplingParams(max_tokens=3)) for t in c.token_ids]
    _, alive = psutil.wait_procs([psutil.Process(p) for p in started if psutil.pid_exists(p)], timeout=10)
    assert not alive and not dist.is_initialized()  # close() stopped the rank
