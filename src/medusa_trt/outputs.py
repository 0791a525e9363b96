"""Output directories: the one policy every command that writes a directory goes through.

- The path is checked before anything is read: not empty, not ``/`` or the home directory, not a
  symlink (pass the directory it points to), and neither equal to, inside nor containing any input.
- One writer at a time: an advisory lock on ``.NAME.lock`` beside the directory; a second writer
  is refused at once, naming the holder's pid. The lock file is created with ``O_EXCL`` and opened
  with ``O_NOFOLLOW``: a symlink, a hard link or any file at that name that medusa-trt did not write
  is refused, never followed, truncated or removed.
- The lock file is also the journal of the temporaries its holder creates (``fsio.recording``): the
  next holder removes the ones a killed run left, and nothing else of that name pattern.
- A directory is ours when it carries ``.medusa-trt-owner.json``, the list of every path medusa-trt
  created in it. A non-empty directory without it is refused, ``--force`` included. Entries are plain
  relative paths inside the directory (never ``..``, an absolute path or a path through a symlink);
  ``--force`` and redone steps unlink exactly the listed files, so a file a user put there stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medusa_trt import fsio, records
from medusa_trt.errors import InvalidInputError, MedusaTrtError

logger = logging.getLogger(__name__)

OWNER = records.OWNER.filename  # the ownership list (records.py owns its name and schema)
_PICK = "Choose another --output (an empty or new directory)."


def output_path(raw: str | Path | None, param: str = "--output") -> Path:
    """The absolute output path; an empty value is a usage error (never the current directory), and
    so is a symlink as the last component: we write where the user points, not through a link."""
    if raw is None or not str(raw).strip():
        raise InvalidInputError(f"{param} is empty", hint=f"Pass a directory path to {param}.")
    path = Path(str(raw)).expanduser().absolute()
    if path.is_symlink():
        target = os.readlink(path)
        raise InvalidInputError(
            f"{param} {raw}: is a symbolic link (to {target}); medusa-trt does not write through one",
            hint=f"Pass the path it points to ({param} {path.parent / target}), or a new path.",
        )
    return path


def check_overlap(output: Path, inputs: dict[str, str | Path | None], param: str = "--output") -> None:
    """Refuse ``/``, the home directory, and an output equal to, inside or containing an existing input."""
    out = output.resolve()
    if out == Path(out.anchor) or out == Path.home().resolve():
        raise InvalidInputError(f"{param} {output}: refusing to write into {out}", hint=_PICK)
    for name, raw in inputs.items():
        if raw is None or not str(raw).strip() or not Path(str(raw)).expanduser().exists():
            continue  # a hub repo id, or no such input
        inp = Path(str(raw)).expanduser().resolve()
        if out == inp or inp in out.parents:
            where = "is" if out == inp else "lies inside"
            raise InvalidInputError(f"{param} {output} {where} the input {name} {raw}", hint=_PICK)
        if out in inp.parents:
            raise InvalidInputError(f"{param} {output} contains the input {name} {raw}", hint=_PICK)


def check_file_output(
    raw: str | Path | None,
    param: str,
    inputs: dict[str, str | Path | None],
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """A single-file output (a report, a CSV): not empty, not a symlink, not a directory, not inside an
    input, and (given ``ours``) not an existing file that medusa-trt did not write."""
    path = output_path(raw, param)
    if path.is_dir():
        raise InvalidInputError(f"{param} {raw}: is a directory", hint=f"Pass a file path to {param}.")
    check_overlap(path, inputs, param)
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise InvalidInputError(
            f"{param} {raw}: exists and is not a regular file", hint=f"Pass a new file name to {param}."
        )
    if ours is not None and path.exists() and not ours(path):
        raise InvalidInputError(
            f"{param} {raw}: exists and was not written by medusa-trt; refusing to overwrite it",
            hint=f"Pass a new file name to {param}.",
        )
    return path


def begins_with(mark: bytes) -> Callable[[Path], bool]:
    """An ``ours`` check for check_file_output: the file starts with the ``mark`` medusa-trt writes first."""

    def ours(path: Path) -> bool:
        try:
            with fsio.open_input(path) as f:
                return f.read(len(mark)) == mark
        except (OSError, MedusaTrtError):
            return False

    return ours


PNG_SOFTWARE = "medusa-trt"  # the PNG "Software" text chunk of every plot we write


def is_our_png(path: Path) -> bool:
    """A PNG whose Software text chunk is ours (plots are small: the whole file is read)."""
    try:
        with fsio.open_input(path) as f:
            data = f.read(64 << 20)
    except (OSError, MedusaTrtError):
        return False
    return data.startswith(b"\x89PNG") and b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() in data


# --- ownership ---------------------------------------------------------------------------------------


def read_owner(d: Path) -> dict[str, Any] | None:
    """The ownership list of ``d``; None when there is none that medusa-trt wrote (records reads it
    as a regular file, never through a link, with bounded size and nesting)."""
    return records.peek(records.OWNER, d)


def _entries(doc: dict[str, Any] | None, key: str) -> set[str]:
    """The plain relative paths under ``key``; anything else (``..``, absolute, not a string) is not ours."""
    raw = (doc or {}).get(key)
    return {e for e in raw if fsio.plain_rel(e) is not None} if isinstance(raw, list) else set()


def _listed(base: Path, root: Path) -> Iterator[str]:
    """Every file and link at or under ``base`` as a path relative to ``root`` (links not followed)."""
    try:
        st = os.lstat(base)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield base.relative_to(root).as_posix()
        return
    for d, dirs, files in os.walk(base):  # followlinks=False: a link to a directory is an entry, not a tree
        for name in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
            yield (Path(d) / name).relative_to(root).as_posix()


class OwnedDir:
    """The ownership list of one output directory (call only while holding its lock)."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root, self.kind = root, kind
        doc = read_owner(root)
        self.files: set[str] = _entries(doc, "files")
        self.trees: set[str] = _entries(doc, "trees")  # claimed by a step still running (or killed)

    def _save(self) -> None:
        doc = {"kind": self.kind, "trees": sorted(self.trees), "files": sorted(self.files)}
        records.write(records.OWNER, self.root, doc)

    def _nested(self, tree: str) -> set[str]:
        """Files listed by the ownership list inside a claimed tree (a converted checkpoint's own)."""
        if not fsio.under(self.root, tree + "/x"):
            return set()
        doc = read_owner(self.root / tree)
        return {f"{tree}/{f}" for f in _entries(doc, "files")} | ({f"{tree}/{OWNER}"} if doc else set())

    def owns(self, rel: str) -> bool:
        """Listed as a file; or claimed exactly (a step's file output); or listed by a claimed tree's own
        list. A claimed directory alone does not make whatever is inside it ours."""
        if not fsio.under(self.root, rel):
            return False
        if rel in self.files:
            return True
        if rel in self.trees:
            return not (self.root / rel).is_dir() or (self.root / rel).is_symlink()
        return any(rel.startswith(t + "/") and rel in self._nested(t) for t in self.trees)

    def foreign(self, rel: str = "") -> list[str]:
        """Files under ``rel`` (the whole directory by default) that medusa-trt did not write."""
        base = self.root / rel if rel else self.root
        return [f for f in _listed(base, self.root) if f != OWNER and not self.owns(f)]

    def claim(self, rels: Iterable[str]) -> None:
        """Record that we are about to create these paths; refuse one that exists and is not ours."""
        for rel in rels:
            if fsio.plain_rel(rel) is None:
                raise MedusaTrtError(f"internal error: {rel!r} is not a plain relative path")
            if rel in self.trees:
                continue  # claimed before (a killed run's): resumed into, removed only as listed
            if foreign := self.foreign(rel):
                raise InvalidInputError(
                    f"{self.root / foreign[0]}: not written by medusa-trt; refusing to replace it",
                    hint="Move it away, or choose another --output.",
                )
            if rel not in self.files:
                self.trees.add(rel)
        self._save()

    def done(self, rels: Iterable[str]) -> None:
        """The step that made these paths finished: list their files exactly."""
        for rel in rels:
            self.trees.discard(rel)
            self.files.update(_listed(self.root / rel, self.root))
        self._save()

    def remove(self, rel: str) -> None:
        """Unlink exactly what we wrote at ``rel``, file by file; a foreign file inside stops it."""
        path = self.root / rel
        if not (path.exists() or path.is_symlink()):
            return
        if foreign := self.foreign(rel):
            raise InvalidInputError(
                f"{self.root / foreign[0]}: not written by medusa-trt; refusing to delete it",
                hint="Move it out of the output directory and rerun.",
            )
        mine = [f for f in _listed(path, self.root) if self.owns(f)]
        fsio.remove_listed(self.root, mine)
        if path.is_dir() and not path.is_symlink():
            _prune_empty(path)
        self.files = {f for f in self.files if f != rel and not f.startswith(rel + "/")}
        self._save()


