"""Files on disk, the one way: atomic writes, no symlink followed, the umask's modes, regular inputs.

Writing: everything goes to a temporary sibling ``.NAME.tmp-PID-START-RAND`` (created with
``O_EXCL | O_NOFOLLOW``: a name planted there beforehand, a symlink included, makes the write fail
instead of being followed or truncated), gets the mode the umask gives, and is renamed into place.
A temporary is announced to the recorders of :func:`recording` before it exists (the output lock
keeps that journal), so a later run removes only temporaries a medusa-trt process recorded as its
own, and only once that exact process (PID and START, its start time) is gone. OS errors become
one line naming the path and the cause (exit 1).

Reading: :func:`open_input` and :func:`check_regular` refuse what is not a regular file (a FIFO or a
device would block a read forever; a symlink to a regular file is fine, the Hugging Face cache is
made of them); :func:`read_json` bounds size and nesting and names the file in every error (exit 2).

This module imports nothing else from the package but ``errors``, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from medusa_trt.errors import InvalidInputError, MedusaTrtError

logger = logging.getLogger(__name__)

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system (or the process's file size limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "is a symbolic link (medusa-trt does not write through one)",
    errno.EEXIST: "something appeared at this name while writing (medusa-trt does not replace it)",
}
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}$")
_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --- processes ---------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux /proc), None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(text[text.rindex(")") + 2 :].split()[19])


def alive(pid: int, start: int) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs (a reused pid does not count)."""
    if Path("/proc/self/stat").exists():
        return start_time(pid) == start
    try:  # no /proc (macOS): a live pid is assumed to be the writer, so nothing is removed
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def me() -> tuple[int, int]:
    pid = os.getpid()
    return pid, start_time(pid) or 0


# --- modes -------------------------------------------------------------------------------------------


def umask() -> int:
    """The process's umask (read from /proc where it can be, so no thread sees a changed one)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _umask_mode(path: Path) -> None:
    """Give what we created the mode a plain ``open``/``mkdir`` would have (libraries use 0600)."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        os.chmod(path, 0o666 & ~umask())
    elif stat.S_ISDIR(st.st_mode):
        os.chmod(path, 0o777 & ~umask())


# --- temporaries ---------------------------------------------------------------------------------------

_recorders: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def recording(recorder: Callable[[Path], None]) -> Iterator[None]:
    """Call ``recorder(tmp)`` for every temporary this process is about to create (until exit)."""
    _recorders.append(recorder)
    try:
        yield
    finally:
        _recorders.remove(recorder)


def temp_sibling(path: Path) -> Path:
    """``.NAME.tmp-PID-START-RAND`` beside ``path``, announced to the recorders before it exists."""
    pid, start = me()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{pid}-{start}-{secrets.token_hex(4)}")
    for rec in list(_recorders):
        rec(tmp)
    return tmp


def is_temp(name: str) -> bool:
    """A temporary name of this module's (a live writer's or a stale one)."""
    return _TMP_RE.match(name) is not None


def stale(tmp: Path) -> bool:
    """A temporary name whose writing process is gone."""
    m = _TMP_RE.match(tmp.name)
    return m is not None and not alive(int(m["pid"]), int(m["start"]))


def remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a directory tree that medusa-trt made."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_listed(root: Path, rels: list[str]) -> list[str]:
    """Unlink exactly the listed plain paths under ``root`` (files and links, never through a link),
    then every directory that this leaves empty; returns what is left in ``root``'s tree."""
    dirs: set[Path] = set()
    for rel in rels:
        if plain_rel(rel) is None or not under(root, rel):
            continue
        p = root / rel
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(p).st_mode):
                continue
            p.unlink()
        dirs.update(p.parents[: len(Path(rel).parts) - 1])
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: whatever else is there stays
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))] if root.is_dir() else []


# --- paths inside a directory ------------------------------------------------------------------------


