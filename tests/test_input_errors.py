"""Inputs that once ended in exit 1 with a raw exception name, or were accepted: each is now one line,
exit 2, naming the parameter; a full disk and a read-only directory are one line, exit 1, nothing left."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medusa_trt.cli import run as cli

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _model_with(tmp_path: Path, tiny_llama: Path, name: str, **fields: object) -> Path:
    d = tmp_path / name
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_size", "sixty-four"), ("num_attention_heads", 0), ("num_hidden_layers", -1)],
)
def test_bad_config_fields_are_usage_errors(
    field: str, value: object, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model_with(tmp_path, tiny_llama, "m", **{field: value})
    for args in (
        ["convert", "--model", str(model), "--output", str(tmp_path / "o")],
        ["plan", "-p", "cpu", "-m", str(model)],
    ):
        rc, err = _cli(capsys, *args)
        assert rc == 2 and f"config.json '{field}' is {json.dumps(value)}, not a positive integer" in err, err
    assert not (tmp_path / "o").exists()


def test_non_utf8_config_is_a_usage_error(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / "config.json").write_bytes(b'{"hidden_size": "\xff\xfe"}')
    for args in (
        ["convert", "--model", str(model), "--output", str(tmp_path / "o")],
        ["plan", "-p", "cpu", "-m", str(model)],
    ):
        rc, err = _cli(capsys, *args)
        assert rc == 2 and "config.json: not UTF-8 text" in err, err
    rc, err = _cli(capsys, "heads", "train", "--model", str(model), "--output", str(tmp_path / "h"))
    assert rc == 2 and "config.json: not UTF-8 text" in err, err  # heads train converts the model first


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    from medusa_trt.engines.build import execute, prepare

    out = tmp_path_factory.mktemp("input-errors") / "eng"
    execute(prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out))
    return out


def test_run_flags(engine_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--prompt", "hi", "--temperature", "nan"): "--temperature nan: must be a finite number >= 0",
        ("--prompt", "hi", "--temperature", "inf"): "--temperature inf: must be a finite number >= 0",
        ("--port", "70000"): "--port",
        ("--port", "-1"): "--port",
    }
    for args, needle in cases.items():
        rc, err = _cli(capsys, "run", str(engine_dir), *args)
        assert rc == 2 and needle in err, (args, err)


def test_non_utf8_prompt_from_argv(engine_dir: Path) -> None:
    """The bytes arrive as the OS passes them: a real process, a raw argv."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable.encode(), b"-m", b"medusa_trt", b"run", bytes(engine_dir), b"--prompt", b"\xff\xfe hi"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--prompt is not valid UTF-8" in proc.stderr, proc.stderr


def test_outputs_that_are_files(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "file"
    f.write_text("mine")
    for args in (
        ["build", "-p", "cpu", "-m", str(tiny_llama), "--medusa", str(tiny_heads), "--output", str(f)],
        ["heads", "train", "--model", str(tiny_llama), "--output", str(f)],
    ):
        rc, err = _cli(capsys, *args)
        assert rc == 2 and "exists and is not a directory" in err, err
    assert f.read_text() == "mine"


def test_numeric_flags(tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    cases = {
        ("heads", "train", "--model", str(tiny_llama), "--output", out, "--lr", "nan"): "--lr nan",
        (
            "convert",
            "--model",
            str(tiny_llama),
            "--medusa",
            str(tiny_heads),
            "--output",
            out,
            "--max-draft-len",
            "1000000000",
        ): "--max-draft-len 1000000000",
        ("convert", "--model", str(tiny_llama), "--output", out, "--workers", "0"): "--workers 0",
        ("convert", "--model", str(tiny_llama), "--output", out, "--workers", "-1"): "--workers -1",
    }
    for args, needle in cases.items():
        rc, err = _cli(capsys, *args)
        assert rc == 2 and needle in err, (args, err)
    assert not Path(out).exists()


def test_profile_with_more_heads_than_the_tensors(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The heads' tensors decide: more heads in the profile is fine while its tree fits the heads (a note),
    and refused (exit 2) once the tree needs a head the tensors lack."""
    text = (ROOT / "profiles" / "cpu.yaml").read_text()
    assert "  num_heads: 3\n" in text
    prof = tmp_path / "seven.yaml"
    prof.write_text(text.replace("  num_heads: 3\n", "  num_heads: 7\n"))
    out = tmp_path / "e"
    args = ("build", "-p", str(prof), "-m", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(out))
    rc, err = _cli(capsys, *args, "--dry-run")
    assert rc == 0, err
    deep = tmp_path / "deep.yaml"
    deep.write_text(
        prof.read_text()
        .replace("max_draft_len: 15", "max_draft_len: 63")
        .replace("tree: nvidia_low_latency_15", "tree: mc_sim_7b_63")
    )
    rc, err = _cli(capsys, "build", "-p", str(deep), *args[3:])
    assert rc == 2 and "mc_sim_7b_63" in err and "needs 4 Medusa heads" in err and "nvidia_low_latency_15" in err, err
    assert not out.exists()


def _sleep() -> None:
    import time

    time.sleep(60)


def test_rank_death_says_what_happened() -> None:
    """A rank killed by SIGKILL during start-up: the message says so, and the CLI is not told to add a
    `__main__` guard (that advice is for a user's own script)."""
    from medusa_trt.runtime import tp

    proc = multiprocessing.get_context("spawn").Process(target=_sleep)
    proc.start()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    err = tp._rank_died(1, proc.exitcode)
    assert err.message == "tensor-parallel rank 1 was killed by SIGKILL while starting"
    assert err.hint is not None and "out of memory" in err.hint
    argv0 = sys.argv[0]
    try:
        sys.argv[0] = "/usr/bin/medusa-trt"
        assert "__main__" not in (tp._rank_died(1, proc.exitcode).hint or "")
        assert "exited (code 1)" in tp._rank_died(2, 1).message
    finally:
        sys.argv[0] = argv0


def _in_tmpfs(mount: Path, options: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run medusa-trt in a private mount namespace with a tmpfs at ``mount`` (root only)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = f'mount -t tmpfs -o {options} tmpfs "$1" && shift && exec "$@"'
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(mount), *cmd]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="mounting a tmpfs needs root and unshare"
)


@needs_mounts
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    acc = tmp_path / "acc.csv"
    acc.write_text("0.9,0.05\n0.8,0.1\n0.7,0.1\n")
    mnt = tmp_path / "full"
    mnt.mkdir()
    fill = 'head -c 1000000 /dev/zero > "$0/fill" 2>/dev/null; '
    shell = fill + 'ls -A "$0" > "$0.before"; "$@"; rc=$?; ls -A "$0" > "$0.after"; exit $rc'
    proc = _in_tmpfs(
        mnt,
        "size=64k",
        "sh",
        "-c",
        shell,
        str(mnt),
        sys.executable,
        "-m",
        "medusa_trt",
        "tree",
        "build",
        "--accuracy",
        str(acc),
        "--nodes",
        "4",
        "--out",
        str(mnt / "tree.yaml"),
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert f"cannot write {mnt / 'tree.yaml'}: no space left on the device" in errors[0]
    assert (tmp_path / "full.after").read_text() == "fill\n"  # no tree.yaml, no temporary


@needs_mounts
def test_read_only_output_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    out = mnt / "ckpt"
    proc = _in_tmpfs(
        mnt, "ro", sys.executable, "-m", "medusa_trt", "convert", "--model", str(tiny_llama), "--output", str(out)
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and errors == [f"error: cannot write {out}: read-only file system"], proc.stderr
