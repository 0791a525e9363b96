"""A copied engine runs: sizes must match, files whose modification time moved are hashed (once,
remembered outside the directory), and only content that differs is refused, by `run` and `verify` alike.
Real copies with the real `cp`, real files changed on disk, the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medusa_trt.cli import run as cli
from medusa_trt.integrity import verified_dir

RUN = ("--prompt", "def f():", "--max-tokens", "2")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    out = tmp_path_factory.mktemp("copies") / "eng"
    args = ["build", "--profile", "cpu", "--model", str(tiny_llama), "--medusa", str(tiny_heads), "--output", str(out)]
    assert cli(args) == 0
    return out


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of its own per test, so that what another test verified does not count here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return verified_dir()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(args))
    return rc, capsys.readouterr().err


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)  # new mtimes, like most copies
    return dst


def _files(root: Path) -> list[str]:
    return sorted(json.loads((root / "medusa-trt.json").read_text())["files"])


def _touch_all(root: Path) -> None:
    """What `rsync -r` without -t (or an object-store sync) leaves: same bytes, other mtimes."""
    later = time.time_ns() + 3_600 * 10**9
    for rel in _files(root):
        os.utime(root / rel, ns=(later, later))


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)


def _writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o200)


@pytest.fixture
def read_only_copy(engine: Path, tmp_path: Path) -> Iterator[Path]:
    copy = _copy(engine, tmp_path / "ro")
    _read_only(copy)
    yield copy
    _writable(copy)  # so that pytest can clean it up


def test_a_cp_copy_runs_verified_once_and_verify_agrees(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(engine, tmp_path / "copy")
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 0, err
    assert "content matches the manifest's xxh3_128 hashes" in err and str(own_cache) in err
    assert len(list(own_cache.glob("*.json"))) == 1  # remembered outside the engine
    assert not [p for p in copy.rglob("*") if p.name not in {q.name for q in engine.rglob("*")}]  # nothing added
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 0 and "content matches" not in err, err  # said once: the next start is a stat per file
    assert _cli(capsys, "verify", str(copy))[0] == 0


def test_touched_files_rsync_without_times(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(engine, tmp_path / "synced")
    assert _cli(capsys, "verify", str(copy))[0] == 0  # verify remembers what it found intact ...
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 0 and "content matches" not in err, err  # ... so run does not hash it again
    _touch_all(copy)  # a later change of mtime is noticed: hashed again, and still fine
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 0 and "content matches" in err, err


def test_a_read_only_copy_runs(read_only_copy: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _cli(capsys, "run", str(read_only_copy), *RUN)
    assert rc == 0 and "content matches" in err, err
    assert _cli(capsys, "verify", str(read_only_copy))[0] == 0
    rc, err = _cli(capsys, "run", str(read_only_copy), *RUN)
    assert rc == 0 and "content matches" not in err, err


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # deep in the last tensor: the safetensors header still parses
    path.write_bytes(bytes(data))


def test_one_byte_changed_at_the_same_size_is_refused_naming_the_file(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(engine, tmp_path / "bad")
    rank = copy / "checkpoint" / "rank0.safetensors"
    size = rank.stat().st_size
    _flip_a_byte(rank)
    assert rank.stat().st_size == size
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 2 and "checkpoint/rank0.safetensors: content differs" in err, err
    assert f"medusa-trt verify {copy}" in err
    rc, err = _cli(capsys, "verify", str(copy))
    assert rc == 1 and "checkpoint/rank0.safetensors: content differs" in err, err  # the same verdict


def test_a_change_after_verification_is_noticed(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(engine, tmp_path / "later")
    assert _cli(capsys, "run", str(copy), *RUN)[0] == 0
    _flip_a_byte(copy / "checkpoint" / "rank0.safetensors")  # same size, new mtime and ctime
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 2 and "checkpoint/rank0.safetensors: content differs" in err, err


def test_a_different_size_is_refused_without_hashing(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(engine, tmp_path / "short")
    rank = copy / "checkpoint" / "rank0.safetensors"
    with rank.open("ab") as f:
        f.write(b"\0")
    rc, err = _cli(capsys, "run", str(copy), *RUN)
    assert rc == 2 and "checkpoint/rank0.safetensors:" in err and "bytes, the manifest says" in err, err
    assert not own_cache.exists()  # nothing was hashed, nothing remembered


def test_big_copies_show_a_progress_bar(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medusa_trt.integrity import check_unchanged

    copy = _copy(engine, tmp_path / "big")
    files = json.loads((copy / "medusa-trt.json").read_text())["files"]
    capsys.readouterr()
    check_unchanged(copy, files, progress_from=1)  # as if these few MiB were a 70B engine
    assert f"verify {len(files)} copied files" in capsys.readouterr().err
    check_unchanged(copy, files, progress_from=1)  # remembered: nothing to hash, no bar
    assert "copied files" not in capsys.readouterr().err


def test_the_server_refuses_a_changed_copy_as_run_prompt_does(
    engine: Path, tmp_path: Path, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` as a server checks the files in its engine process: the same refusal, and the server's own
    look-up of the tokenizer (``checkpoint_dir``) hashes nothing of a copy on its own."""
    from medusa_trt.runtime.config import checkpoint_dir

    copy = _copy(engine, tmp_path / "served")
    _flip_a_byte(copy / "checkpoint" / "rank0.safetensors")
    assert checkpoint_dir(copy) == (copy / "checkpoint").resolve()
    assert not list(own_cache.glob("*.json"))  # nothing hashed, nothing remembered
    rc, err = _cli(capsys, "run", str(copy), "--port", "0")
    assert rc == 2 and "checkpoint/rank0.safetensors: content differs" in err, err
    assert "Traceback" not in err
