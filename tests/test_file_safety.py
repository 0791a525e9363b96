"""Hostile files, second round: a symlink or a user's file at the lock name, a file dropped into an
output while it is being replaced, look-alike temporaries, a tampered ownership list, FIFOs as
inputs, malformed safetensors headers and JSON, symlinked outputs, modes, full disks. Real files,
real processes, real signals, real (tmpfs) file systems."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medusa_trt import fsio, outputs
from medusa_trt.cli import run as cli
from medusa_trt.errors import InvalidInputError
from tests.helpers import HANG_S


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(list(args))
    return rc, capsys.readouterr().err


def _popen(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    # the timeout only keeps a regression (a read blocked on a FIFO) from hanging the suite
    return subprocess.run(
        [sys.executable, "-m", "medusa_trt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_S,
        preexec_fn=pre,
    )


def _build(model: Path, heads: Path, out: Path | str, *extra: str) -> list[str]:
    return ["build", "--profile", "cpu", "--model", str(model), "--medusa", str(heads), "--output", str(out), *extra]


def _train(model: Path, out: Path | str) -> list[str]:
    return ["heads", "train", "--model", str(model), "--output", str(out), "--steps", "2", "--num-heads", "2"]


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


# --- 1. the lock ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["symlink", "dangling symlink", "hard link", "user file", "fifo"])
def test_the_lock_never_follows_truncates_or_removes_what_is_at_its_name(
    plant: str, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    cmds = {
        "convert": (tmp_path / "ck", ["convert", "--model", str(tiny_llama), "--output", str(tmp_path / "ck")]),
        "build": (tmp_path / "eng", _build(tiny_llama, tiny_heads, tmp_path / "eng")),
        "heads train": (tmp_path / "hd", _train(tiny_llama, tmp_path / "hd")),
    }
    for name, (out, args) in cmds.items():
        lock = outputs.lock_path(out)
        if plant == "symlink":
            lock.symlink_to(victim)
        elif plant == "dangling symlink":
            lock.symlink_to(tmp_path / "nowhere")
        elif plant == "hard link":
            os.link(victim, lock)
        elif plant == "user file":
            lock.write_text("my lock notes\n")
        else:
            os.mkfifo(lock)
        rc, err = _cli(capsys, *args)
        assert rc == 2 and str(lock) in err and "refusing to use it as the lock" in err, (name, err)
        assert victim.read_text() == "precious\n", name
        assert os.path.lexists(lock), name  # left where it was
        assert not (tmp_path / "nowhere").exists() and not out.exists(), name
        os.unlink(lock)


def test_a_killed_holders_lock_file_is_reused(tiny_llama: Path, tmp_path: Path) -> None:
    """The lock file a SIGKILLed run leaves is ours (it begins with its pid): the next run takes it."""
    out = tmp_path / "ck"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from medusa_trt import outputs\n"
            "with outputs.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    assert outputs.lock_path(out).read_text().startswith(f"pid {proc.pid}\n")
    done = _popen("convert", "--model", str(tiny_llama), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert not outputs.lock_path(out).exists()


# --- 2. convert --force and a file that appears while it runs ----------------------------------------------


@pytest.fixture
def drop_during_convert(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """Files to put into the existing output while the rank files are being written (a hook on the
    real writer: the conversion itself runs unchanged)."""
    from medusa_trt.checkpoint import convert as conv

    drops: dict[str, bytes] = {}
    real = conv.write_ranks

    def writing(tmp: Path, *args: object, **kw: object) -> object:
        out = tmp.parent / tmp.name.split(".tmp-")[0].lstrip(".")
        for name, data in drops.items():
            (out / name).write_bytes(data)
        return real(tmp, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(conv, "write_ranks", writing)
    yield drops


def test_force_keeps_a_file_put_into_the_output_during_the_run(
    tiny_llama: Path, tmp_path: Path, drop_during_convert: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    assert _cli(capsys, "convert", "--model", str(tiny_llama), "--output", str(out))[0] == 0
    drop_during_convert["notes.txt"] = b"written while converting"
    rc, err = _cli(capsys, "convert", "--model", str(tiny_llama), "--output", str(out), "--force")
    assert rc == 0, err
    assert (out / "notes.txt").read_bytes() == b"written while converting"
    assert "notes.txt" not in json.loads((out / outputs.OWNER).read_text())["files"]  # still not ours
    assert not [p for p in tmp_path.iterdir() if fsio.is_temp(p.name)]  # the replaced output is gone


def test_force_refuses_when_a_new_file_has_the_name_of_a_file_put_there(
    tiny_llama: Path, tmp_path: Path, drop_during_convert: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    assert _cli(capsys, "convert", "--model", str(tiny_llama), "--output", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    drop_during_convert["rank1.safetensors"] = b"a user's file, named like the new rank 1"
    rc, err = _cli(capsys, "convert", "--model", str(tiny_llama), "--output", str(out), "--force", "--tp", "2")
    assert rc == 2 and "rank1.safetensors: not written by medusa-trt" in err and "kept it" in err, err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == {**before, "rank1.safetensors": b"a user's file, named like the new rank 1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary, no lock


# --- 3. the sweep ----------------------------------------------------------------------------------------


def test_the_sweep_removes_only_recorded_temporaries(tiny_llama: Path, tmp_path: Path) -> None:
    """Look-alikes of a dead pid, beside and inside the output, a file and a directory: none recorded,
    none removed. (The recorded case: test_output_safety.)"""
    out = tmp_path / "ck"
    assert _popen("convert", "--model", str(tiny_llama), "--output", str(out)).returncode == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    beside = tmp_path / f".ck.tmp-{pid}-1-00000000"
    beside.mkdir()
    (beside / "data.bin").write_bytes(b"mine")
    inside = out / f".config.json.tmp-{pid}-1-11111111"
    inside.write_text("mine too")
    rc = _popen("convert", "--model", str(tiny_llama), "--output", str(out), "--force")
    assert rc.returncode == 2 and inside.name in rc.stderr  # a foreign file in the output stops --force
    inside.unlink()
    assert _popen("convert", "--model", str(tiny_llama), "--output", str(out), "--force").returncode == 0
    assert (beside / "data.bin").read_bytes() == b"mine"


_SET_ASIDE = """
import os, sys, time
from pathlib import Path
from medusa_trt import fsio, outputs
out = Path(sys.argv[1])
with outputs.locked(out):
    old = fsio.temp_sibling(out)  # recorded, as convert --force records the output it sets aside
    out.rename(old)
    print(old, flush=True)
    time.sleep(600)
