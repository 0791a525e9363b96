"""Output directories never lose a user's data: foreign directories, empty paths, outputs overlapping
their inputs, two writers, stale temporaries of a killed run, --force on a directory with a user's file,
and a directory changed after its manifest was written. Real files, real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medusa_trt import outputs, records
from medusa_trt.cli import run as cli
from tests.helpers import HANG_S


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(args))
    return rc, capsys.readouterr().err


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _build_args(model: Path, heads: Path, out: str) -> list[str]:
    return ["build", "--profile", "cpu", "--model", str(model), "--medusa", str(heads), "--output", out]


def _user_dir(d: Path) -> Path:
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "mine.txt").write_text("my notes")
    (d / "medusa.yaml").write_text("mine: true\n")
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.mark.parametrize("force", [False, True])
def test_build_refuses_a_foreign_directory(
    force: bool, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _user_dir(tmp_path / "d")
    before = _snapshot(d)
    rc, err = _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(d)), *(["--force"] if force else []))
    assert rc == 2, err
    assert "not written by medusa-trt" in err and "Choose another --output" in err
    assert _snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no lock, no temporary left beside it


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_output_is_a_usage_error(
    blank: str,
    tiny_llama: Path,
    tiny_heads: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--output ""` once meant the current directory, which was then replaced, source model included."""
    _user_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    for args in (
        ["convert", "--model", str(tiny_llama), "--medusa", str(tiny_heads), "--output", blank, "--force"],
        _build_args(tiny_llama, tiny_heads, blank),
    ):
        rc, err = _cli(capsys, *args)
        assert rc == 2 and "--output is empty" in err, err
    assert _snapshot(tmp_path) == before


def test_output_overlapping_an_input_is_refused(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(tiny_llama)
    cases = {
        str(tiny_llama): "is the input --model",
        str(tiny_llama / "sub"): "lies inside the input --model",
        str(tiny_llama.parent): "contains the input --model",
    }
    for out, needle in cases.items():
        rc, err = _cli(capsys, "convert", "--model", str(tiny_llama), "--output", out, "--force")
        assert rc == 2 and needle in err, (out, err)
    rc, err = _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(tiny_heads)), "--force")
    assert rc == 2 and "is the input --medusa" in err, err
    assert _snapshot(tiny_llama) == before


def test_root_and_home_are_refused(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for out in ("/", str(home), "~"):
        rc, err = _cli(capsys, "convert", "--model", str(tiny_llama), "--output", out, "--force")
        assert rc == 2 and "refusing to write into" in err, (out, err)
    assert list(home.iterdir()) == []


def test_force_removes_only_what_medusa_trt_wrote(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    assert _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(out)))[0] == 0
    owner = records.read(records.OWNER, out)
    assert owner["kind"] == "engine" and owner["trees"] == [] and "checkpoint/rank0.safetensors" in owner["files"]
    (out / "notes.txt").write_text("user file beside the engine")
    (out / "checkpoint" / "mine.txt").write_text("user file inside a step's output")
    rc, err = _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(out)), "--force")
    assert rc == 2 and "checkpoint/mine.txt: not written by medusa-trt; refusing to" in err, err
    assert (out / "checkpoint" / "mine.txt").read_text() == "user file inside a step's output"
    (out / "checkpoint" / "mine.txt").unlink()
    rc, err = _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(out)), "--force")
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "user file beside the engine"
    assert (out / "medusa-trt.json").is_file()


