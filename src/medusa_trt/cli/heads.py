"""`medusa-trt heads train`: Medusa-1 heads on a frozen backbone, by self-distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console


def train_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Hugging Face model dir or repo id (converted on the fly, no heads), or a TRT-LLM checkpoint "
            "from `convert`. With --dry-run also a preset (llama-3.1-70b).",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Heads dir: config.json + medusa_lm_head.safetensors (new, empty, or heads medusa-trt trained).",
        ),
    ] = None,
    num_heads: Annotated[int, typer.Option("--num-heads", help="Medusa heads K (head k predicts token t+k+2).")] = 4,
    num_layers: Annotated[int, typer.Option("--num-layers", help="ResBlocks per head.")] = 1,
    share_lm_head: Annotated[
        bool,
        typer.Option("--share-lm-head", help="Heads project with the frozen base lm_head; only the ResBlocks train."),
    ] = False,
    data: Annotated[
        str,
        typer.Option(
            "--data", help="'builtin', a text file, JSONL (prompt/text/messages), or ShareGPT/OpenAI-messages JSON."
        ),
    ] = "builtin",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 200,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (cosine, warmup).")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per step (global, all processes).")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per training sequence.")] = 128,
    gen_tokens: Annotated[
        int,
        typer.Option(
            "--gen-tokens", help="Greedy tokens the base model generates per prompt (the self-distillation targets)."
        ),
    ] = 96,
    tp: Annotated[
        int | None, typer.Option("--tp", help="Tensor-parallel ranks for a Hugging Face --model (default 1).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Checkpoint dtype when converting (default: the source's).")
    ] = None,
    teacher_url: Annotated[
        str | None,
        typer.Option("--teacher-url", help="Distil from this OpenAI-compatible server (the same model) instead."),
    ] = None,
    teacher_api_key: Annotated[
        str | None, typer.Option("--teacher-api-key", envvar="MEDUSA_TRT_TEACHER_API_KEY", help="Bearer token.")
    ] = None,
    teacher_concurrency: Annotated[int, typer.Option("--teacher-concurrency", help="Teacher requests in flight.")] = 8,
    distil_batch: Annotated[
        int,
        typer.Option(
            "--distil-batch", min=1, help="Local distillation: prompts decoded together (one forward per step)."
        ),
    ] = 16,
    hidden_cache: Annotated[
        Path | None, typer.Option("--hidden-cache", help="Where the hidden-state shards go (default OUTPUT/.train).")
    ] = None,
    shard_mib: Annotated[
        float, typer.Option("--shard-mib", help="Hidden-state shard size (one shard is held in memory).")
    ] = 256.0,
    train_devices: Annotated[
        int, typer.Option("--train-devices", help="Data-parallel training processes (DDP; gloo on CPU).")
    ] = 1,
    tree: Annotated[
        str | None,
        typer.Option("--tree", help="Report expected tokens/step for this tree (default: the largest that fits)."),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N steps (0: never).")
    ] = 50,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue finished or partial stages when there are any.")
    ] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (one rank per GPU).")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print memory/disk/time per stage for --profile; exit 4 if it cannot fit.")
    ] = False,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Hardware profile for --dry-run (name or YAML).")
    ] = None,
    num_sequences: Annotated[
        int | None, typer.Option("--num-sequences", help="--dry-run: plan for this many sequences (default: --data's).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train Medusa-1 heads for MODEL on its own greedy generations and write FasterDecoding heads."""
    from medusa_trt.errors import InvalidInputError

    if dry_run:
        _dry_run(model, profile, data, num_sequences, locals(), json_out)
        return
    if output is None:
        raise InvalidInputError("--output is required", hint="Pass --output DIR for the heads (or --dry-run).")
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
        tp=tp,
        dtype=dtype,
        teacher_url=teacher_url,
        teacher_api_key=teacher_api_key,
        teacher_concurrency=teacher_concurrency,
        distil_batch=distil_batch,
        hidden_cache=str(hidden_cache) if hidden_cache else None,
        shard_mib=shard_mib,
        train_devices=train_devices,
        share_lm_head=share_lm_head,
        tree=tree,
        progress=not json_out,
    )
    result = train_heads(model, output, data=data, config=cfg)
    err_console.print(
        f"wrote {output} ({num_heads} heads{', shared lm_head' if share_lm_head else ''}); "
        f"final loss {result.final_loss:.4f}; held-out top-1 "
        + ", ".join(f"h{k}={a:.3f}" for k, a in enumerate(result.top1))
        + "; top-5 "
        + ", ".join(f"h{k}={a:.3f}" for k, a in enumerate(result.top5))
        + f"; tree {result.tree}: {result.expected_tokens_per_step:.2f} expected tokens/step"
    )
    if json_out:
        emit_json(result.to_dict())


def _dry_run(
    model: str, profile: str | None, data: str, num_sequences: int | None, opts: dict[str, Any], json_out: bool
) -> None:
    from medusa_trt.config.profile import load_profile
    from medusa_trt.errors import IncompatibleError, InvalidInputError
    from medusa_trt.train.budget import Workload, shape_for, training_budget
    from medusa_trt.train.data import load_prompts

    if profile is None:
        raise InvalidInputError("--dry-run needs --profile", hint="e.g. --profile hgx-h200-bf16-tp8")
    prof = load_profile(profile)
    shape = shape_for(model)
    n = num_sequences if num_sequences is not None else len(load_prompts(data))
    w = Workload(
        sequences=n,
        seq_len=opts["seq_len"],
        gen_tokens=opts["gen_tokens"],
        num_heads=opts["num_heads"],
        num_layers=opts["num_layers"],
        steps=opts["steps"],
        batch_size=opts["batch_size"],
        tp=opts["tp"] or prof.parallelism.tp,
        train_devices=opts["train_devices"],
        share_lm_head=opts["share_lm_head"],
        teacher=opts["teacher_url"] is not None,
        distil_batch=opts["distil_batch"],
    )
    budget = training_budget(shape, prof, w)
    if json_out:
        emit_json(budget.to_json())
    else:
        _render(budget)
    if not budget.fits:
        raise IncompatibleError(
            f"heads training for {shape.name} does not fit {prof.name}", hint=" ".join(budget.hints) or None
        )


def _render(budget: Any) -> None:
    from rich.table import Table

    t = Table(title=f"heads train: {budget.model} on {budget.profile} ({budget.device_memory_gib} GiB per device)")
    for col in ("stage", "devices", "GiB/device", "disk GiB", "est. time", "fits"):
        t.add_column(col)
    for name, st in budget.stages.items():
        est = "teacher" if st.est_seconds is None else f"{st.est_seconds / 3600:.2f} h"
        fits = "yes" if st.fits else "[red]no[/]"
        t.add_row(name, str(st.devices), f"{st.memory_gib_per_device:.1f}", f"{st.disk_gib:.1f}", est, fits)
    err_console.print(t)
    for name, st in budget.stages.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in st.breakdown_gib.items() if v >= 0.05)
        if parts:
            err_console.print(f"  {name}: {parts} GiB")
    err_console.print(
        f"trainable parameters {budget.trainable_params / 1e6:.1f} M; times are roofline estimates (lower bounds)"
    )
    for h in budget.hints:
        err_console.print(f"[yellow]{h}[/]")


def register(app: typer.Typer) -> None:
    heads_app = typer.Typer(help="Medusa heads: train them for your own model.", no_args_is_help=True)
    heads_app.command("train")(train_cmd)
    app.add_typer(heads_app, name="heads")
