"""The load generator: a fixed number of concurrent streaming users over a drawn prompt list.

`run_benchmark(BenchConfig) -> BenchReport` is the Python API (the CLI and the demo call it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medusa_trt import __version__, spec_counters
from medusa_trt.bench.client import make_client, stream_request
from medusa_trt.bench.datasets import BUILTIN, Prompt, draw_prompts, load_prompts, load_tokenizer
from medusa_trt.bench.metrics import RequestRecord, compute_metrics
from medusa_trt.bench.report import BenchReport
from medusa_trt.bench.server import engine_server, probe, read_engine_provenance
from medusa_trt.errors import InvalidInputError


@dataclass
class BenchConfig:
    url: str | None = None  # an OpenAI-compatible server, or
    engine: Path | None = None  # an engine dir: our server is started for the run
    served_model: str | None = None  # request "model"; default: first id of /v1/models
    dataset: str = BUILTIN  # "builtin", a JSONL file or a ShareGPT JSON file
    num_prompts: int = 32
    concurrency: tuple[int, ...] = (1,)
    max_tokens: int = 128
    input_len: int | None = None  # tokens of `tokenizer` (or of the engine dir's), see datasets.fit_tokens
    tokenizer: Path | None = None
    ignore_eos: bool = True  # every request yields max_tokens tokens (vLLM/TRT-LLM/aiperf field)
    compare_no_medusa: bool = False
    warmup: int = 1  # untimed requests (per Medusa mode) before measuring
    seed: int = 0
    shuffle: bool = True  # False: the dataset's own order (vLLM's --disable-shuffle)
    temperature: float = 0.0
    endpoint: str = "chat"  # "chat" or "completions"
    request_timeout_s: float = 300.0
    server_start_timeout_s: float = 600.0
    simulate: str | None = None  # a hardware profile name or YAML path
    sim_model: str = "llama-3.1-70b"  # model preset for the simulation
    command: list[str] | None = field(default=None)
    api_key: str | None = field(default=None, repr=False)  # sent as a bearer token; never written to the report

    def validate(self) -> None:
        if (self.url is None) == (self.engine is None):
            raise InvalidInputError(
                "give exactly one of --url or --engine",
                hint="--url http://HOST:PORT measures any OpenAI-compatible server; "
                "--engine DIR starts ours for the run.",
            )
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise InvalidInputError(f"--concurrency must be positive integers, got {self.concurrency}")
        if self.max_tokens < 1:
            raise InvalidInputError(f"--max-tokens must be positive, got {self.max_tokens}")
        if self.warmup < 0:
            raise InvalidInputError(f"--warmup must be >= 0, got {self.warmup}")
        if self.endpoint not in ("chat", "completions"):
            raise InvalidInputError(f"unknown endpoint {self.endpoint!r}", hint="Use 'chat' or 'completions'.")


RequestCallback = Callable[[RequestRecord], None]
LevelCallback = Callable[[int, int], None]  # (concurrency, number of requests)


@dataclass
class _Collector:
    """What the current concurrency level has measured; survives a Ctrl-C that cancels the loop."""

    concurrency: int = 0
    t0: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: users take no new request, in-flight ones are cancelled
    task: asyncio.Task[None] | None = None  # the measuring task, cancelled on Ctrl-C
    loop: asyncio.AbstractEventLoop | None = None


@contextlib.contextmanager
def _ctrl_c(col: _Collector) -> Iterator[None]:
    """Ctrl-C marks the run interrupted and cancels the measuring task; a second one raises at once.

    asyncio.run's own handler only cancels the main task: a cancellation absorbed on the way (an HTTP
    client's cleanup, for one) would let the run finish as if no Ctrl-C had come. The flag is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread: asyncio.run's own behaviour applies
        return

    def on_sigint(_signum: int, _frame: Any) -> None:
        if col.interrupted:
            raise KeyboardInterrupt
        col.interrupted = True
        if col.task is not None and col.loop is not None:
            col.loop.call_soon_threadsafe(col.task.cancel)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _jobs(n: int, compare: bool) -> list[tuple[int, bool | None]]:
    """(prompt index, medusa); with compare, on/off interleaved and the order alternated per prompt."""
    if not compare:
        return [(i, None) for i in range(n)]
    out: list[tuple[int, bool | None]] = []
    for i in range(n):
        out += [(i, True), (i, False)] if i % 2 == 0 else [(i, False), (i, True)]
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _compare(
    records: list[RequestRecord], prompts: list[Prompt], concurrency: int, temperature: float
) -> dict[str, Any]:
    on = {r.index: r for r in records if r.medusa is True and r.ok}
    off = {r.index: r for r in records if r.medusa is False and r.ok}
    pairs = sorted(set(on) & set(off))
    mismatches = [
        {"index": i, "prompt": prompts[i].text[:120], "medusa": on[i].text[:300], "no_medusa": off[i].text[:300]}
        for i in pairs
        if on[i].text != off[i].text
    ]
    tps_on = [t for r in on.values() if (t := r.tokens_per_s) is not None]
    tps_off = [t for r in off.values() if (t := r.tokens_per_s) is not None]
    mean_on = sum(tps_on) / len(tps_on) if tps_on else None
    mean_off = sum(tps_off) / len(tps_off) if tps_off else None
    greedy = temperature == 0.0
    return {
        "concurrency": concurrency,
        "pairs": len(pairs),
        "speedup": mean_on / mean_off if mean_on and mean_off else None,
        "mean_output_tokens_per_s_per_user_medusa": mean_on,
        "mean_output_tokens_per_s_per_user_no_medusa": mean_off,
        "identical_outputs": (not mismatches and bool(pairs)) if greedy else None,
        "mismatches": mismatches if greedy else [],
    }


