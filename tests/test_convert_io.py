"""How `convert` moves bytes: kernel copies of verbatim source ranges, the shared prefix hashed once,
per-row column reads, and the default parallelism. Every path must give the same files, byte for byte."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import xxhash

from medusa_trt.checkpoint import convert_checkpoint, layout, writer
from medusa_trt.checkpoint.safetensors_io import HashingFile, Span
from medusa_trt.cli import run
from tests.helpers.models import make_medusa_heads, make_tiny_llama


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """bf16 like the hub's Llama 3 checkpoints (so rows stay verbatim), sharded, odd vocab (padding)."""
    root = tmp_path_factory.mktemp("io")
    model = make_tiny_llama(root / "m", seed=8, vocab_size=322, dtype="bfloat16", shards=2)
    heads = make_medusa_heads(root / "h", hidden_size=64, vocab_size=322, num_heads=2, num_layers=2, seed=9)
    return {"model": model, "heads": heads}


def _files(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix == ".safetensors" or p.name == "config.json"
    }


def _convert(src: dict[str, Path], out: Path, **kw: Any) -> dict[str, Any]:
    res = convert_checkpoint(src["model"], out, medusa=src["heads"], tp=4, progress=False, **kw)
    return res.files


def test_kernel_copy_and_torch_path_write_identical_files(
    bf16_model: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same checkpoint three ways: verbatim ranges copied by the kernel (default), copy_file_range
    refused (another filesystem: the bytes read are written), and every byte through torch."""
    fast = _convert(bf16_model, tmp_path / "fast", workers=2)
    with monkeypatch.context() as m:

        def exdev(*_: object) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        m.setattr(os, "copy_file_range", exdev)
        fallback = _convert(bf16_model, tmp_path / "fallback", workers=1)
    with monkeypatch.context() as m:
        m.setattr(layout, "VERBATIM", False)
        slow = _convert(bf16_model, tmp_path / "torch", workers=3)
    a, b, c = (_files(tmp_path / d) for d in ("fast", "fallback", "torch"))
    assert set(a) == {"config.json", *(f"rank{r}.safetensors" for r in range(4))}
    assert a == b == c
    assert fast == fallback == slow  # sizes and hashes in the manifest too (tokenizer files included)
    for name, data in a.items():
        assert fast[name]["hash"] == xxhash.xxh3_128(data).hexdigest(), name


def test_rank_files_share_the_prefix_that_is_hashed_once(bf16_model: dict[str, Path], tmp_path: Path) -> None:
    """Every rank file starts with the same header and full embedding; hashing continues from there."""
    files = _convert(bf16_model, tmp_path / "out")
    data = [(tmp_path / "out" / f"rank{r}.safetensors").read_bytes() for r in range(4)]
    n = 8 + int.from_bytes(data[0][:8], "little")
    header = json.loads(data[0][8:n])
    emb = header["transformer.vocab_embedding.weight"]["data_offsets"]
    assert emb == [0, 322 * 64 * 2]
    assert all(d[: n + emb[1]] == data[0][: n + emb[1]] for d in data)
    assert len({d[n + emb[1] :] for d in data}) == 4  # the rest differs per rank
    assert [files[f"rank{r}.safetensors"]["hash"] for r in range(4)] == [xxhash.xxh3_128(d).hexdigest() for d in data]


def test_copy_span_hashes_and_copies_a_byte_range(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    blob = os.urandom(3 * (1 << 20) + 123)
    src.write_bytes(blob)
    out = HashingFile(tmp_path / "out.bin")
    out.write(b"head")
    out.copy_span(Span(src, 1000, len(blob) - 2000))
    out.copy_span(Span(src, 0, 10), hashed=False)
    digest = out.close()
    want = b"head" + blob[1000:-1000] + blob[:10]
    assert (tmp_path / "out.bin").read_bytes() == want and out.size == len(want)
    assert digest == xxhash.xxh3_128(b"head" + blob[1000:-1000]).hexdigest()  # the unhashed range left out


def test_copy_span_refuses_a_source_that_shrank(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    out = HashingFile(tmp_path / "out.bin")
    with pytest.raises(writer.CheckpointError, match=r"shrank|short copy"):
        out.copy_span(Span(src, 50, 100))
    out.close()


@pytest.mark.parametrize(("cpus", "files", "want"), [(2, 8, 2), (16, 8, 8), (4, 1, 1), (1, 4, 1)])
def test_default_workers_one_per_cpu_at_most_one_per_file(
    monkeypatch: pytest.MonkeyPatch, cpus: int, files: int, want: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)))
    assert writer.default_workers(files) == want


def test_cli_without_workers_uses_the_default(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --workers: the converter writes min(CPUs, tp) rank files at once; --workers 0 is a usage error."""
    seen: list[int] = []
    real = writer.write_ranks

    def spy(tmp: Path, plans: list[Any], workers: int, advance: Any) -> Any:
        seen.append(workers)
        return real(tmp, plans, workers, advance)

    monkeypatch.setattr("medusa_trt.checkpoint.convert.write_ranks", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2})
    assert run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "a"), "--tp", "4"]) == 0
    assert run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "b"), "--tp", "2"]) == 0
    assert seen == [3, 2]
    code = run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "c"), "--workers", "0"])
    assert code == 2 and "--workers 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
