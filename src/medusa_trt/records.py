"""Every record medusa-trt keeps on disk: its file name, its schema and version, read, write, validate.

A record is one JSON object that begins with the same header::

    {"format": "medusa-trt-engine", "format_version": 1,
     "tool": {"name": "medusa-trt", "version": "0.1.0"}, "created": "2026-01-01T00:00:00Z", ...}

``format`` says what the record is, ``format_version`` which layout of it (raised when a field
changes meaning or goes away, not when one is added), ``tool`` who wrote it. Records are written
through ``fsio`` (a temporary name, then rename), so a reader finds a whole record or none.

Files written before this header existed are still read: an engine manifest with
``schema_version``, heads manifests and ownership lists with ``"tool": "medusa-trt"``, convert
manifests (which had the header already), step stamps and vLLM model references (which had none).
A verification memo without the header is not read (its files are hashed again, as when there is none).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_trt import __version__, fsio
from medusa_trt.errors import CheckpointError, InvalidInputError

TOOL = "medusa-trt"
MAX_BYTES = 64 * 2**20  # a manifest lists files, not tensors: anything larger is not one of ours


@dataclass(frozen=True)
class Record:
    """One kind of record: where it lives, what it is called inside, and what a reader needs from it."""

    filename: str
    format: str
    version: int
    what: str  # in messages: "engine manifest"
    required: tuple[str, ...]  # keys a reader relies on
    hint: str  # how to get a good one

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / self.filename


ENGINE = Record(
    "medusa-trt.json",
    "medusa-trt-engine",
    1,
    "engine manifest",
    ("engine", "checkpoint_dir"),
    "Rebuild with `medusa-trt build --force`.",
)
CONVERT = Record(
    "medusa-trt-convert.json",
    "medusa-trt-convert",
    1,
    "convert manifest",
    ("files",),
    "Reconvert with `medusa-trt convert --force`.",
)
HEADS = Record(
    "medusa-trt-heads.json",
    "medusa-trt-heads",
    1,
    "heads manifest",
    ("files",),
    "Train them again with `medusa-trt heads train`.",
)
MODEL_REF = Record(  # a vLLM engine dir: {"model": path or repo id, "revision": the pinned commit}
    "model.json",
    "medusa-trt-model-ref",
    1,
    "model reference",
    ("model", "revision"),
    "Run `medusa-trt build` again with the same arguments: it resumes.",
)
OWNER = Record(
    ".medusa-trt-owner.json", "medusa-trt-owner", 1, "ownership list", ("kind", "files"), "Choose another --output."
)
VERIFIED = Record(  # under $XDG_CACHE_HOME/medusa-trt/verified, one per directory (integrity.py names it)
    "", "medusa-trt-verified", 1, "verification memo", ("root", "files"), "It is rebuilt by the next check."
)
DEMO_INFO = Record(  # what a demo stage measured, kept inside its output so that a reused stage still reports it
    ".demo-info.json", "medusa-trt-demo-info", 1, "demo stage record", (), "Run `medusa-trt demo --fresh`."
)
STAMP = Record(".steps", "medusa-trt-step", 1, "step stamp", ("name", "input_hash"), "Run the command again.")
STAGE_KEY, STAGE_DONE = "key.json", "done.json"  # a stage directory's STAMPs: its inputs, its completion
MANIFESTS = (ENGINE, CONVERT, HEADS)  # the records that list files with sizes and hashes (`medusa-trt verify`)


def stamp_path(root: Path, step: str) -> Path:
    """Where the stamp of step ``step`` lives under a step runner's ``root``."""
    return root / STAMP.filename / f"{step}.json"


