"""Writing files so that nothing is ever half-written: one helper for the whole package.

Everything goes to a temporary sibling ``.NAME.tmp-PID-START-RAND`` and is renamed into place.
PID and START (the process's start time, in clock ticks since boot) make a leftover provably
stale: a later run removes it only when that exact process is gone (:func:`sweep_stale`), so a
SIGKILLed 400 GB convert does not leave its temporary behind forever, and a live writer's
temporary is never touched. OS errors become one line naming the path and the cause (exit 1).

This module imports nothing else from the package but ``errors``, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medusa_trt.errors import MedusaTrtError

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}$")


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _alive(pid: int, start: int) -> bool:
    if Path("/proc/self/stat").exists():
        return start_time(pid) == start
    try:  # no /proc (macOS): a live pid is assumed to be the writer, so nothing is removed
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_sibling(path: Path) -> Path:
    """``.NAME.tmp-PID-START-RAND`` beside ``path``: ours, and provably dead once this process is."""
    pid = os.getpid()
    return path.with_name(f".{path.name}.tmp-{pid}-{start_time(pid) or 0}-{secrets.token_hex(4)}")


def is_temp(name: str) -> bool:
    """A temporary name of this module's (a live writer's or a stale one)."""
    return _TMP_RE.match(name) is not None


def stale_temps(path: Path) -> list[Path]:
    """Temporary siblings of ``path`` whose writing process is gone."""
    if not path.parent.is_dir():
        return []
    found = []
    for p in path.parent.iterdir():
        m = _TMP_RE.match(p.name)
        if m and m["name"] == path.name and not _alive(int(m["pid"]), int(m["start"])):
            found.append(p)
    return found


def sweep_stale(directory: Path) -> list[Path]:
    """Remove every stale temporary directly inside ``directory`` (all names); returns what went."""
    if not directory.is_dir():
        return []
    gone = []
    for p in directory.iterdir():
        m = _TMP_RE.match(p.name)
        if m and not _alive(int(m["pid"]), int(m["start"])):
            remove(p)
            gone.append(p)
    return gone


def remove(path: Path) -> None:
    """Remove a file, a link or a directory tree (used only on paths medusa-trt wrote)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def os_failure(e: OSError, path: Path | str, verb: str = "write") -> MedusaTrtError:
    """One line for an OS error on ``path``: a full disk, a read-only or forbidden directory (exit 1)."""
    cause = _CAUSES.get(e.errno or 0, e.strerror or e.__class__.__name__)
    hint = (
        "Free disk space or write to another disk."
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else "Write to a directory you can write to."
    )
    return MedusaTrtError(f"cannot {verb} {path}: {cause}", hint=hint)


def is_disk_error(e: OSError) -> bool:
    """A full disk, a read-only file system or a forbidden path (not a bug)."""
    return e.errno in _CAUSES


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write (a file or a directory); rename it to ``path`` on success.

    On any failure the temporary is removed and ``path`` is untouched. An existing file at ``path``
    is replaced by the rename; callers decide beforehand whether it may be (see ``outputs``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_failure(e, path.parent) from e
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            remove(tmp)
        raise os_failure(e, path) from e
    except BaseException:
        with contextlib.suppress(OSError):
            remove(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """``path`` holds ``data`` or is unchanged; flushed to disk before the rename."""
    # a plain open (not mkstemp, whose 0600 mode the rename would keep): the usual permissions
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, doc: Any) -> Path:
    return write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


__all__ = [
    "atomic_path",
    "is_disk_error",
    "is_temp",
    "os_failure",
    "remove",
    "stale_temps",
    "start_time",
    "sweep_stale",
    "temp_sibling",
    "write_bytes",
    "write_json",
    "write_text",
]
