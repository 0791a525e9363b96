"""Output directories: the one policy every command that writes a directory goes through.

- The path is checked before anything is read: not empty, not ``/`` or the home directory, and
  neither equal to, inside nor containing any input (a model, heads, a source dir).
- One writer at a time: an advisory lock on ``.NAME.lock`` beside the directory; a second writer
  is refused at once, naming the holder's pid.
- A directory is ours when it carries ``.medusa-trt-owner.json``, the list of every path medusa-trt
  created in it. A non-empty directory without it is refused, ``--force`` included; ``--force`` and
  redone steps remove only listed paths, so a file a user put there is never deleted.
- Stale temporaries of a killed run (``fsio``'s pid + start-time names) are removed once the
  lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medusa_trt import fsio, records
from medusa_trt.errors import InvalidInputError, MedusaTrtError

OWNER = records.OWNER.filename  # the ownership list (records.py owns its name and schema)
_PICK = "Choose another --output (an empty or new directory)."


def output_path(raw: str | Path | None, param: str = "--output") -> Path:
    """The absolute output path; an empty or blank value is a usage error, never the current directory."""
    if raw is None or not str(raw).strip():
        raise InvalidInputError(f"{param} is empty", hint=f"Pass a directory path to {param}.")
    return Path(str(raw)).expanduser().absolute()


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
    """A single-file output (a report, a CSV): not empty, not a directory, not inside an input, and
    (given ``ours``) not an existing file that medusa-trt did not write."""
    path = output_path(raw, param)
    if path.is_dir():
        raise InvalidInputError(f"{param} {raw}: is a directory", hint=f"Pass a file path to {param}.")
    check_overlap(path, inputs, param)
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
            with path.open("rb") as f:
                return f.read(len(mark)) == mark
        except OSError:
            return False

    return ours


PNG_SOFTWARE = "medusa-trt"  # the PNG "Software" text chunk of every plot we write


def is_our_png(path: Path) -> bool:
    """A PNG whose Software text chunk is ours (plots are small: the whole file is read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return data.startswith(b"\x89PNG") and b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() in data


# --- ownership ---------------------------------------------------------------------------------------


def read_owner(d: Path) -> dict[str, Any] | None:
    """The ownership list of ``d``; None when there is none that medusa-trt wrote."""
    return records.peek(records.OWNER, d)


def _listed(path: Path, base: Path) -> Iterator[str]:
    if path.is_file() or path.is_symlink():
        yield path.relative_to(base).as_posix()
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() or p.is_symlink():
                yield p.relative_to(base).as_posix()


class OwnedDir:
    """The ownership list of one output directory (call only while holding its lock)."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root, self.kind = root, kind
        doc = read_owner(root) or {}
        self.files: set[str] = set(doc.get("files", []))
        self.trees: set[str] = set(doc.get("trees", []))  # created by a step still running (or killed)

    def _save(self) -> None:
        doc = {"kind": self.kind, "trees": sorted(self.trees), "files": sorted(self.files)}
        records.write(records.OWNER, self.root, doc)

    def owns(self, rel: str) -> bool:
        return rel in self.files or any(rel == t or rel.startswith(t + "/") for t in self.trees)

    def foreign(self, rel: str = "") -> list[str]:
        """Files under ``rel`` (the whole directory by default) that medusa-trt did not write."""
        base = self.root / rel if rel else self.root
        return [f for f in _listed(base, self.root) if f != OWNER and not self.owns(f)]

    def claim(self, rels: Iterable[str]) -> None:
        """Record that we are about to create these paths; refuse one that exists and is not ours."""
        for rel in rels:
            for stale in fsio.stale_temps(self.root / rel):  # a killed run's half-written copy of it
                fsio.remove(stale)
            if not self.owns(rel) and (foreign := self.foreign(rel)):
                raise InvalidInputError(
                    f"{self.root / foreign[0]}: not written by medusa-trt; refusing to replace it",
                    hint="Move it away, or choose another --output.",
                )
            if not self.owns(rel):
                self.trees.add(rel)
        self._save()

    def done(self, rels: Iterable[str]) -> None:
        """The step that made these paths finished: list their files exactly."""
        for rel in rels:
            self.trees.discard(rel)
            self.files.update(_listed(self.root / rel, self.root))
        self._save()

    def remove(self, rel: str) -> None:
        """Remove what we wrote at ``rel``; a foreign file inside stops it (nothing of the user's goes)."""
        path = self.root / rel
        if not (path.exists() or path.is_symlink()):
            return
        if foreign := self.foreign(rel):
            raise InvalidInputError(
                f"{self.root / foreign[0]}: not written by medusa-trt; refusing to delete it",
                hint="Move it out of the output directory and rerun.",
            )
        fsio.remove(path)
        self.files = {f for f in self.files if f != rel and not f.startswith(rel + "/")}
        self._save()


# --- the lock ------------------------------------------------------------------------------------------


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def _busy(output: Path, holder: str) -> MedusaTrtError:
    return MedusaTrtError(
        f"{output}: another medusa-trt process is writing it ({holder})",
        hint="Wait for it to finish, or choose another --output.",
    )


def check_free(output: Path) -> None:
    """Fail at once when another process holds ``output``'s lock (before any input is read)."""
    try:
        fd = os.open(lock_path(output), os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody is writing
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(output, os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``output`` (flock); a second writer fails at once."""
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # the user named the output, not our lock file beside it
        raise fsio.os_failure(e, output) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(output, os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process") from None
        # the file may have been unlinked by a holder that just released it: ours must be the one on disk
        if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise MedusaTrtError(
                f"{output}: another medusa-trt process took the lock just now", hint="Run again once it is done."
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()  # while still held, so no other process can hold this inode
        os.close(fd)


# --- the whole policy ----------------------------------------------------------------------------------


def check_claim(output: Path, kind: str) -> OwnedDir | None:
    """None when ``output`` is new or empty; its ownership list when it is ours; refuse anything else."""
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"{output}: exists and is not a directory", hint=_PICK)
    if not output.is_dir():
        return None
    entries = [p for p in output.iterdir() if p.name != OWNER and not fsio.is_temp(p.name)]
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
        for p in fsio.stale_temps(output):
            fsio.remove(p)
        check_claim(output, kind)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fsio.os_failure(e, output) from e
        owned = OwnedDir(output, kind)
        owned._save()  # mark it ours before the first byte goes in
        fsio.sweep_stale(output)
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
    """Yield an empty temporary directory; on success it replaces ``output`` whole (rename).

    An existing output must be ours and hold nothing foreign, and is replaced only with ``force``.
    The caller writes every file; the ownership list is written here, over all of them.
    """
    output = output_path(raw, param)
    check_overlap(output, inputs, param)
    with locked(output):
        for p in fsio.stale_temps(output):
            fsio.remove(p)
        check_replace(output, kind, force)
        tmp = fsio.temp_sibling(output)
        try:
            tmp.mkdir(parents=True)
            yield tmp
            OwnedDir(tmp, kind).done([p.name for p in tmp.iterdir() if p.name != OWNER])
            _publish(tmp, output)
        except OSError as e:
            fsio.remove(tmp)
            raise fsio.os_failure(e, output) from e
        except BaseException:
            with contextlib.suppress(OSError):
                fsio.remove(tmp)
            raise


def _publish(tmp: Path, output: Path) -> None:
    """Move the finished directory into place; the replaced one (ours, checked) goes only after that."""
    old = None
    if output.is_dir():
        if any(p.name != OWNER for p in output.iterdir()):
            old = fsio.temp_sibling(output)  # a name a later run may sweep if we are killed right here
            output.rename(old)
        else:
            (output / OWNER).unlink(missing_ok=True)
            output.rmdir()
    tmp.rename(output)
    if old is not None:
        fsio.remove(old)


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
