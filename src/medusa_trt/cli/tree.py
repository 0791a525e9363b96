"""`medusa-trt tree accuracy|build|sweep`: measure head accuracy, build the optimal tree, time tree sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console
from medusa_trt.errors import InvalidInputError


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise InvalidInputError(f"cannot read {what} {path}: {e.strerror}", hint="Check the path.") from e


def _out(raw: str | None, inputs: dict[str, str | Path | None], mark: str) -> Path | None:
    """--out checked before any work: not empty, not a directory, not inside an input, and not an
    existing file that does not begin with ``mark`` (what this command writes first)."""
    from medusa_trt.outputs import begins_with, check_file_output

    return None if raw is None else check_file_output(raw, "--out", inputs, ours=begins_with(mark.encode()))


def _profile_curve(profile: str, model: str, max_nodes: int, context_len: int) -> dict[int, float]:
    from medusa_trt.config.model import resolve_model
    from medusa_trt.config.profile import load_profile
    from medusa_trt.plan import step_time_curve

    return step_time_curve(load_profile(profile), resolve_model(model), max_nodes, context_len)


def build_cmd(
    accuracy: Annotated[Path, typer.Option("--accuracy", "-a", help="CSV: one row per head, one column per rank.")],
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes", "-n", help="Tree size; with --step-times/--profile the largest size considered (default 63)."
        ),
    ] = None,
    max_depth: Annotated[int | None, typer.Option("--max-depth", help="Deepest path (default: all heads).")] = None,
    max_topk: Annotated[int, typer.Option("--max-topk", help="Ranks considered per head (<= 10).")] = 10,
    step_times: Annotated[
        Path | None,
        typer.Option("--step-times", help="Measured step time per tree size (CSV nodes,ms or JSON; see `tree sweep`)."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Use the analytic step-time model of this hardware profile.")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Model preset or HF dir for --profile.")] = "llama-3.1-70b",
    context_len: Annotated[int, typer.Option("--context-len", help="Context length for --profile.")] = 1024,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Also write the tree YAML here.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build the optimal sparse Medusa tree from per-head accuracies (hardware-aware with step times)."""
    from medusa_trt import fsio
    from medusa_trt.medusa import tree_builder as tb

    out_path = _out(out, {"--accuracy": accuracy, "--step-times": step_times}, tb.TREE_MARK)
    if step_times is not None and profile is not None:
        raise InvalidInputError("--step-times and --profile are alternatives", hint="Pass one of them.")
    acc = tb.parse_accuracy_csv(_read(accuracy, "accuracy table"), str(accuracy))
    doc: dict[str, Any]
    if step_times is not None or profile is not None:
        limit = nodes if nodes is not None else 63
        curve = (
            tb.parse_step_times(_read(step_times, "step times"), str(step_times))
            if step_times is not None
            else _profile_curve(str(profile), model, limit, context_len)
        )
        choice = tb.choose_tree(acc, curve, max_nodes=limit, max_depth=max_depth, max_topk=max_topk)
        tree, expected = choice.tree, choice.expected_tokens_per_step
        doc = {
            "choices": tree,
            "expected_tokens_per_step": expected,
            "nodes": choice.nodes,
            "max_draft_len": choice.nodes,
            "step_ms": choice.step_ms,
            "tokens_per_ms": choice.tokens_per_ms,
            "curve": choice.curve,
        }
        err_console.print(
            f"chose {choice.nodes} nodes: {expected:.3f} tokens/step at {choice.step_ms:.3f} ms/step "
            f"({1000 * choice.tokens_per_ms:.1f} tokens/s/user)"
        )
    else:
        tree = tb.build_tree(acc, nodes if nodes is not None else 63, max_depth=max_depth, max_topk=max_topk)
        expected = tb.expected_tokens_per_step(acc, tree)
        doc = {"choices": tree, "expected_tokens_per_step": expected, "nodes": len(tree)}
    text = tb.tree_yaml(tree, expected)
    if out_path is not None:
        fsio.write_text(out_path, text)
        err_console.print(f"wrote {out}")
    if json_out:
        emit_json(doc)
    else:
        typer.echo(text, nl=False)


