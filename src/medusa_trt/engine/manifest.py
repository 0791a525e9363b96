"""The engine directory's manifest, ``medusa-trt.json``: what `run` and `bench` take everything from.

Written last, atomically (temporary name, then rename): a directory with a manifest is complete.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import CheckpointError

MANIFEST = "medusa-trt.json"
SCHEMA_VERSION = 1


def tool_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "medusa-trt": version("medusa-trt"),
        "python": platform.python_version(),
        "tensorrt_llm": version("tensorrt_llm"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "safetensors": version("safetensors"),
    }


def write_manifest(out: Path, doc: dict[str, Any]) -> Path:
    doc = {"schema_version": SCHEMA_VERSION, **doc, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return fsio.write_json(out / MANIFEST, doc)


def read_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """The manifest of a built engine directory; a clear error when the build never finished."""
    path = Path(engine_dir) / MANIFEST
    if not Path(engine_dir).is_dir():
        raise CheckpointError(
            f"{engine_dir}: no such engine directory",
            hint="Build one first: medusa-trt build --profile cpu --model DIR --medusa DIR",
        )
    if not path.is_file():
        raise CheckpointError(
            f"{engine_dir}: no {MANIFEST} (not a finished medusa-trt build)",
            hint="Run `medusa-trt build` again with the same arguments: it resumes.",
        )
    try:
        doc = fsio.read_json(path, "manifest")
    except OSError as e:
        raise CheckpointError(
            f"{path}: unreadable manifest ({e.__class__.__name__})", hint="Rebuild with `medusa-trt build --force`."
        ) from e
    for key in ("engine", "checkpoint_dir", "tree", "num_medusa_heads", "max_draft_len", "profile"):
        if key not in doc:
            raise CheckpointError(f"{path}: manifest lacks '{key}'", hint="Rebuild with `medusa-trt build --force`.")
    return dict(doc)