def header(record: Record) -> dict[str, Any]:
    return {
        "format": record.format,
        "format_version": record.version,
        "tool": {"name": TOOL, "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def document(record: Record, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` under the record's header (the header's keys win)."""
    return {**header(record), **{k: v for k, v in body.items() if k not in HEADER_KEYS}}


HEADER_KEYS = ("format", "format_version", "tool", "created")


def write(record: Record, directory: str | Path, body: dict[str, Any]) -> Path:
    """Write ``body`` as ``record`` in ``directory``, atomically."""
    return write_at(record, record.path(directory), body)


def write_at(record: Record, path: Path, body: dict[str, Any]) -> Path:
    """Write ``body`` as ``record`` at ``path`` (for records with no fixed name: step stamps)."""
    problems = [k for k in record.required if k not in body]
    if problems:  # a bug of ours, never the user's input
        raise ValueError(f"{record.what} without {problems}")
    return fsio.write_json(path, document(record, body))


def is_ours(record: Record, doc: Any) -> bool:
    """True when ``doc`` is a ``record`` written by medusa-trt, this version or an older one."""
    if not isinstance(doc, dict):
        return False
    if "format" in doc:
        tool = doc.get("tool")
        return doc["format"] == record.format and isinstance(tool, dict) and tool.get("name") == TOOL
    return _legacy(record, doc)


def _legacy(record: Record, doc: dict[str, Any]) -> bool:
    """The records older versions wrote, before the common header."""
    if record is ENGINE:  # schema_version 1; hand-made manifests (tests, notes) have no header at all
        return doc.get("schema_version", 1) == 1
    if record is STAMP:
        return isinstance(doc.get("input_hash"), str)
    if record is MODEL_REF:
        return isinstance(doc.get("model"), str)
    if record is DEMO_INFO:  # the measurements alone
        return True
    return doc.get("tool") == TOOL  # heads manifests and ownership lists


def _load(path: Path) -> Any:
    """The JSON value in ``path``; OSError or ValueError when it cannot be one of ours."""
    # a record is a regular file we wrote, never a link (nor a FIFO, whose open would block)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES // 2**20} MiB")
    try:
        return fsio.parse_json(data, path)  # bounded nesting: a deep one is not ours either
    except InvalidInputError as e:
        raise ValueError(e.message.removeprefix(f"{path}: ")) from e


def read(record: Record, directory: str | Path, *, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``record`` in ``directory``; a one-line CheckpointError when it is missing or not valid.

    ``require``: keys this reader needs beyond the ones every reader does.
    """
    return read_at(record, record.path(directory), require=require)


def read_at(record: Record, path: Path, *, require: tuple[str, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: no {path.name} ({record.what})", hint=record.hint)
    try:
        doc = _load(path)
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON, too large, a symlink
        why = str(e) if isinstance(e, ValueError) else e.__class__.__name__
        raise CheckpointError(f"{path}: unreadable {record.what} ({why})", hint=record.hint) from e
    return validate(record, path, doc, require=require)


def validate(record: Record, path: Path, doc: Any, *, require: tuple[str, ...] = ()) -> dict[str, Any]:
    if not is_ours(record, doc):
        raise CheckpointError(f"{path}: not a medusa-trt {record.what}", hint=record.hint)
    version = doc.get("format_version", 1)
    if not isinstance(version, int) or version > record.version:
        raise CheckpointError(
            f"{path}: {record.what} format_version {version} is newer than this medusa-trt reads ({record.version})",
            hint="Upgrade medusa-trt, or redo it with this version.",
        )
    for key in (*record.required, *require):
        if key not in doc:
            raise CheckpointError(f"{path}: {record.what} lacks '{key}'", hint=record.hint)
    return dict(doc)


def peek(record: Record, directory: str | Path) -> dict[str, Any] | None:
    """The ``record`` in ``directory``, or None when there is no valid one (for caches and provenance)."""
    return peek_at(record, record.path(directory))


def peek_at(record: Record, path: Path) -> dict[str, Any] | None:
    try:
        return read_at(record, path)
    except CheckpointError:
        return None


def find_manifest(directory: Path) -> tuple[Record, dict[str, Any]] | None:
    """The first file-listing manifest present in ``directory`` (engine, convert, heads), read strictly."""
    for record in MANIFESTS:
        if record.path(directory).is_file():
            return record, read(record, directory)
    return None


def file_table(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest's ``files``: relative path -> {size, hash, mtime_ns}; entries that are not tables dropped."""
    files = doc.get("files")
    if not isinstance(files, dict):
        return {}
    return {str(k): v for k, v in files.items() if isinstance(v, dict)}