"""


def test_a_killed_replace_leaves_the_old_output_to_be_removed_file_by_file(tiny_llama: Path, tmp_path: Path) -> None:
    """Killed (SIGKILL) right after setting the old output aside: the next run removes the files its
    ownership list names and keeps a file that appeared in it, with the directory that holds it."""
    out = tmp_path / "ck"
    assert _popen("convert", "--model", str(tiny_llama), "--output", str(out)).returncode == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _SET_ASIDE, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    old = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    (old / "late.txt").write_text("appeared after the check")
    done = _popen("convert", "--model", str(tiny_llama), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in old.iterdir()) == ["late.txt"]  # ours gone, the user's kept
    assert (old / "late.txt").read_text() == "appeared after the check"


def test_a_lookalike_temporary_makes_a_directory_not_empty(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / ".notes.txt.tmp-1-1-abcdef01").write_text("mine")
    proc = _popen("convert", "--model", str(tiny_llama), "--output", str(out))
    assert proc.returncode == 2 and "not empty and not written by medusa-trt" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.tmp-1-1-abcdef01"]


# --- 4. a tampered ownership list --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    from medusa_trt.engines.build import execute, prepare

    out = tmp_path_factory.mktemp("tamper") / "eng"
    execute(prepare("cpu", str(tiny_llama), medusa=str(tiny_heads), output=out))
    return out


def test_a_tampered_ownership_list_reaches_nothing_outside_or_through_a_link(
    built: Path, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    shutil.copytree(built, out, symlinks=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the engine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f.txt").write_text("behind a link")
    (out / "link").symlink_to(elsewhere)
    (out / "checkpoint" / "mine.txt").write_text("a user's file inside a step's output")
    doc = json.loads((out / outputs.OWNER).read_text())
    doc["files"] += ["../secret.txt", str(secret), "link/f.txt", "./x", "a//b", 7]
    doc["trees"] = ["checkpoint", "../elsewhere"]
    (out / outputs.OWNER).write_text(json.dumps(doc))

    owned = outputs.OwnedDir(out, "engine")
    assert not any(".." in f or f.startswith("/") for f in owned.files) and "../elsewhere" not in owned.trees
    assert not owned.owns("link/f.txt") and not owned.owns("checkpoint/mine.txt")

    rc, err = _cli(capsys, *_build(tiny_llama, tiny_heads, out, "--force"))
    assert rc == 2 and "checkpoint/mine.txt: not written by medusa-trt; refusing to delete it" in err, err
    assert (out / "checkpoint" / "mine.txt").read_text() == "a user's file inside a step's output"
    assert secret.read_text() == "outside the engine" and (elsewhere / "f.txt").read_text() == "behind a link"

    (out / "checkpoint" / "mine.txt").unlink()
    rc, err = _cli(capsys, *_build(tiny_llama, tiny_heads, out, "--force"))
    assert rc == 0, err
    manifest = json.loads((out / "medusa-trt.json").read_text())["files"]
    assert all(fsio.plain_rel(f) and not f.startswith("link/") for f in manifest), sorted(manifest)
    assert secret.read_text() == "outside the engine" and (elsewhere / "f.txt").read_text() == "behind a link"


def test_a_manifest_entry_outside_the_directory_is_a_problem_not_a_read(built: Path, tmp_path: Path) -> None:
    from medusa_trt import integrity

    (tmp_path / "x").write_text("outside")
    rows = {"../x": {"size": 7}, "/etc/hostname": {"size": 1}}
    assert integrity.verify(built, rows) == [
        f"../x: not a plain path inside {built}",
        f"/etc/hostname: not a plain path inside {built}",
    ]
    assert integrity.record(built, ["../x"]) == {}


# --- 9. inputs that are not regular files ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_fifo_as_a_model_file_is_refused_not_waited_on(name: str, tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / name).unlink()
    os.mkfifo(model / name)
    proc = _popen("convert", "--model", str(model), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and f"{model / name}: is a FIFO, not a regular file" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_fifo_as_heads_is_refused_and_symlinks_to_files_are_fine(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path
) -> None:
    heads = tmp_path / "h"
    heads.mkdir()
    os.mkfifo(heads / "medusa_lm_head.safetensors")
    proc = _popen("convert", "--model", str(tiny_llama), "--medusa", str(heads), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "is a FIFO" in proc.stderr, proc.stderr
    linked = tmp_path / "linked"  # the Hugging Face cache: every file a symlink to a blob
    linked.mkdir()
    for p in tiny_llama.iterdir():
        (linked / p.name).symlink_to(p)
    proc = _popen("convert", "--model", str(linked), "--medusa", str(tiny_heads), "--output", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr


# --- 10. safetensors headers and JSON ------------------------------------------------------------------------


def _st(header: object, data: bytes) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


_T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_HEADERS = {
    "negative offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, bytes(8)),
    "overlap": ({"a": _T, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "hole": ({"a": _T, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16)),
    "fractional shape": ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8)),
    "a list": ([_T], bytes(8)),
    "an int entry": ({"a": 5}, bytes(8)),
    "missing offsets": ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
    "string offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, bytes(8)),
    "size mismatch": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "past the end": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    "bytes after the end": ({"a": _T}, bytes(12)),
    "nested 200000 deep": (b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}", b""),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_every_header_the_safetensors_library_refuses_we_refuse(case: str, tmp_path: Path) -> None:
    from safetensors import safe_open

    from medusa_trt.checkpoint.safetensors_io import read_header
    from medusa_trt.errors import CheckpointError

    path = tmp_path / "x.safetensors"
    path.write_bytes(_st(*BAD_HEADERS[case]))
    with pytest.raises(Exception), safe_open(str(path), framework="pt") as f:  # noqa: B017 (the reference refuses it)
        [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
    with pytest.raises(CheckpointError, match=str(path)):
        read_header(path)


def test_a_valid_header_reads_like_the_library(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from medusa_trt.checkpoint.safetensors_io import read_header

    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.int64), "e": torch.zeros(0)}, str(path))
    infos = read_header(path)
    assert {k: (v.dtype, v.shape) for k, v in infos.items()} == {
        "a": ("F32", (2, 3)),
        "b": ("I64", (5,)),
        "e": ("F32", (0,)),
    }


@pytest.mark.parametrize("where", ["model", "heads", "checkpoint"])
def test_a_malformed_header_is_exit_2_naming_the_file_for_every_reader(
    where: str, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, heads = tmp_path / "m", tmp_path / "h"
    shutil.copytree(tiny_llama, model)
    shutil.copytree(tiny_heads, heads)
    bad = _st(*BAD_HEADERS["negative offsets"])
    if where == "model":
        target, args = model / "model.safetensors", ["convert", "--model", str(model), "--output", str(tmp_path / "o")]
    elif where == "heads":
        target = heads / "medusa_lm_head.safetensors"
        args = ["convert", "--model", str(model), "--medusa", str(heads), "--output", str(tmp_path / "o")]
    else:
        ck = tmp_path / "ck"
        assert _cli(capsys, "convert", "--model", str(model), "--output", str(ck))[0] == 0
        target, args = ck / "rank0.safetensors", ["heads", "train", "--model", str(ck), "--output", str(tmp_path / "o")]
    target.write_bytes(bad)
    rc, err = _cli(capsys, *args)
    named = str(target) if where != "checkpoint" else "rank0.safetensors"  # the start-up check names it first
    assert rc == 2 and named in err and "Traceback" not in err, err


def test_a_malformed_training_shard_is_exit_2_naming_it(tmp_path: Path) -> None:
    from medusa_trt.errors import CheckpointError
    from medusa_trt.train.hidden import HiddenCache, shard_name

    (tmp_path / shard_name(0)).write_bytes(_st(*BAD_HEADERS["overlap"]))
    with pytest.raises(CheckpointError, match=shard_name(0)):
        HiddenCache(tmp_path, 1, 1)[0]


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_deeply_nested_json_is_exit_2_naming_the_file(
    name: str, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    (model / name).write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    rc, err = _cli(capsys, "convert", "--model", str(model), "--output", str(tmp_path / "o"))
    assert rc == 2 and "nested deeper than 64 levels" in err and str(model / name) in err, err
    assert not (tmp_path / "o").exists()


def test_json_nesting_is_bounded_and_strings_do_not_count() -> None:
    assert fsio.parse_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\""}', "x")
    assert fsio.parse_json("[" * 64 + "]" * 64, "x") is not None
    for deep in ("[" * 65 + "]" * 65, "[" * 5000 + "]" * 5000):
        with pytest.raises(InvalidInputError, match="x: JSON nested deeper than 64 levels"):
            fsio.parse_json(deep, "x")


# --- 13. modes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_written_gets_the_umasks_mode(umask: int, tiny_llama: Path, tmp_path: Path) -> None:
    heads = tmp_path / "heads"
    proc = _popen(*_train(tiny_llama, heads), umask=umask)
    assert proc.returncode == 0, proc.stderr
    ck = tmp_path / "ck"
    proc = _popen("convert", "--model", str(tiny_llama), "--output", str(ck), umask=umask)
    assert proc.returncode == 0, proc.stderr
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for d in (heads, ck)
        for p in [d, *d.rglob("*")]
        if not p.is_symlink()
    }
    want = {k: (0o777 if (tmp_path / k).is_dir() else 0o666) & ~umask for k in modes}
    assert modes == want
    assert "heads/medusa_lm_head.safetensors" in modes


# --- 14, 16. full disks ---------------------------------------------------------------------------------------

needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="mounting a tmpfs needs root and unshare"
)


def _in_tmpfs(mount: Path, size: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python ``code`` in a private mount namespace with a tmpfs of ``size`` at ``mount``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    argv = ["unshare", "-m", "sh", "-c", script, "sh", str(mount), sys.executable, "-c", code, str(mount), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=HANG_S)


_SAVE_STATE = """
import sys, os, torch
from pathlib import Path
from medusa_trt import errors
from medusa_trt.medusa.heads import MedusaHeads
from medusa_trt.train.loop import _save_state
d = Path(sys.argv[1])
(d / "stage").mkdir()
heads = MedusaHeads(64, 320, 2, 1)
opt = torch.optim.AdamW(heads.parameters())
try:
    _save_state(d / "stage" / "state.pt", 1, heads, opt, torch.Generator(), [], {})