def _finalize(report: BenchReport, cfg: BenchConfig, prompts: list[Prompt], col: _Collector) -> None:
    duration = time.perf_counter() - col.t0
    modes: tuple[bool | None, ...] = (True, False) if cfg.compare_no_medusa else (None,)
    for m in modes:
        recs = [r for r in col.records if r.medusa == m]
        first = next((r.error for r in recs if r.error), None)
        report.runs.append(
            {
                "concurrency": col.concurrency,
                "medusa": m,
                "num_requests": len(recs),
                **compute_metrics(recs, duration),
                "first_error": first,
                # what each prompt's completion was, to compare engines' greedy outputs without keeping the text
                "output_sha256": {str(r.index): hashlib.sha256(r.text.encode()).hexdigest() for r in recs if r.ok},
                "requests": [r.to_json() for r in recs],
            }
        )
    if cfg.compare_no_medusa:
        report.comparisons.append(_compare(col.records, prompts, col.concurrency, cfg.temperature))
    col.records = []


def _add_spec_counters(run: dict[str, Any], counted: dict[str, Any]) -> None:
    """vLLM's speculative-decoding counters over a level. Where usage had no step count, vLLM's drafts are
    the decoding steps: tokens/step = (output tokens - 1 per request) / drafts, as for our server. (vLLM's
    own 1 + accepted/drafts also counts drafts accepted past max_tokens and then cut.)"""
    run["spec_decode"] = counted
    drafts = counted["num_drafts"]
    if run.get("tokens_per_step") is None and drafts > 0:
        run["total_decoding_steps"] = drafts
        run["tokens_per_step"] = (run["total_output_tokens"] - run["completed"]) / drafts


async def _send(
    client: Any, cfg: BenchConfig, model: str, prompt: Prompt, *, index: int, medusa: bool | None
) -> RequestRecord:
    """One timed request with the run's settings (warm-up and measured requests alike)."""
    return await stream_request(
        client,
        index=index,
        prompt=prompt.text,
        model=model,
        max_tokens=prompt.max_tokens or cfg.max_tokens,  # the dataset's own length, where it gives one
        temperature=cfg.temperature,
        endpoint=cfg.endpoint,
        medusa=medusa,
        ignore_eos=cfg.ignore_eos,
        timeout_s=cfg.request_timeout_s,
    )


async def _level(
    client: Any,
    cfg: BenchConfig,
    model: str,
    prompts: list[Prompt],
    col: _Collector,
    on_request: RequestCallback | None,
) -> None:
    jobs: Iterator[tuple[int, bool | None]] = iter(_jobs(len(prompts), cfg.compare_no_medusa))

    async def user() -> None:
        for idx, medusa in jobs:  # the iterator is shared: each user takes the next job
            if col.interrupted:
                return
            rec = await _send(client, cfg, model, prompts[idx], index=idx, medusa=medusa)
            col.records.append(rec)
            if on_request:
                on_request(rec)

    await asyncio.gather(*(user() for _ in range(col.concurrency)))