def _prune_empty(d: Path) -> None:
    """Remove the empty directories of a tree (bottom-up, links not followed); files stay."""
    for sub, _, _ in sorted(os.walk(d), key=lambda w: len(w[0]), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(sub)


# --- the lock ------------------------------------------------------------------------------------------


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def _busy(output: Path, holder: str) -> MedusaTrtError:
    return MedusaTrtError(
        f"{output}: another medusa-trt process is writing it ({holder})",
        hint="Wait for it to finish, or choose another --output.",
    )


def _not_our_lock(output: Path, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"{lock_path(output)}: {why}; refusing to use it as the lock of {output}",
        hint="Move it away (medusa-trt keeps its lock there), or choose another --output.",
    )


_MAX_LOCK = 1 << 20  # a lock file holds a pid and the temporaries of one run


def _check_lock_fd(fd: int, output: Path) -> None:
    """An existing lock file is one that medusa-trt wrote: a regular file of ours, with one name, that
    is empty (just created) or begins with ``pid``. Anything else is a user's file: not touched."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_our_lock(output, "is not a regular file")
    if st.st_nlink != 1 or st.st_uid != os.geteuid() or st.st_size > _MAX_LOCK:
        raise _not_our_lock(output, "exists and was not written by medusa-trt")
    head = os.pread(fd, 4, 0)
    if head not in (b"", b"pid "):
        raise _not_our_lock(output, "exists and was not written by medusa-trt")


def _open_lock(output: Path) -> int:
    """Create ``.NAME.lock`` (``O_EXCL``) or open the one a medusa-trt process left; never a link."""
    path = lock_path(output)
    for _ in range(10):  # another process may create or remove it between our two calls
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _not_our_lock(output, "is a symbolic link") from None
            raise
        try:
            _check_lock_fd(fd, output)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise _busy(output, "its lock file keeps changing")


def check_free(output: Path) -> None:
    """Fail at once when another process holds ``output``'s lock, or when the lock name holds
    something that is not a medusa-trt lock (before any input is read)."""
    path = lock_path(output)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # no lock file: nobody is writing
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_our_lock(output, "is a symbolic link") from None
        raise fsio.os_failure(e, path, "read") from e
    try:
        _check_lock_fd(fd, output)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(output, os.pread(fd, 64, 0).decode(errors="replace").split("\n")[0] or "another process") from None
    finally:
        os.close(fd)


class _Journal:
    """The temporaries this lock holder creates for ``output``, appended to its lock file."""

    def __init__(self, fd: int, output: Path) -> None:
        self.fd, self.output, self._mu = fd, output, threading.Lock()

    def covers(self, tmp: Path) -> bool:
        tmp = tmp.absolute()
        beside = tmp.parent == self.output.parent and tmp.name.startswith(f".{self.output.name}.tmp-")
        return beside or self.output in tmp.parents

    def __call__(self, tmp: Path) -> None:
        if self.covers(tmp):
            self.add(tmp)

    def add(self, tmp: Path) -> None:
        with self._mu:
            os.lseek(self.fd, 0, os.SEEK_END)
            os.write(self.fd, f"temp {tmp.absolute()}\n".encode())


def _recorded_temps(text: str) -> list[Path]:
    return [Path(line[5:]) for line in text.splitlines() if line.startswith("temp /")]


def _remove_temp(tmp: Path) -> None:
    """Remove one recorded temporary of a dead writer: a file or link, a directory it was filling, or a
    replaced output (only the files its ownership list names; anything else is kept and reported)."""
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        tmp.unlink()
    elif read_owner(tmp) is None:
        fsio.remove(tmp)  # filled by the dead writer itself; no list was written yet
    else:
        left = fsio.remove_listed(tmp, [*OwnedDir(tmp, "").files, OWNER])
        if left:
            logger.warning("%s: kept (it holds %s, which medusa-trt did not write)", tmp, left[0])
            return
        tmp.rmdir()


def _sweep(journal: _Journal, previous: str) -> None:
    """Remove what the previous holder recorded and left behind (its process is gone); keep a live
    writer's temporaries recorded."""
    out = journal.output
    for tmp in _recorded_temps(previous):
        if not journal.covers(tmp) or not fsio.is_temp(tmp.name):
            continue
        if out in tmp.parents and not fsio.under(out, tmp.relative_to(out).as_posix()):
            continue  # never through a link planted inside the output
        if fsio.stale(tmp):
            with contextlib.suppress(OSError):
                _remove_temp(tmp)
        elif tmp.exists() or tmp.is_symlink():
            journal.add(tmp)


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``output`` (flock); a second writer fails at once. While held, every
    temporary created for ``output`` is recorded in it; a killed holder's ones are removed here."""
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_lock(output)
    except OSError as e:  # the user named the output, not our lock file beside it
        raise fsio.os_failure(e, output) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(
                output, os.pread(fd, 64, 0).decode(errors="replace").split("\n")[0] or "another process"
            ) from None
        # the file may have been unlinked by a holder that just released it: ours must be the one on disk
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise MedusaTrtError(
                f"{output}: another medusa-trt process took the lock just now", hint="Run again once it is done."
            )
        previous = os.pread(fd, _MAX_LOCK, 0).decode(errors="replace")
        os.ftruncate(fd, 0)  # ours: created by O_EXCL above, or checked to be a medusa-trt lock
        pid, start = fsio.me()
        os.pwrite(fd, f"pid {pid}\nstart {start}\n".encode(), 0)
        journal = _Journal(fd, output.absolute())
        _sweep(journal, previous)
        with fsio.recording(journal):
            yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                path.unlink()  # while still held, so no other process can hold this inode
        os.close(fd)


# --- the whole policy ----------------------------------------------------------------------------------


def check_claim(output: Path, kind: str) -> OwnedDir | None:
    """None when ``output`` is new or empty; its ownership list when it is ours; refuse anything else."""
    if output.is_symlink():
        output_path(output)  # raises: a symlinked output
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"{output}: exists and is not a directory", hint=_PICK)
    if not output.is_dir():
        return None
    entries = [p for p in output.iterdir() if p.name != OWNER]  # a look-alike temporary is a file too
    doc = read_owner(output)
    if not entries and doc is None:
        return None
    if doc is None:
        raise InvalidInputError(
            f"{output}: not empty and not written by medusa-trt; refusing to touch it (--force included)",
            hint=_PICK,
        )
    if doc.get("kind") != kind:
        raise InvalidInputError(f"{output}: holds a medusa-trt {doc.get('kind')} output, not a {kind}", hint=_PICK)
    return OwnedDir(output, kind)


