"""`medusa-trt heads train`: Medusa-1 heads on a frozen backbone, by self-distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console


def train_cmd(
    model: Annotated[Path, typer.Option("--model", "-m", help="Hugging Face Llama model dir (frozen backbone).")],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Heads dir: config.json + medusa_lm_head.safetensors (new, empty, or heads medusa-trt trained).",
        ),
    ],
    num_heads: Annotated[int, typer.Option("--num-heads", help="Medusa heads K (head k predicts token t+k+2).")] = 4,
    num_layers: Annotated[int, typer.Option("--num-layers", help="ResBlocks per head.")] = 1,
    data: Annotated[str, typer.Option("--data", help="'builtin' prompts, or a text/JSONL prompt file.")] = "builtin",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine, warmup).")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per training sequence.")] = 128,
    gen_tokens: Annotated[
        int,
        typer.Option(
            "--gen-tokens", help="Greedy tokens the base model generates per prompt (the self-distillation targets)."
        ),
    ] = 96,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N steps (0: never).")
    ] = 50,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from OUTPUT's checkpoint when there is one.")
    ] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Train Medusa-1 heads for MODEL on its own greedy generations and write FasterDecoding heads."""
    from medusa_trt.train.trainer import TrainConfig, train_heads

    cfg = TrainConfig(
        num_heads=num_heads,
        num_layers=num_layers,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_len=seq_len,
        gen_tokens=gen_tokens,
        checkpoint_every=checkpoint_every,
        resume=resume,
        device=device,
        seed=seed,
    )
    result = train_heads(model, output, data=data, config=cfg)
    err_console.print(
        f"wrote {output} ({num_heads} heads); final loss {result.final_loss:.4f}; top-1 "
        + ", ".join(f"h{k}={a:.3f}" for k, a in enumerate(result.top1))
    )
    if json_out:
        emit_json(result.to_dict())


def register(app: typer.Typer) -> None:
    heads_app = typer.Typer(help="Medusa heads: train them for your own model.", no_args_is_help=True)
    heads_app.command("train")(train_cmd)
    app.add_typer(heads_app, name="heads")
