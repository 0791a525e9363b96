"""Is a directory still what medusa-trt wrote? Two checks against a manifest's file table.

- :func:`check_unchanged`, at every start-up (`run`, the server, each tp rank): sizes and
  modification times only, so it costs one ``stat`` per file even for a 800 GB checkpoint.
- :func:`verify` (`medusa-trt verify DIR`): every byte against the xxh3-128 hashes taken while
  the files were written; it catches what a stat cannot (a bit flipped in place by the disk).

A table row is ``{"size": int, "hash": str, "mtime_ns": int}``; ``mtime_ns`` is absent for a
converted checkpoint's files (they are renamed into place as a directory and copied by users).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError

HASH_ALGORITHM = "xxh3_128"
BLOCK = 8 << 20


def inside(root: Path, rel: str) -> bool:
    """A manifest entry names a plain relative path inside ``root`` reached through no symlink."""
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


def changes(root: Path, files: dict[str, Any]) -> list[str]:
    """What no longer matches the table by size or modification time (one line per file)."""
    out = []
    for rel, row in files.items():
        path = root / rel
        if not inside(root, rel):
            out.append(f"{rel}: not a plain path inside {root}")
            continue
        try:
            st = path.stat()
        except OSError:
            out.append(f"{rel}: missing")
            continue
        if st.st_size != row.get("size"):
            out.append(f"{rel}: {st.st_size} bytes, the manifest says {row.get('size')}")
        elif "mtime_ns" in row and st.st_mtime_ns != row["mtime_ns"]:
            out.append(f"{rel}: modified after the manifest was written")
    return out


def check_unchanged(root: Path, files: dict[str, Any]) -> None:
    """Refuse a directory changed since its manifest was written (exit 2), naming the first file."""
    if found := changes(root, files):
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CheckpointError(
            f"{root} changed since its manifest was written: {found[0]}{more}",
            hint=f"Check every byte with `medusa-trt verify {root}`; rebuild or reconvert if it reports damage.",
        )


def verify(root: Path, files: dict[str, Any], advance: Callable[[int], None] | None = None) -> list[str]:
    """Every file's size and xxh3-128 hash against the table; the list of problems (empty: intact)."""
    problems = []
    for rel, row in files.items():
        path = root / rel
        if not inside(root, rel):
            problems.append(f"{rel}: not a plain path inside {root}")
            continue
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        if size != row.get("size"):
            problems.append(f"{rel}: {size} bytes, the manifest says {row.get('size')}")
            if advance is not None:
                advance(int(row.get("size") or 0))
            continue
        if row.get("hash") and digest(path, advance) != row["hash"]:
            problems.append(f"{rel}: content differs from the manifest's {HASH_ALGORITHM} hash")
    return problems


__all__ = ["HASH_ALGORITHM", "changes", "check_unchanged", "digest", "record", "verify"]