@contextlib.contextmanager
def writing(
    raw: str | Path | None,
    *,
    kind: str,
    inputs: dict[str, str | Path | None],
    param: str = "--output",
) -> Iterator[OwnedDir]:
    """Validate, lock and claim an output directory; yields its ownership list (the directory exists)."""
    output = output_path(raw, param)
    check_overlap(output, inputs, param)
    with locked(output):
        check_claim(output, kind)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fsio.os_failure(e, output) from e
        owned = OwnedDir(output, kind)
        owned._save()  # mark it ours before the first byte goes in
        yield owned


def check_replace(output: Path, kind: str, force: bool) -> None:
    """An output that a whole new directory may replace: new, empty, or ours, free of foreign files and forced."""
    owned = check_claim(output, kind)
    if owned is None:
        return
    if not force:
        raise InvalidInputError(
            f"{output}: already holds a medusa-trt {kind}",
            hint="Pass --force to redo it, or choose another --output.",
        )
    if foreign := owned.foreign():
        raise InvalidInputError(
            f"{output / foreign[0]}: not written by medusa-trt; refusing to replace {output}",
            hint="Move it away, or choose another --output.",
        )


@contextlib.contextmanager
def replacing(
    raw: str | Path | None,
    *,
    kind: str,
    inputs: dict[str, str | Path | None],
    force: bool,
    param: str = "--output",
) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``output`` (rename).

    An existing output must be ours and hold nothing foreign, and is replaced only with ``force``.
    The caller writes every file; the ownership list is written here, over all of them. What is not
    ours at the moment of replacing (a file put there while the caller worked) is kept.
    """
    output = output_path(raw, param)
    check_overlap(output, inputs, param)
    with locked(output):
        check_replace(output, kind, force)
        tmp = fsio.temp_sibling(output)  # recorded in the lock's journal before it exists
        try:
            os.mkdir(tmp)
            yield tmp
            OwnedDir(tmp, kind).done([p.name for p in tmp.iterdir() if p.name != OWNER])
            _publish(tmp, output, kind)
        except BaseException as e:
            with contextlib.suppress(OSError):
                fsio.remove(tmp)
            if isinstance(e, OSError):
                raise fsio.os_failure(e, output) from e
            raise


def _publish(new: Path, output: Path, kind: str) -> None:
    """Rename ``new`` to ``output``. A replaced output is first renamed away, so that no path reaches
    it any more, and checked then: a file that is not ours (put there while the caller worked) is
    moved into the new output, or, when the new output has a file of that name, the replacement is
    refused and the old output put back. The old output's own files then go one by one, as listed."""
    if not output.is_dir() or output.is_symlink():
        if output.exists() or output.is_symlink():
            raise InvalidInputError(f"{output}: appeared while writing and is not a directory", hint=_PICK)
        os.rename(new, output)
        return
    old = fsio.temp_sibling(output)  # recorded: a run killed right here leaves it to the next one
    output.rename(old)
    prev = OwnedDir(old, kind)
    foreign = prev.foreign()
    if clash := [f for f in foreign if os.path.lexists(new / f) or not fsio.under(new, f)]:
        old.rename(output)
        raise InvalidInputError(
            f"{output / clash[0]}: not written by medusa-trt, and the new {kind} has a file of that name; "
            f"kept it and discarded the new {kind}",
            hint="Move it away and run again.",
        )
    try:
        os.rename(new, output)
    except OSError:
        with contextlib.suppress(OSError):
            old.rename(output)
        raise
    for f in foreign:
        try:
            (output / f).parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(output / f):
                raise FileExistsError(errno.EEXIST, "exists", str(output / f))
            (old / f).rename(output / f)
        except OSError:
            continue  # stays in the old directory, which is then kept
        logger.warning("%s: not written by medusa-trt; kept in the new %s", output / f, kind)
    left = fsio.remove_listed(old, [*prev.files, OWNER])
    if left:
        logger.warning("%s: kept (it holds %s, which medusa-trt did not write)", old, left[0])
        return
    with contextlib.suppress(OSError):
        old.rmdir()


__all__ = [
    "OWNER",
    "OwnedDir",
    "begins_with",
    "check_claim",
    "check_file_output",
    "check_free",
    "check_overlap",
    "check_replace",
    "is_our_png",
    "locked",
    "output_path",
    "read_owner",
    "replacing",
    "writing",
]
