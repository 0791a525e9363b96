"""How `convert` moves bytes: direct I/O, kernel copies of verbatim source ranges where there is no
direct I/O, the shared prefix hashed once, per-row column reads, and the default parallelism. Every
path must give the same files, byte for byte."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import xxhash

from medusa_trt.checkpoint import convert_checkpoint, layout, safetensors_io, writer
from medusa_trt.checkpoint.safetensors_io import COPY_CHUNK, DirectHashingFile, Span, open_hashing
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


PATHS = {
    "direct": {},  # O_DIRECT where the filesystem has it (ext4, xfs); else the page cache
    "page-cache": {"DIRECT_IO": False},  # verbatim ranges copied by the kernel (copy_file_range)
    "plain-writes": {"DIRECT_IO": False, "exdev": True},  # copy_file_range refused: bytes read are written
    "torch": {"VERBATIM": False},  # every byte through a torch tensor
}


def test_every_write_path_gives_identical_files(
    bf16_model: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same checkpoint written each way: identical bytes, and manifest hashes of those bytes."""
    results: dict[str, dict[str, Any]] = {}
    for name, opts in PATHS.items():
        with monkeypatch.context() as m:
            if "DIRECT_IO" in opts:
                m.setattr(safetensors_io, "DIRECT_IO", opts["DIRECT_IO"])
            if "VERBATIM" in opts:
                m.setattr(layout, "VERBATIM", opts["VERBATIM"])
            if opts.get("exdev"):

                def exdev(*_: object) -> int:
                    raise OSError(errno.EXDEV, "cross-device")

                m.setattr(os, "copy_file_range", exdev)
            results[name] = _convert(bf16_model, tmp_path / name, workers=1 + len(results))
    files = {name: _files(tmp_path / name) for name in PATHS}
    first = files["direct"]
    assert set(first) == {"config.json", *(f"rank{r}.safetensors" for r in range(4))}
    assert all(f == first for f in files.values())
    assert all(r == results["direct"] for r in results.values())  # sizes and hashes, tokenizer files too
    for name, data in first.items():
        assert results["direct"][name]["hash"] == xxhash.xxh3_128(data).hexdigest(), name


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


@pytest.mark.parametrize("direct", [True, False], ids=["direct-io", "page-cache"])
@pytest.mark.parametrize("size", [10, 4096, 3 * (1 << 20) + 123, COPY_CHUNK + 1])
def test_writer_hashes_and_copies_byte_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool, size: int
) -> None:
    """Writes, hashed and unhashed source ranges, sizes off and on the alignment and the chunk size."""
    monkeypatch.setattr(safetensors_io, "DIRECT_IO", direct)
    src = tmp_path / "src.bin"
    blob = os.urandom(size + 2000)
    src.write_bytes(blob)
    out = open_hashing(tmp_path / "out.bin")
    assert isinstance(out, DirectHashingFile) == direct
    out.write(b"head")
    out.copy_span(Span(src, 1000, size))
    out.copy_span(Span(src, 0, 10), hashed=False)
    out.write(b"tail", hashed=False)
    digest = out.close()
    want = b"head" + blob[1000 : 1000 + size] + blob[:10] + b"tail"
    assert (tmp_path / "out.bin").read_bytes() == want and out.size == len(want)
    assert digest == xxhash.xxh3_128(b"head" + blob[1000 : 1000 + size]).hexdigest()  # unhashed bytes left out


@pytest.mark.parametrize("direct", [True, False], ids=["direct-io", "page-cache"])
def test_copy_span_refuses_a_source_that_shrank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    monkeypatch.setattr(safetensors_io, "DIRECT_IO", direct)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100)
    out = open_hashing(tmp_path / "out.bin")
    with pytest.raises(writer.CheckpointError, match=r"shrank|short copy"):
        out.copy_span(Span(src, 50, 100))
    out.close()


@pytest.mark.parametrize(("cpus", "files", "want"), [(2, 8, 8), (16, 32, 16), (12, 32, 12), (4, 1, 1), (1, 2, 2)])
def test_default_workers_one_per_cpu_at_least_eight_at_most_one_per_file(
    monkeypatch: pytest.MonkeyPatch, cpus: int, files: int, want: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)))
    assert writer.default_workers(files) == want


def test_cli_without_workers_uses_the_default(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --workers: the converter writes max(CPUs, 8) rank files at once, at most tp; --workers 0 is a
    usage error."""
    seen: list[int] = []
    real = writer.write_ranks

    def spy(tmp: Path, ranks: list[Any], workers: int, advance: Any) -> Any:
        seen.append(workers)
        return real(tmp, ranks, workers, advance)

    monkeypatch.setattr("medusa_trt.checkpoint.convert.write_ranks", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "a"), "--tp", "4"]) == 0
    assert run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "b"), "--tp", "2"]) == 0
    assert seen == [4, 2]
    code = run(["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "c"), "--workers", "0"])
    assert code == 2 and "--workers 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_same_dtype_conversion_never_imports_torch(bf16_model: dict[str, Path], tmp_path: Path) -> None:
    """bf16 in, bf16 out: spans, raw column windows and zero padding only, so the CLI never pays
    torch's start-up; the float32 heads cast to bf16 still go through torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medusa_trt.cli import run\n"
        "rc = run(sys.argv[1:])\n"
        "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))\n"
    )

    def convert(out: str, *extra: str) -> str:
        argv = ["convert", "--model", str(bf16_model["model"]), "--tp", "4", "--output", str(tmp_path / out), *extra]
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        return proc.stdout.strip().splitlines()[-1]

    assert convert("same") == "0 []"  # odd vocab at tp 4: lm_head padding rows included
    with_heads = convert("heads", "--medusa", str(bf16_model["heads"]))  # the heads are float32
    assert with_heads.startswith("0 [") and "'torch'" in with_heads