def _popen(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "medusa_trt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def test_second_writer_is_refused_at_once(tiny_llama: Path, tiny_heads: Path, tmp_path: Path) -> None:
    """Two real builds into one directory: the second fails at once while the first holds the lock."""
    out = tmp_path / "eng"
    first = _popen(*_build_args(tiny_llama, tiny_heads, str(out)))
    lock = outputs.lock_path(out)
    deadline = time.monotonic() + HANG_S  # a hang guard, not a timing claim
    while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
        assert time.monotonic() < deadline, "the first build never took the lock"
        time.sleep(0.01)
    os.kill(first.pid, signal.SIGSTOP)  # hold it there, lock taken, whatever it was doing
    try:  # refused, not queued behind the first build (which is stopped: queued, it would wait forever)
        second = _popen(*_build_args(tiny_llama, tiny_heads, str(out)))
        _, err2 = second.communicate(timeout=HANG_S)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err1 = first.communicate(timeout=300)
    assert second.returncode == 1, err2
    assert f"another medusa-trt process is writing it (pid {first.pid})" in err2
    assert first.returncode == 0, err1
    assert (out / "medusa-trt.json").is_file() and not lock.exists()


_HOLD = """
import sys, time
from pathlib import Path
from medusa_trt import fsio, outputs
out = Path(sys.argv[1])
with outputs.locked(out):
    with fsio.atomic_path(out, kind="dir") as tmp:
        (tmp / "rank0.safetensors").write_bytes(b"x" * 4096)
        print(tmp, flush=True)
        time.sleep(600)
"""


def _holder(target: Path) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_stale_temporaries_of_a_killed_run_are_removed(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed with SIGKILL leaves `.out.tmp-PID-START-*`, recorded in its lock file; the next
    run removes it, and nothing else of that name pattern that no medusa-trt process recorded."""
    out = tmp_path / "out"
    dead, dead_tmp = _holder(out)
    dead.kill()  # SIGKILL: no cleanup runs
    dead.wait()
    assert dead_tmp.is_dir() and f"temp {dead_tmp}" in outputs.lock_path(out).read_text()
    lookalike = out.with_name(f".out.tmp-{dead.pid}-1-0123abcd")  # the pattern, a dead pid, never recorded
    lookalike.mkdir()
    (lookalike / "thesis.tex").write_text("years of work")
    rc, err = _cli(capsys, "convert", "--model", str(tiny_llama), "--output", str(out))
    assert rc == 0, err
    assert not dead_tmp.exists() and not outputs.lock_path(out).exists()
    assert (lookalike / "thesis.tex").read_text() == "years of work"


def test_disk_check_counts_only_what_is_left_to_write(tiny_llama: Path, tiny_heads: Path, tmp_path: Path) -> None:
    from medusa_trt.engines.build import execute, prepare

    out = tmp_path / "eng"
    first = prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out)
    assert first.checks is not None
    disk = first.checks["disk_gib"]
    assert disk["already_on_disk"] == pytest.approx(disk["hf_checkpoint"], abs=1e-3)  # the local model is read
    assert disk["total"] == pytest.approx(disk["trtllm_checkpoint"], abs=1e-3)
    execute(first)
    again = prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out)
    assert again.checks is not None and again.checks["disk_gib"]["total"] == pytest.approx(0.0, abs=1e-3)


def test_verify_and_the_start_up_check(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    assert _cli(capsys, *_build_args(tiny_llama, tiny_heads, str(out)))[0] == 0
    rc, err = _cli(capsys, "verify", str(out))
    assert rc == 0 and "intact" in err, err
    capsys.readouterr()
    assert cli(["verify", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["problems"] == [] and doc["files"] >= 5

    rank = out / "checkpoint" / "rank0.safetensors"
    st = rank.stat()
    data = bytearray(rank.read_bytes())
    data[-3] ^= 0x01  # one bit, deep in the last tensor: the header still parses
    rank.write_bytes(bytes(data))
    rc, err = _cli(capsys, "run", str(out), "--prompt", "def f():", "--max-tokens", "2")
    assert rc == 2 and "checkpoint/rank0.safetensors: content differs" in err, err
    assert f"medusa-trt verify {out}" in err
    server = _popen("run", str(out), "--port", "0")
    _, serr = server.communicate(timeout=120)
    assert server.returncode == 2 and "checkpoint/rank0.safetensors" in serr, serr

    os.utime(rank, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the bytes tell
    rc, err = _cli(capsys, "verify", str(out))
    assert rc == 1 and "checkpoint/rank0.safetensors: content differs" in err, err


def test_single_file_outputs_replace_only_their_own_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tree build --out` and `bench --plot` overwrite a file they wrote before, never a user's file
    of the same name (refused before any work, the file untouched)."""
    acc = tmp_path / "acc.csv"
    acc.write_text("0.6,0.1\n0.4,0.1\n")  # a user's table without our mark: read, never written
    tree = tmp_path / "tree.yaml"
    assert _cli(capsys, "tree", "build", "-a", str(acc), "-n", "3", "--out", str(tree))[0] == 0
    first = tree.read_text()
    assert _cli(capsys, "tree", "build", "-a", str(acc), "-n", "2", "--out", str(tree))[0] == 0  # ours: replaced
    assert tree.read_text() != first
    mine = tmp_path / "mine.yaml"
    mine.write_text("- [0]\n")
    rc, err = _cli(capsys, "tree", "build", "-a", str(acc), "-n", "3", "--out", str(mine))
    assert rc == 2 and "not written by medusa-trt" in err and mine.read_text() == "- [0]\n"

    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # someone's picture
    rc, err = _cli(capsys, "bench", "--url", "http://127.0.0.1:9", "--plot", str(photo))
    assert rc == 2 and "--plot" in err and photo.read_bytes() == b"\x89PNG\r\n\x1a\n" + b"\0" * 64