except errors.MedusaTrtError as e:
    print("error:", e.message, file=sys.stderr)
print(sorted(os.listdir(d / "stage")))
"""


@needs_mounts
def test_training_state_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "full"
    mnt.mkdir()
    proc = _in_tmpfs(mnt, "64k", _SAVE_STATE)
    assert _errors(proc.stderr) == [f"error: cannot write {mnt}/stage/state.pt: no space left on the device"], (
        proc.stderr
    )
    assert proc.stdout.strip() == "[]"  # no state.pt, no temporary


_CONVERT = """
import sys
from medusa_trt.cli import run
sys.exit(run(["convert", "--model", sys.argv[2], "--output", sys.argv[1] + "/ck"]))
"""


@needs_mounts
def test_a_disk_too_small_for_the_checkpoint_is_exit_1_in_a_unit_that_shows_it(
    tiny_llama: Path, tmp_path: Path
) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = _in_tmpfs(mnt, "64k", _CONVERT, str(tiny_llama))
    errors = _errors(proc.stderr)
    assert proc.returncode == 1 and len(errors) == 1 and "KiB free, the checkpoint needs" in errors[0], proc.stderr
    have, need = (float(x.split()[0]) for x in errors[0].split(": ", 2)[2].split(" free, the checkpoint needs "))
    assert have < need


def test_sizes_are_shown_in_one_unit_that_tells_them_apart() -> None:
    assert fsio.human_bytes(12 * 1024, 300 * 1024) == ["12.0 KiB", "300.0 KiB"]
    assert fsio.human_bytes(4.995 * 2**30, 5 * 2**30) == ["4.995 GiB", "5.000 GiB"]
    assert fsio.human_bytes(10, 900) == ["10 B", "900 B"]


# --- 15. symlinked outputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["empty dir", "dangling"])
def test_a_symlinked_output_is_refused_before_any_work_by_every_command(
    target: str, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acc = tmp_path / "acc.csv"
    acc.write_text("0.6,0.1\n0.4,0.1\n")
    cases = {
        "convert": lambda o: ["convert", "--model", str(tiny_llama), "--output", o],
        "build": lambda o: _build(tiny_llama, tiny_heads, o),
        "heads train": lambda o: _train(tiny_llama, o),
        "demo": lambda o: ["demo", "--output", o, "--cache-dir", str(tmp_path / "cache")],
        "bench --plot": lambda o: ["bench", "--url", "http://127.0.0.1:9", "--plot", o + ".png"],
        "bench --json-out": lambda o: ["bench", "--url", "http://127.0.0.1:9", "--json-out", o + ".json"],
        "tree build --out": lambda o: ["tree", "build", "-a", str(acc), "-n", "3", "--out", o + ".yaml"],
    }
    for i, (name, args) in enumerate(cases.items()):
        real = tmp_path / f"real{i}"
        if target == "empty dir":
            real.mkdir()
        link = tmp_path / f"link{i}"
        argv = args(str(link))
        Path(argv[-1] if name.startswith(("bench", "tree")) else link).symlink_to(real)
        rc, err = _cli(capsys, *argv)
        assert rc == 2 and "is a symbolic link" in err, (name, err)
        assert (list(real.iterdir()) == []) if target == "empty dir" else not real.exists(), name
        assert not (tmp_path / "cache").exists(), name  # refused before any work


def test_the_preflight_disk_check_shows_sizes_that_differ() -> None:
    from medusa_trt.plan.checks import check_disk

    kib = 1 / 2**20  # GiB
    need = {"total": 480 * kib, "hf_checkpoint": 0.0, "trtllm_checkpoint": 300 * kib, "engine": 180 * kib}
    check = check_disk(need, 12 * kib, "/mnt/small", target_here=True)
    assert check.verdict == "fail"
    assert (
        check.reason.startswith("short by 468.0 KiB: needs 480.0 KiB") and "12.0 KiB free at /mnt/small" in check.reason
    )