def accuracy_cmd(
    model_dir: Annotated[
        Path, typer.Argument(help="HF model dir (with --heads) or a converted checkpoint / engine dir.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the accuracy CSV.")],
    heads: Annotated[
        Path | None, typer.Option("--heads", help="FasterDecoding heads dir (for an HF model dir).")
    ] = None,
    data: Annotated[str, typer.Option("--data", help="'builtin' or a text/JSONL prompt file.")] = "builtin",
    num_prompts: Annotated[int, typer.Option("--num-prompts", help="Calibration prompts used.")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="Greedy tokens decoded per prompt.")] = 48,
    topk: Annotated[int, typer.Option("--topk", help="Rank columns written (<= 10).")] = 10,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Measure each head's per-rank accuracy against the base model's own greedy tokens."""
    from medusa_trt import fsio
    from medusa_trt.medusa.tree_builder import ACCURACY_MARK, format_accuracy_csv
    from medusa_trt.train.accuracy import measure_accuracy
    from medusa_trt.train.data import load_prompts

    out_path = _out(out, {"MODEL_DIR": model_dir, "--heads": heads, "--data": data}, ACCURACY_MARK)
    assert out_path is not None
    prompts = load_prompts(data)[:num_prompts]
    result = measure_accuracy(model_dir, prompts, heads_dir=heads, steps=steps, topk=topk, device=device)
    fsio.write_text(out_path, format_accuracy_csv(result.table))
    err_console.print(
        f"wrote {out}: {len(result.table)} heads x {topk} ranks over {result.positions} positions; "
        "top-1 " + ", ".join(f"h{k}={row[0]:.3f}" for k, row in enumerate(result.table))
    )
    if json_out:
        emit_json({"accuracy": result.table, "positions": result.positions, "out": str(out)})


def sweep_cmd(
    engine_dir: Annotated[Path, typer.Argument(help="Converted checkpoint or engine dir (reference runtime).")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="Write step times (CSV nodes,step_ms).")] = None,
    sizes: Annotated[
        str, typer.Option("--sizes", help="Tree sizes (draft nodes), comma-separated.")
    ] = "0,1,2,4,8,12,16,24,32,48,63",
    context_len: Annotated[int, typer.Option("--context-len", help="Tokens in the KV cache while timing.")] = 64,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed forwards per size (median taken).")] = 5,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Measure the reference runtime's verification step time against tree size (for `tree build --step-times`)."""
    from medusa_trt import fsio
    from medusa_trt.medusa.tree_builder import STEP_TIMES_HEADER, format_step_times_csv
    from medusa_trt.train.sweep import sweep_step_times

    out_path = _out(out, {"ENGINE_DIR": engine_dir}, STEP_TIMES_HEADER)
    try:
        counts = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError as e:
        raise InvalidInputError(f"--sizes: {e}", hint="Comma-separated integers, e.g. 0,1,4,16,63.") from e
    times = sweep_step_times(engine_dir, counts, context_len=context_len, repeats=repeats, device=device)
    for n, ms in sorted(times.items()):
        err_console.print(f"{n:3d} nodes: {ms:8.3f} ms/step")
    if out_path is not None:
        fsio.write_text(out_path, format_step_times_csv(times))
        err_console.print(f"wrote {out}")
    if json_out:
        emit_json({"step_ms": {str(k): v for k, v in sorted(times.items())}})


def register(app: typer.Typer) -> None:
    tree_app = typer.Typer(
        help="Medusa trees: head accuracy, optimal tree, step time vs tree size.", no_args_is_help=True
    )
    tree_app.command("accuracy")(accuracy_cmd)
    tree_app.command("build")(build_cmd)
    tree_app.command("sweep")(sweep_cmd)
    app.add_typer(tree_app, name="tree")