async def _measure_all(
    cfg: BenchConfig,
    url: str,
    model: str,
    prompts: list[Prompt],
    report: BenchReport,
    col: _Collector,
    on_level: LevelCallback | None,
    on_request: RequestCallback | None,
) -> None:
    col.task, col.loop = asyncio.current_task(), asyncio.get_running_loop()
    async with make_client(url, max(cfg.concurrency), cfg.request_timeout_s, cfg.api_key) as client:
        modes: tuple[bool | None, ...] = (True, False) if cfg.compare_no_medusa else (None,)
        for i in range(cfg.warmup):
            for m in modes:
                await _send(client, cfg, model, prompts[i % len(prompts)], index=-1, medusa=m)
        for c in cfg.concurrency:
            if col.interrupted:
                return
            col.concurrency, col.t0, col.records = c, time.perf_counter(), []
            before = await asyncio.to_thread(spec_counters.read, url)  # vLLM's counters, when it is vLLM
            if on_level:
                on_level(c, len(prompts) * len(modes))
            await _level(client, cfg, model, prompts, col, on_request)
            _finalize(report, cfg, prompts, col)
            if before is not None and not cfg.compare_no_medusa:  # the counters cannot tell Medusa on from off
                after = await asyncio.to_thread(spec_counters.read, url)
                if after is not None:
                    _add_spec_counters(report.runs[-1], after.minus(before))


def _measure(
    cfg: BenchConfig,
    url: str,
    prompts: list[Prompt],
    engine: dict[str, Any] | None,
    on_level: LevelCallback | None,
    on_request: RequestCallback | None,
) -> BenchReport:
    info = probe(url, api_key=cfg.api_key)
    model = cfg.served_model or info.model
    if not model:
        raise InvalidInputError(f"{url}/v1/models lists no model", hint="Pass --served-model NAME.")
    info.model = model
    # JSON-safe as it stands (the Python API hands to_json() to json.dumps without a default)
    conf = {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        for k, v in asdict(cfg).items()
        if k not in ("command", "api_key")
    }
    conf["api_key_sent"] = cfg.api_key is not None
    report = BenchReport(
        tool={"name": "medusa-trt", "version": __version__},
        server=info.to_json(),
        config={**conf, "input_len_unit": "tokens"},
        start_time=_now(),
        engine=engine,
        command=cfg.command if cfg.command is not None else list(sys.argv),
    )
    col = _Collector()
    try:
        with _ctrl_c(col):
            asyncio.run(_measure_all(cfg, url, model, prompts, report, col, on_level, on_request))
    except (KeyboardInterrupt, asyncio.CancelledError):
        col.interrupted = True
    if col.interrupted:  # also when a client library absorbed the cancellation and the run went on
        report.was_cancelled = True
        if col.records:  # the level Ctrl-C cut short (a finished level was finalized already)
            _finalize(report, cfg, prompts, col)
    report.end_time = _now()
    return report


def run_benchmark(
    cfg: BenchConfig, *, on_level: LevelCallback | None = None, on_request: RequestCallback | None = None
) -> BenchReport:
    """Measure the server (or start one for `cfg.engine`), then predict when `cfg.simulate` is set.

    A Ctrl-C during measurement returns the partial report with `was_cancelled=True`.
    """
    from medusa_trt.bench.simulate import check_simulation, simulate

    cfg.validate()
    tokenizer = None
    if cfg.input_len is not None:
        source = cfg.tokenizer or cfg.engine
        tokenizer = load_tokenizer(Path(source)) if source is not None else None
    prompts = draw_prompts(
        load_prompts(cfg.dataset), cfg.num_prompts, cfg.seed, cfg.input_len, tokenizer, shuffle=cfg.shuffle
    )
    if cfg.simulate:
        check_simulation(cfg.simulate, cfg.sim_model)  # a bad profile fails before minutes of measuring
    if cfg.engine is not None:
        engine = read_engine_provenance(Path(cfg.engine))
        with engine_server(Path(cfg.engine), cfg.server_start_timeout_s, cfg.api_key) as url:
            report = _measure(cfg, url, prompts, engine, on_level, on_request)
    else:
        assert cfg.url is not None
        report = _measure(cfg, cfg.url, prompts, None, on_level, on_request)
    if cfg.simulate:
        report.simulation = simulate(cfg.simulate, cfg.sim_model, report)
    return report