def plain_rel(entry: object) -> str | None:
    """``entry`` when it is a plain relative path (``a/b``: no ``..``, ``.``, empty part, absolute
    path or backslash), else None."""
    if not isinstance(entry, str) or not entry or entry.startswith("/") or "\\" in entry or "\0" in entry:
        return None
    return entry if all(p not in ("", ".", "..") for p in entry.split("/")) else None


def under(root: Path, rel: str) -> bool:
    """``root/rel`` is reached without passing through a symlink (the last part may be one)."""
    p = root
    for part in Path(rel).parts[:-1]:
        p = p / part
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                return False
        except OSError:
            return True  # nothing there: nothing to pass through
    return True


# --- writing -----------------------------------------------------------------------------------------


def os_failure(e: OSError, path: Path | str, verb: str = "write") -> MedusaTrtError:
    """One line for an OS error on ``path``: a full disk, a read-only or forbidden directory (exit 1)."""
    cause = _CAUSES.get(e.errno or 0, e.strerror or e.__class__.__name__)
    hint = (
        "Free disk space or write to another disk."
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "Write to a directory you can write to."
    )
    return MedusaTrtError(f"cannot {verb} {path}: {cause}", hint=hint)


def is_disk_error(e: OSError) -> bool:
    """A full disk, a read-only file system or a forbidden path (not a bug)."""
    return e.errno in _CAUSES


def disk_error_in(e: BaseException) -> OSError | None:
    """The OSError behind a library's error (torch wraps ENOSPC in a RuntimeError), if any."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota"), (errno.EFBIG, "File too large")):
        if words in text:
            return OSError(code, os.strerror(code))
    return None


@contextlib.contextmanager
def atomic_path(path: Path, kind: Literal["file", "dir", "other"] = "file") -> Iterator[Path]:
    """Yield a temporary sibling to fill; rename it to ``path`` on success.

    ``kind``: "file" creates the temporary empty (``O_EXCL | O_NOFOLLOW``) for the caller to write,
    "dir" creates it as a directory, "other" leaves it to the caller (a symlink). On success the
    temporary gets the umask's mode and replaces ``path``; on any failure it is removed and ``path``
    is untouched. Callers decide beforehand whether an existing ``path`` may be replaced (``outputs``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_failure(e, path.parent) from e
    tmp = temp_sibling(path)
    try:
        if kind == "file":
            os.close(os.open(tmp, _NEW | os.O_WRONLY, 0o666))
        elif kind == "dir":
            os.mkdir(tmp)
        yield tmp
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            remove(tmp)
        if isinstance(e, OSError):
            raise os_failure(e, path) from e
        if (oe := disk_error_in(e)) is not None and is_disk_error(oe) and not isinstance(e, MedusaTrtError):
            raise os_failure(oe, path) from e
        raise


def open_new(path: Path, buffering: int = -1) -> IO[bytes]:
    """A file we create, opened for writing: never one that exists, never through a symlink."""
    try:
        fd = os.open(path, _NEW | os.O_WRONLY, 0o666)
    except OSError as e:
        raise os_failure(e, path) from e
    return os.fdopen(fd, "wb", buffering=buffering)


def open_append(path: Path) -> IO[bytes]:
    """A journal of ours opened for appending: created if missing, never through a symlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise os_failure(e, path) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MedusaTrtError(f"{path}: not a regular file", hint="Move it away and run again.")
    return os.fdopen(fd, "ab")


def copy_file(src: Path, dst: Path) -> Path:
    """``dst`` becomes a copy of the regular file ``src`` (atomic, the umask's mode, ``src``'s mtime)."""
    with open_input(src) as f, atomic_path(dst) as tmp:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, 8 << 20)
        st = os.fstat(f.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dst


def write_bytes(path: Path, data: bytes) -> Path:
    """``path`` holds ``data`` or is unchanged; flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, doc: Any) -> Path:
    return write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


# --- reading -----------------------------------------------------------------------------------------

