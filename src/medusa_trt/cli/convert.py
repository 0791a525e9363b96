"""`medusa-trt convert`: Hugging Face Llama 3.x + Medusa heads -> a TensorRT-LLM checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console


def convert_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="HF Llama 3.x directory or repo id (a ModelOpt combined checkpoint included)."
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Checkpoint directory to create (new, empty, or a medusa-trt checkpoint with --force).",
        ),
    ],
    medusa: Annotated[
        str | None, typer.Option("--medusa", help="FasterDecoding Medusa heads: directory or repo id.")
    ] = None,
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size (rank files).")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel size (Medusa supports 1 only).")] = 1,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="bfloat16, float16 or float32 (default: the source's). FP8 weights stay FP8."),
    ] = None,
    num_medusa_heads: Annotated[
        int | None,
        typer.Option("--num-medusa-heads", help="Write the first K heads (default: every head in the tensors)."),
    ] = None,
    num_medusa_layers: Annotated[
        int | None, typer.Option("--num-medusa-layers", help="Assert the layers per head (read from the tensors).")
    ] = None,
    max_draft_len: Annotated[
        int | None,
        typer.Option("--max-draft-len", help="Draft tokens per step the engine allows (default 63, TRT-LLM's)."),
    ] = None,
    tree: Annotated[
        str | None,
        typer.Option("--tree", help="Check max_draft_len and the head count against this tree (name or file)."),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub revision of --model (branch, tag, commit).")
    ] = None,
    medusa_revision: Annotated[str | None, typer.Option("--medusa-revision", help="Hub revision of --medusa.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-w", help="Rank files written at once (default: one per CPU, at least 8, at most --tp)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --output that medusa-trt wrote (never a foreign one).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert to a TRT-LLM checkpoint: config.json + rank{r}.safetensors + tokenizer + manifest."""
    from medusa_trt.checkpoint import convert_checkpoint

    res = convert_checkpoint(
        model,
        output,
        medusa=medusa,
        tp=tp,
        pp=pp,
        dtype=dtype,
        num_medusa_heads=num_medusa_heads,
        num_medusa_layers=num_medusa_layers,
        max_draft_len=max_draft_len,
        revision=revision,
        workers=workers,
        progress=not json_out,
        force=force,
        tree=tree,
        medusa_revision=medusa_revision,
    )
    for w in res.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
    if json_out:
        emit_json(res.to_json())
        return
    cfg = res.config
    heads = f", {cfg['num_medusa_heads']} Medusa heads" if "num_medusa_heads" in cfg else ""
    err_console.print(
        f"wrote {res.output_dir} ({cfg['architecture']}, {cfg['dtype']}, tp={tp}{heads}): "
        f"{res.bytes_written / 2**20:.1f} MiB in {res.seconds:.1f} s "
        f"({res.bytes_per_s / 2**20:.0f} MiB/s)"
    )


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)
