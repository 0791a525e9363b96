"""Is a directory still what medusa-trt wrote? Two checks against a manifest's file table.

- :func:`check_unchanged`, at every start-up (`run`, the server, each tp rank): a ``stat`` per file.
  A size that differs is damage. A modification time that differs is what a copy looks like (``cp -r``,
  ``rsync -r`` without ``-t``, ``kubectl cp``, object-store syncs): those files are hashed and compared
  with the manifest, and the outcome is remembered outside the directory (it may be read-only), keyed
  by path, device, inode, size, mtime and ctime, so the next start costs a ``stat`` again and a later
  change is noticed.
- :func:`verify` (`medusa-trt verify DIR`): every byte against the xxh3-128 hashes taken while
  the files were written; it catches what a stat cannot (a bit flipped in place by the disk).

Both refuse a file only when its size or its content differs, so they never disagree on a copy.
A table row is ``{"size": int, "hash": str, "mtime_ns": int}``; ``mtime_ns`` is absent for a
converted checkpoint's files (they are renamed into place as a directory and copied by users).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medusa_trt import fsio, records
from medusa_trt.errors import CheckpointError, MedusaTrtError
from medusa_trt.progress import byte_progress

logger = logging.getLogger(__name__)

HASH_ALGORITHM = "xxh3_128"
BLOCK = 8 << 20
PROGRESS_FROM = 1 << 30  # bytes to hash at start-up from which a progress bar is shown


def inside(root: Path, rel: str) -> bool:
    """A manifest entry names a plain relative path inside ``root``, reached through no symlink."""
    return fsio.plain_rel(rel) is not None and fsio.under(root, rel) and not (root / rel).is_symlink()


def digest(path: Path, advance: Callable[[int], None] | None = None) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    with fsio.open_input(path) as f:
        while block := f.read(BLOCK):
            h.update(block)
            if advance is not None:
                advance(len(block))
    return h.hexdigest()


def record(root: Path, rels: Iterable[str], known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The file table for ``rels`` under ``root``; a hash from ``known`` (taken while writing, or by the
    previous run) is reused when the size (and the recorded mtime) still match, so a resumed build does
    not read a 400 GB engine again."""
    known = known or {}
    table: dict[str, Any] = {}
    for rel in sorted(rels):
        path = root / rel
        if not inside(root, rel) or path.is_symlink() or not path.is_file():
            continue  # only plain files inside the directory: never one through a link or outside it
        st = path.stat()
        prior = known.get(rel) or {}
        same = prior.get("size") == st.st_size and prior.get("mtime_ns", st.st_mtime_ns) == st.st_mtime_ns
        h = prior["hash"] if same and prior.get("hash") else digest(path)
        table[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": h}
    return table


def _stat(root: Path, rel: str, row: dict[str, Any]) -> tuple[os.stat_result | None, str | None]:
    """The file's stat and, when its size already tells, the problem (missing, other size)."""
    if not inside(root, rel):  # a tampered manifest: never read a file outside or through a link
        return None, f"{rel}: not a plain path inside {root}"
    try:
        st = (root / rel).stat()
    except OSError:
        return None, f"{rel}: missing"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{rel}: not a regular file"
    if st.st_size != row.get("size"):
        return st, f"{rel}: {st.st_size} bytes, the manifest says {row.get('size')}"
    return st, None


def _content_problem(rel: str) -> str:
    return f"{rel}: content differs from the manifest's {HASH_ALGORITHM} hash"


def check_unchanged(root: Path, files: dict[str, Any], *, progress_from: int = PROGRESS_FROM) -> None:
    """Refuse (exit 2) a directory whose files differ from the table by size or content, naming the first.

    Files whose modification time moved (a copy) are hashed, with a byte progress bar when they add up
    to ``progress_from`` bytes or more, unless this very file (same device, inode, size, times) was
    already verified; a verification is said once (a warning) and remembered in :func:`verified_dir`.
    """
    suspects: dict[str, os.stat_result] = {}
    problems: list[str] = []
    for rel, row in files.items():
        st, problem = _stat(root, rel, row)
        if problem is not None:
            problems.append(problem)
        elif st is not None and "mtime_ns" in row and st.st_mtime_ns != row["mtime_ns"]:
            suspects[rel] = st
    if problems:
        _refuse(root, problems)
    if not suspects:
        return
    memo = _Memo(root)
    # a row without a hash (an older manifest) cannot say more than its size did
    todo = {
        rel: st for rel, st in suspects.items() if files[rel].get("hash") and memo.get(rel, st) != files[rel]["hash"]
    }
    if not todo:
        return
    total = sum(st.st_size for st in todo.values())
    with byte_progress(total, f"verify {len(todo)} copied files", enabled=total >= progress_from) as advance:
        for rel in sorted(todo):
            if digest(root / rel, advance) != files[rel]["hash"]:
                problems.append(_content_problem(rel))
            else:
                memo.put(rel, todo[rel], files[rel]["hash"])
    if problems:
        _refuse(root, problems)
    where = memo.save()
    logger.warning(
        "%s: %d file(s) have other modification times than its manifest (a copy); their content matches "
        "the manifest's %s hashes%s",
        root,
        len(todo),
        HASH_ALGORITHM,
        f" (remembered in {where})" if where else "",
    )


def _refuse(root: Path, problems: list[str]) -> None:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise CheckpointError(
        f"{root} differs from its manifest: {problems[0]}{more}",
        hint=f"`medusa-trt verify {root}` lists every file; rebuild or reconvert (or copy it again).",
    )


def verified_dir(env: dict[str, str] | None = None) -> Path:
    """Where verified copies are remembered: ``$XDG_CACHE_HOME/medusa-trt/verified`` (``~/.cache`` by default)."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medusa-trt" / "verified"


class _Memo:
    """Hashes already checked for one directory, keyed by each file's identity on disk.

    A file that is changed, replaced or moved to another disk gets another key (size, inode, device,
    mtime or ctime), so what was remembered no longer applies and the file is hashed again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.path = verified_dir() / (hashlib.sha256(str(self.root).encode()).hexdigest()[:32] + ".json")
        self.rows: dict[str, Any] = {}
        doc = records.peek_at(records.VERIFIED, self.path)  # None: none yet, or unreadable: hash again
        if doc is not None and doc["root"] == str(self.root) and isinstance(doc["files"], dict):
            self.rows = doc["files"]

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    def get(self, rel: str, st: os.stat_result) -> str | None:
        row = self.rows.get(rel)
        if isinstance(row, dict) and row.get("key") == self._key(st):
            return str(row.get("hash"))
        return None

    def put(self, rel: str, st: os.stat_result, h: str) -> None:
        self.rows[rel] = {"key": self._key(st), "hash": h}

    def save(self) -> Path | None:
        """Write the memo (atomically); None when the cache directory cannot be written (hash next time)."""
        try:
            records.write_at(records.VERIFIED, self.path, {"root": str(self.root), "files": self.rows})
        except MedusaTrtError as e:
            logger.warning("cannot remember the verification in %s (%s): set XDG_CACHE_HOME", self.path, e)
            return None
        return self.path


def remember(root: Path, files: dict[str, Any]) -> None:
    """After a full :func:`verify` found nothing: remember every file, so `run` need not hash a copy again."""
    memo = _Memo(root)
    for rel, row in files.items():
        st, problem = _stat(root, rel, row)
        if st is not None and problem is None and row.get("hash"):
            memo.put(rel, st, str(row["hash"]))
    memo.save()


def verify(root: Path, files: dict[str, Any], advance: Callable[[int], None] | None = None) -> list[str]:
    """Every file's size and xxh3-128 hash against the table; the list of problems (empty: intact)."""
    problems = []
    for rel, row in files.items():
        _, problem = _stat(root, rel, row)
        if problem is not None:
            problems.append(problem)
            if advance is not None:
                advance(int(row.get("size") or 0))
            continue
        if row.get("hash") and digest(root / rel, advance) != row["hash"]:
            problems.append(_content_problem(rel))
    return problems


__all__ = ["HASH_ALGORITHM", "check_unchanged", "digest", "record", "remember", "verified_dir", "verify"]
