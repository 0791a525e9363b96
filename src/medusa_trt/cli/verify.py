"""`medusa-trt verify DIR`: every file of an engine or checkpoint directory against its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console
from medusa_trt.errors import CheckpointError, MedusaTrtError


def _table(root: Path) -> tuple[Path, dict[str, Any]]:
    from medusa_trt import records

    if not root.is_dir():
        raise CheckpointError(f"{root}: no such directory", hint="Pass an engine dir from `build` or a checkpoint.")
    found = records.find_manifest(root)  # engine (build), convert, heads (heads train)
    if found is None:
        raise CheckpointError(f"{root}: no medusa-trt manifest", hint="Only medusa-trt outputs can be verified.")
    record, doc = found
    files = records.file_table(doc)
    if not files:
        raise CheckpointError(
            f"{record.path(root)}: lists no file sizes and hashes (written by an older medusa-trt)",
            hint="Rebuild with the same arguments to record them.",
        )
    return record.path(root), files


def verify_cmd(
    path: Annotated[
        Path,
        typer.Argument(help="An engine dir from `build`, a checkpoint from `convert`, or heads from `heads train`."),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Check every file's size and xxh3-128 hash against the directory's manifest (reads every byte)."""
    from medusa_trt.integrity import remember, verify
    from medusa_trt.progress import byte_progress

    manifest, files = _table(path)
    total = sum(int(row.get("size") or 0) for row in files.values())
    with byte_progress(total, f"verify {len(files)} files", enabled=not json_out) as advance:
        problems = verify(path, files, advance)
    if json_out:
        emit_json(
            {"dir": str(path), "manifest": str(manifest), "files": len(files), "bytes": total, "problems": problems}
        )
    for p in problems:
        err_console.print(f"[red]damaged:[/] {p}", soft_wrap=True)
    if problems:
        raise MedusaTrtError(
            f"{path}: {len(problems)} of {len(files)} files do not match {manifest.name}",
            hint="Rebuild (medusa-trt build --force) or reconvert; the damaged files are listed above.",
        )
    remember(path, files)  # `run` on this directory (a copy, say) need not hash it again
    err_console.print(f"[green]intact:[/] {path}: {len(files)} files, {total / 2**20:.1f} MiB match {manifest.name}")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
