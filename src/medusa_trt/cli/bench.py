"""`medusa-trt bench`: measure an OpenAI-compatible server (or our own, started for --engine)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medusa_trt.cli._common import JsonOpt, emit_json, err_console
from medusa_trt.errors import EXIT_INTERRUPTED, InvalidInputError, ServerError

if TYPE_CHECKING:
    from rich.progress import TaskID

    from medusa_trt.bench.metrics import RequestRecord
    from medusa_trt.bench.report import BenchReport
    from medusa_trt.bench.runner import BenchConfig


def _parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidInputError(
            f"--concurrency must be comma-separated integers, got {text!r}", hint="For example --concurrency 1,2,4."
        ) from None
    if not levels or any(c < 1 for c in levels):
        raise InvalidInputError(f"--concurrency levels must be >= 1, got {text!r}")
    return levels


def bench_cmd(
    url: Annotated[str | None, typer.Option("--url", help="Base URL of an OpenAI-compatible server.")] = None,
    engine: Annotated[
        list[Path] | None,
        typer.Option(
            "--engine",
            help="Engine dir: start its server (`medusa-trt run`) on a free loopback port, measure, stop it. "
            "Repeat it to compare engines side by side, one at a time, with the same prompts and settings.",
        ),
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Model preset for --simulate.")] = "llama-3.1-70b",
    served_model: Annotated[
        str | None,
        typer.Option("--served-model", help="The request's model name (default: the first id of /v1/models)."),
    ] = None,
    dataset: Annotated[
        str, typer.Option("--dataset", help="'builtin', a JSONL of prompts or a ShareGPT JSON.")
    ] = "builtin",
    num_prompts: Annotated[
        int,
        typer.Option(
            "--num-prompts", help="Requests per concurrency level (per Medusa mode with --compare-no-medusa)."
        ),
    ] = 32,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Concurrent users, comma-separated levels.")] = "1",
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens", help="max_tokens per request (a JSONL line's own output_tokens, if any, wins for it)."
        ),
    ] = 128,
    input_len: Annotated[
        int | None,
        typer.Option(
            "--input-len", help="Cut or pad every prompt to this many tokens (the --engine's tokenizer or --tokenizer)."
        ),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Model dir whose tokenizer counts --input-len (default: the --engine's)."),
    ] = None,
    ignore_eos: Annotated[
        bool,
        typer.Option(
            "--ignore-eos/--no-ignore-eos",
            help="Send ignore_eos so that every request yields exactly --max-tokens tokens (as peer tools do); "
            "--no-ignore-eos for servers that refuse the field.",
        ),
    ] = True,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare-no-medusa",
            help="Interleave requests with Medusa on and off; report the speedup and check greedy outputs match.",
        ),
    ] = False,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed requests before measuring.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for drawing prompts.")] = 0,
    disable_shuffle: Annotated[
        bool,
        typer.Option(
            "--disable-shuffle",
            help="Send the dataset's prompts in its own order (as guidellm and aiperf read a file), not shuffled.",
        ),
    ] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="0 is greedy.")] = 0.0,
    endpoint: Annotated[str, typer.Option("--endpoint", help="'chat' or 'completions'.")] = "chat",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed per request.")] = 300.0,
    json_out_file: Annotated[
        str | None,
        typer.Option(
            "--json-out",
            help="Write the result JSON here (missing parent directories are created; an existing file is "
            "replaced only when it is a bench report).",
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG: tokens/s/user and TTFT vs concurrency.")
    ] = None,
    simulate: Annotated[
        str | None,
        typer.Option("--simulate", help="Hardware profile: print the analytic prediction at the measured tokens/step."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MEDUSA_TRT_API_KEY",
            show_envvar=True,
            help="Send `Authorization: Bearer KEY` (a server started with --api-key); with --engine, the server "
            "started for the run requires it.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Benchmark a server: TTFT, TPOT, ITL, E2EL, tokens/s/user, tokens/step (vLLM key names)."""
    import os

    from medusa_trt.bench import BenchConfig, run_benchmark
    from medusa_trt.engines.launch import api_key_setting

    api_key, note = api_key_setting(api_key, os.environ, without="to send none")
    if note is not None:
        err_console.print(note, markup=False)

    if plot is not None and plot.suffix.lower() != ".png":
        raise InvalidInputError(f"--plot must name a .png file, got {plot}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidInputError(f"--temperature {temperature}: must be a finite number >= 0", hint="0 is greedy.")
    engines = list(engine or [])
    if len(engines) > 1 and url is not None:
        raise InvalidInputError("--url and --engine exclude each other", hint="Measure a server, or engine dirs.")
    json_path = _check_outputs(json_out_file, plot, engines, dataset)
    cfg = BenchConfig(
        url=url,
        engine=engines[0] if len(engines) == 1 else None,
        served_model=served_model,
        dataset=dataset,
        num_prompts=num_prompts,
        concurrency=_parse_concurrency(concurrency),
        max_tokens=max_tokens,
        input_len=input_len,
        tokenizer=tokenizer,
        ignore_eos=ignore_eos,
        compare_no_medusa=compare,
        warmup=warmup,
        seed=seed,
        shuffle=not disable_shuffle,
        temperature=temperature,
        endpoint=endpoint,
        request_timeout_s=timeout,
        simulate=simulate,
        sim_model=model,
        command=["medusa-trt", *_redact_key(sys.argv[1:])],
        api_key=api_key,
    )
    if len(engines) > 1:
        _side_by_side(cfg, engines, json_path, plot, json_out)
        return
    if engines:
        err_console.print(f"starting the server for {engines[0]} ...")
    with _LevelProgress() as progress:
        report = run_benchmark(cfg, on_level=progress.on_level, on_request=progress.on_request)
    _render(report, json_path, plot)
    if json_out:
        emit_json(report.to_json())
    _raise_if_nothing_measured(report)


def _redact_key(argv: list[str]) -> list[str]:
    """The command line as the report keeps it: the value of --api-key replaced by ***."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(arg)
        hide = arg == "--api-key" and not hide
    return out


class _LevelProgress:
    """One progress bar per concurrency level (requests done of the level's total), on stderr."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _LevelProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_level(self, concurrency: int, requests: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"concurrency {concurrency}", total=requests)

    def on_request(self, _rec: RequestRecord) -> None:
        if self.task is not None:
            self.progress.advance(self.task)


def _render(report: BenchReport, json_path: Path | None, plot: Path | None) -> None:
    """The table and summary on stderr; the --json-out file (checked beforehand) and the --plot PNG when asked for."""
    from medusa_trt.bench.report import render_table, summary_lines

    err_console.print(render_table(report))
    for line in summary_lines(report):
        err_console.print(line, soft_wrap=True, markup=False)  # server error text may hold [brackets]
    if json_path is not None:
        err_console.print(f"wrote {report.write(json_path)}")
    if plot is not None and report.runs:
        from medusa_trt.bench.plot import write_plot

        err_console.print(f"wrote {write_plot(report, plot)}")


def _raise_if_nothing_measured(report: BenchReport) -> None:
    """Exit 130 when interrupted; fail when every request failed (the report above says why)."""
    if report.was_cancelled:
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.runs and all(r["completed"] == 0 for r in report.runs):
        raise ServerError(
            "every request failed: nothing was measured",
            hint="See the error counts above; check the server's log and the --url/--served-model.",
        )


def _side_by_side(cfg: BenchConfig, engines: list[Path], json_path: Path | None, plot: Path | None, doc: bool) -> None:
    """Each engine in turn (started, measured, stopped), then one table and plot."""
    from rich.table import Table

    from medusa_trt.bench.side_by_side import rows, run_side_by_side, summary_lines, write_plot

    if cfg.simulate:
        raise InvalidInputError("--simulate takes one engine or --url", hint="Drop --simulate, or bench one engine.")
    progress = _LevelProgress()

    def callbacks() -> dict[str, object]:
        return {"on_level": progress.on_level, "on_request": progress.on_request}

    with progress:
        sbs = run_side_by_side(
            cfg,
            engines,
            on_engine=lambda p: err_console.print(f"starting the server for {p} ..."),
            make_callbacks=callbacks,
        )
    table = Table(title="medusa-trt bench: engines side by side", title_justify="left")
    header, *body = rows(sbs)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in body:
        table.add_row(*row)
    err_console.print(table)
    for line in summary_lines(sbs):
        err_console.print(line, soft_wrap=True, markup=False)
    if json_path is not None:
        err_console.print(f"wrote {sbs.write(json_path)}")
    if plot is not None and sbs.reports:
        err_console.print(f"wrote {write_plot(sbs, plot)}")
    if doc:
        emit_json(sbs.to_json())
    if sbs.was_cancelled:
        raise typer.Exit(EXIT_INTERRUPTED)
    if all(r["completed"] == 0 for _, r in sbs.columns()):
        raise ServerError("every request failed: nothing was measured", hint="See the servers' errors above.")


def _check_outputs(json_out: str | None, plot: Path | None, engines: list[Path], dataset: str) -> Path | None:
    """Refuse bad output paths before the benchmark runs, not after an hour of measuring."""
    from medusa_trt.bench.report import is_report
    from medusa_trt.outputs import check_file_output, is_our_png

    inputs: dict[str, str | Path | None] = {f"--engine {e}": e for e in engines}
    inputs["--dataset"] = dataset
    if plot is not None:
        check_file_output(plot, "--plot", inputs, ours=is_our_png)
    return None if json_out is None else check_file_output(json_out, "--json-out", inputs, ours=is_report)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