MAX_JSON_BYTES = 256 << 20  # tokenizer.json of a 128K-vocabulary model is ~9 MB; a header at most 100 MB
MAX_JSON_DEPTH = 64  # the deepest file we read (tokenizer.json) nests under 10


def _not_regular(path: Path, mode: int) -> InvalidInputError:
    what = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
    if stat.S_ISDIR(mode):
        what = "a directory"
    return InvalidInputError(
        f"{path}: is {what}, not a regular file", hint="Pass the checkpoint's files themselves (regular files)."
    )


def check_regular(path: Path) -> os.stat_result:
    """``path`` (or what its symlink points to) is a regular file; a FIFO, device or socket is refused."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_input(path: Path) -> IO[bytes]:
    """Open a file we read, refusing anything but a regular file before a read can block on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


_BOXES = frozenset((dict, list))


def json_depth(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether no array/object in a parsed document nests deeper than ``limit``, level by level; a
    container is looked into only when it holds containers (checked at C speed by ``map(type, ...)``),
    so a 9 MiB tokenizer.json costs a small fraction of its parse."""
    level = [doc] if type(doc) in _BOXES else []
    depth = 1
    while level:
        if depth > limit:
            return False
        deeper: list[Any] = []
        for node in level:
            items = node.values() if type(node) is dict else node
            if not _BOXES.isdisjoint(map(type, items)):
                deeper.extend(c for c in items if type(c) in _BOXES)
        level, depth = deeper, depth + 1
    return True


def parse_json(raw: bytes | str, where: str | Path, what: str = "JSON") -> Any:
    """``json.loads`` with bounded nesting; every malformed document is exit 2 naming ``where``."""
    hint = "Fix or re-download the file."
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInputError(
                f"{where}: not UTF-8 text (byte {e.start})", hint=hint + " JSON must be UTF-8."
            ) from e
    deep = InvalidInputError(f"{where}: {what} nested deeper than {MAX_JSON_DEPTH} levels", hint=hint)
    try:
        doc = json.loads(raw)  # the C parser stops at the interpreter's recursion limit: RecursionError
    except json.JSONDecodeError as e:
        raise InvalidInputError(
            f"{where}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})", hint=hint
        ) from e
    except RecursionError:
        raise deep from None
    except ValueError as e:
        raise InvalidInputError(f"{where}: invalid {what} ({e.__class__.__name__})", hint=hint) from e
    if not json_depth(doc):
        raise deep
    return doc


def read_json(path: Path, what: str = "JSON", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file we read: a regular file, at most ``max_bytes``, bounded nesting (exit 2 naming it)."""
    with open_input(path) as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InvalidInputError(f"{path}: larger than {max_bytes >> 20} MiB, too large for a {what} file")
    return parse_json(raw, path, what)


def human_bytes(*sizes: float) -> list[str]:
    """The sizes in one unit (B .. TiB, picked for the largest), with the decimals that tell them apart:
    "1.2 MiB free, needs 3.4 MiB" instead of "0.0 GiB free, needs 0.0 GiB"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    high = max(sizes, default=0)
    i = 0
    while i < len(units) - 1 and high >= 1024 ** (i + 1):
        i += 1
    out: list[str] = []
    for decimals in (0,) if i == 0 else (1, 2, 3):
        out = [f"{s / 1024**i:.{decimals}f} {units[i]}" for s in sizes]
        if len(set(out)) == len(set(sizes)):
            break
    return out


__all__ = [
    "alive",
    "atomic_path",
    "check_regular",
    "copy_file",
    "disk_error_in",
    "human_bytes",
    "is_disk_error",
    "is_temp",
    "json_depth",
    "me",
    "open_append",
    "open_input",
    "open_new",
    "os_failure",
    "parse_json",
    "plain_rel",
    "read_json",
    "recording",
    "remove",
    "remove_listed",
    "stale",
    "start_time",
    "temp_sibling",
    "umask",
    "under",
    "write_bytes",
    "write_json",
    "write_text",
]
