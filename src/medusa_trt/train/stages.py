"""Training stages on disk: each one a directory named by a hash of its inputs, done when it says so.

A stage writes its files under temporary names and renames them, then ``done.json`` last; a rerun
with the same inputs finds ``done.json`` and skips the stage, or finds partial progress (finished
shards, journal lines, a checkpoint) and continues from there. Different inputs get another
directory, so nothing from one run is mixed into another.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE = "done.json"
# every name a stage writes: its key and done marks, the distil journal, hidden-state shards, the
# training state, and those names' atomic-write temporaries
_OURS = re.compile(
    r"^\.?(key\.json|done\.json|sequences\.jsonl|state\.pt|shard-\d{5}\.safetensors)(\.tmp-\d+-\d+-[0-9a-f]{8})?$"
)


def digest(doc: Any) -> str:
    """A short, stable hash of a JSON-able document (sorted keys)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, doc: Any) -> None:
    from medusa_trt import fsio

    fsio.write_json(path, doc)


@dataclass(frozen=True)
class Stage:
    """One stage's directory: ``ROOT/NAME-HASH`` with the key that made it in ``key.json``."""

    name: str
    key: dict[str, Any]
    dir: Path

    @classmethod
    def at(cls, root: Path, name: str, key: dict[str, Any]) -> Stage:
        return cls(name, key, Path(root) / f"{name}-{digest(key)}")

    @property
    def hash(self) -> str:
        return digest(self.key)

    def open(self) -> Stage:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").is_file():
            write_json_atomic(self.dir / "key.json", self.key)
        return self

    def clear(self) -> None:
        """Remove this stage's files, one by one by the names stages write; anything else is kept and
        stops it (a user's file is never deleted)."""
        from medusa_trt import fsio
        from medusa_trt.errors import InvalidInputError

        if not self.dir.is_dir() or self.dir.is_symlink():
            return
        mine = [p.name for p in self.dir.iterdir() if _OURS.match(p.name)]
        if left := fsio.remove_listed(self.dir, mine):
            raise InvalidInputError(
                f"{self.dir / left[0]}: not written by medusa-trt; refusing to delete it",
                hint="Move it out of the stage directory and rerun.",
            )
        self.dir.rmdir()

    def is_done(self) -> bool:
        return (self.dir / DONE).is_file()

    def done_info(self) -> dict[str, Any]:
        from medusa_trt import fsio

        data: dict[str, Any] = fsio.read_json(self.dir / DONE, "stage record")
        return data

    def finish(self, info: dict[str, Any]) -> None:
        write_json_atomic(self.dir / DONE, {"stage": self.name, "key": self.hash, **info})
