"""Do `medusa-trt bench`, guidellm and aiperf report the same TTFT and TPOT against one server?

    python benchmarks/bench_agreement.py --engine ENGINE_DIR \\
        --guidellm /path/to/venv/bin/guidellm --aiperf /path/to/other-venv/bin/aiperf \\
        [--input-len 128] [--max-tokens 64] [--num-prompts 16] [--rounds 3] [--json-out FILE]

One server (`medusa-trt run ENGINE_DIR` on a free loopback port) is measured by the tools in turn, round
after round, in a different order each round (so a change in the machine's load touches them alike), at
concurrency 1. Every tool sends the same requests: one JSONL file (``write_prompts``: ``--num-prompts``
prompts of the built-in set, each cut or padded to ``--input-len`` tokens) that each reads in its order
(``bench --dataset FILE --disable-shuffle``, guidellm ``--data kind=json_file,path=FILE``, aiperf
``--input-file FILE --custom-dataset-type single_turn``), each line asking for ``--max-tokens`` tokens
with ``ignore_eos`` (guidellm sends it for a line with ``output_tokens_count``), greedy, no warm-up
requests, and output tokens counted from the server's ``usage`` (aiperf: ``--use-server-token-count``;
guidellm reads ``usage`` by default). TPOT is the time from the first to the last token over (tokens - 1)
in all three: guidellm calls it ``inter_token_latency_ms``, aiperf ``inter_token_latency`` (both up to the
last chunk with text; ours, as vLLM's benchmark, up to the end of the stream: on the demo's engine 0.1-6 ms
later, about 1% of TPOT at the median).

The server's ``/metrics``, read before and after each tool's run, show what it did for that tool:
requests, prompt and completion tokens per request (the same for every tool when they sent the same
requests) and tokens per decoding step: with Medusa on, TPOT is the step time over the tokens per step,
so TPOT agrees only where tokens/step does. ``step_ms`` (TPOT x tokens/step) is the time of one step.

Prints a table (medians over rounds, each tool's difference from ours) and one verdict line per metric:
TTFT and TPOT of guidellm and paced aiperf within ``--within`` % (15) of ours, and the same requests
for every run (from ``/metrics``); exits 1 when a verdict fails. ``--json-out`` keeps every round. Per
tool, it also prints in how many rounds the tool read above ours in the same round, and the median of
those differences; ``--pool JSON...`` prints the report over the rounds of earlier runs' ``--json-out``
files together, measuring nothing.
guidellm 0.8 and aiperf 0.13 need different dependencies: install each in its own venv.

Two more runs per round (``--no-diagnostics`` leaves them out; they are not in the verdict) explain
aiperf's TTFT. At ``--concurrency N`` without a request rate, aiperf 0.13 waits for a free slot in a
loop that yields to its event loop and tries again (``aiperf/timing/strategies/request_rate.py``,
``execute_phase``: ``try_issue_credit`` returns None, then ``yield_to_event_loop()``), so its
``timing_manager`` process keeps a core busy while a request is in flight: on a machine whose cores the
server also needs, the server computes the first token more slowly. Hence aiperf runs paced,
"aiperf (paced)": ``--request-rate RATE --arrival-pattern constant`` (``--paced-rate``, default 50/s);
it still sends one request at a time, and tries for a slot once per 1/RATE s instead of in a loop. The
diagnostics:
- "aiperf": the same aiperf command without pacing;
- "ours + 1 busy core": ``medusa-trt bench`` beside a process that keeps one core busy, which is what
  aiperf's loop costs the server.
The aiperf timing_manager's CPU use (share of one core, read from /proc while it runs) is kept per run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def write_prompts(a: argparse.Namespace, path: Path) -> Path:
    """The one prompt file every tool reads: ``--num-prompts`` prompts of the built-in set, each cut or padded
    to ``--input-len`` tokens with the engine's tokenizer, and each asking for ``--max-tokens`` tokens in the
    words of each tool: ``text`` (read by all three), ``output_tokens_count`` (guidellm: it then sends
    ``max_tokens``, ``ignore_eos: true`` and ``stop: null``), ``output_length`` (aiperf's ``single_turn``) and
    ``output_tokens`` (vLLM's custom dataset, and ours)."""
    from medusa_trt.bench.datasets import BUILTIN, draw_prompts, load_prompts, load_tokenizer

    prompts = draw_prompts(load_prompts(BUILTIN), a.num_prompts, a.seed, a.input_len, load_tokenizer(a.engine))
    n = a.max_tokens
    rows = [{"text": p.text, "output_tokens_count": n, "output_length": n, "output_tokens": n} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ours_argv(url: str, a: argparse.Namespace, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "medusa_trt", "bench", "--url", url, "--dataset", str(a.prompts)]
    argv += ["--disable-shuffle", "--max-tokens", str(a.max_tokens), "--concurrency", "1"]
    argv += ["--num-prompts", str(a.num_prompts), "--endpoint", "completions", "--json-out", str(out), "--warmup", "0"]
    return argv


TOOL_TIMEOUT_S = 900  # one tool's run; far above what 16 requests take, so that nothing hangs unattended


def run_tool(argv: list[str], out: Path) -> None:
    """Run one tool, its output to OUT.log; a failure stops the script with the log's last lines."""
    log = out.with_name(out.name + ".log")
    with log.open("wb") as f:
        try:
            code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) or "(no output)"
        why = f"exit {code}" if code is not None else f"no end after {TOOL_TIMEOUT_S} s"
        raise SystemExit(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed ({why}):\n{tail}")


def ours(url: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    run_tool(ours_argv(url, a, out), out)
    doc = json.loads(out.read_text())
    level = _find(doc, "median_ttft_ms")
    return {"ttft_ms": level["median_ttft_ms"], "tpot_ms": level["median_tpot_ms"]}


def guidellm_argv(url: str, model: str, a: argparse.Namespace, out: Path) -> list[str]:
    argv = [
        a.guidellm,
        "run",
        "--backend",
        # greedy like the others: without a temperature the server samples at 1.0 (OpenAI's default), where
        # adaptive speculation keeps other statistics and TPOT is another quantity
        f"kind=openai_http,target={url},model={model},request_format=/v1/completions,extras.body.temperature=0",
    ]
    argv += ["--profile", "kind=synchronous", "--constraint", f"kind=max_requests,count={a.num_prompts}"]
    argv += ["--data", f"kind=json_file,path={a.prompts}"]  # in file order (its data loader's shuffle is off)
    argv += ["--tokenizer", f"kind=huggingface_auto,model={a.engine}", "--output", f"kind=json,path={out}"]
    argv += ["--disable-console"]
    return argv


def guidellm(url: str, model: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    run_tool(guidellm_argv(url, model, a, out), out)
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    return {
        "ttft_ms": metrics["time_to_first_token_ms"]["successful"]["median"],
        "tpot_ms": metrics["inter_token_latency_ms"]["successful"]["median"],
    }


def ours_beside_busy_core(url: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    """`medusa-trt bench` while another process keeps one core busy (as aiperf's slot loop does)."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return ours(url, a, out)
    finally:
        spin.kill()
        spin.wait()


def aiperf_argv(url: str, model: str, a: argparse.Namespace, out: Path, paced: bool = False) -> list[str]:
    argv = [a.aiperf, "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming"]
    argv += ["--tokenizer", str(a.engine), "--input-file", str(a.prompts), "--custom-dataset-type", "single_turn"]
    argv += ["--dataset-sampling-strategy", "sequential", "--extra-inputs", "ignore_eos:true"]
    argv += ["--extra-inputs", "temperature:0", "--use-server-token-count", "--concurrency", "1"]
    argv += ["--request-count", str(a.num_prompts), "--artifact-dir", str(out), "--ui-type", "none"]
    if paced:  # still one request at a time; a slot is tried once per 1/rate s instead of in a loop
        argv += ["--request-rate", str(a.paced_rate), "--arrival-pattern", "constant"]
    return argv


def aiperf(url: str, model: str, a: argparse.Namespace, out: Path, paced: bool = False) -> dict[str, Any]:
    argv = aiperf_argv(url, model, a, out, paced)
    with timing_manager_cpu() as cpu:
        run_tool(argv, out)
    doc = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    return {
        "ttft_ms": doc["time_to_first_token"]["p50"],
        "tpot_ms": doc["inter_token_latency"]["p50"],
        "timing_manager_core_share": cpu["share"],
    }


@contextlib.contextmanager
def timing_manager_cpu(period_s: float = 0.25) -> Iterator[dict[str, float | None]]:
    """The CPU time of aiperf's timing_manager process (its title is "aiperf timing_manager") over the
    time it was seen alive, as a share of one core: /proc/PID/task/*/schedstat, sampled every period_s."""
    seen: dict[int, list[float]] = {}  # pid -> [first t, first ns, last t, last ns]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period_s):
            for pid in _pids_titled(b"aiperf timing_manager"):
                ns = _cpu_ns(pid)
                if ns is not None:
                    t = time.monotonic()
                    seen.setdefault(pid, [t, ns, t, ns])[2:] = [t, ns]

    result: dict[str, float | None] = {"share": None}  # None: never seen
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield result
    finally:
        stop.set()
        th.join()
        span = sum(v[2] - v[0] for v in seen.values())
        if span > 0:
            result["share"] = round(sum(v[3] - v[1] for v in seen.values()) / 1e9 / span, 3)


def _pids_titled(title: bytes) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{p}/cmdline").read_bytes().startswith(title):
                    out.append(int(p))
    return out


def _cpu_ns(pid: int) -> int | None:
    """Nanoseconds on a CPU, all threads of `pid` (the first field of schedstat)."""
    try:
        return sum(
            int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in os.listdir(f"/proc/{pid}/task")
        )
    except (OSError, ValueError):
        return None


def measure(name: str, url: str, model: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    if name == "medusa-trt bench":
        return ours(url, a, work / "bench.json")
    if name == "guidellm":
        return guidellm(url, model, a, work / "guidellm.json")
    if name == "ours + 1 busy core":
        return ours_beside_busy_core(url, a, work / "bench-busy.json")
    paced = name == "aiperf (paced)"
    return aiperf(url, model, a, work / ("aiperf-paced" if paced else "aiperf"), paced)


def warm_up(url: str, model: str, a: argparse.Namespace, n: int = 4) -> None:
    """A few of the requests, untimed, before the first round: the tools themselves send no warm-up
    requests (so that each one's run is exactly the file's requests in the server's counts), and a fresh
    server's first requests are slow."""
    import httpx

    for line in a.prompts.read_text(encoding="utf-8").splitlines()[:n]:
        body = {"model": model, "prompt": json.loads(line)["text"], "max_tokens": a.max_tokens}
        body |= {"temperature": 0, "ignore_eos": True}
        httpx.post(f"{url}/v1/completions", json=body, timeout=300).raise_for_status()


def server_counts(url: str) -> dict[str, float]:
    """What the server counted so far (its /metrics, all series summed): generations, prompt and completion
    tokens, decoding steps, and the tokens-per-step histogram's sum (one observation per generation)."""
    import httpx

    want = {
        "medusa_trt_tokens_per_step_count": "generations",
        "medusa_trt_tokens_per_step_sum": "tokens_per_step_sum",
        "medusa_trt_decoding_steps_total": "steps",
    }
    out = dict.fromkeys([*want.values(), "prompt_tokens", "completion_tokens"], 0.0)
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.split("{", 1)[0].split(" ", 1)[0], float(line.rsplit(" ", 1)[1])
        if name in want:
            out[want[name]] += value
        elif name == "medusa_trt_tokens_total":
            out["prompt_tokens" if 'kind="prompt"' in line else "completion_tokens"] += value
    return out


def served(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """A tool's run as the server saw it: requests, tokens per request, and tokens per step (with Medusa on,
    TPOT follows it)."""
    d = {k: after[k] - before[k] for k in after}
    n = d["generations"]
    return {
        "requests": int(n),
        "prompt_tokens_per_request": round(d["prompt_tokens"] / n, 2) if n else None,
        "completion_tokens_per_request": round(d["completion_tokens"] / n, 2) if n else None,
        "steps_per_request": round(d["steps"] / n, 2) if n else None,
        "tokens_per_step": round(d["tokens_per_step_sum"] / n, 3) if n else None,
    }


def _median(xs: Sequence[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return round(statistics.median(known), 3) if known else None


def _find(doc: Any, key: str) -> dict[str, Any]:
    """The first mapping in ``doc`` (nested anywhere) that has ``key``."""
    if isinstance(doc, dict):
        if key in doc:
            return doc
        items = list(doc.values())
    elif isinstance(doc, list):
        items = doc
    else:
        items = []
    for v in items:
        try:
            return _find(v, key)
        except KeyError:
            continue
    raise KeyError(key)


TOOLS = ("medusa-trt bench", "guidellm", "aiperf (paced)")  # the documented command lines, in the verdict
DIAGNOSTIC = ("aiperf", "ours + 1 busy core")  # why aiperf without pacing reads higher; not in the verdict
SERVED_KEYS = ("requests", "prompt_tokens_per_request", "completion_tokens_per_request", "steps_per_request")


def summarize(runs: dict[str, list[dict[str, Any]]], within_pct: float, adapt: bool) -> dict[str, Any]:
    """Medians over rounds per tool, each tool's difference from ours, and the verdicts."""
    summary = {tool: {k: _median([x.get(k) for x in rs]) for k in rs[0]} for tool, rs in runs.items() if rs}
    base = summary["medusa-trt bench"]
    diff = {
        tool: {k: _pct(v[k], base[k]) for k in ("ttft_ms", "tpot_ms", "tokens_per_step", "step_ms")}
        for tool, v in summary.items()
        if tool != "medusa-trt bench"
    }
    verdicts = {}
    for metric, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms")):
        got = {t: diff[t][key] for t in TOOLS[1:] if t in diff}
        ok = bool(got) and all(v is not None and abs(v) <= within_pct for v in got.values())
        verdicts[metric] = {"within": ok, "differences_pct": got}
    # the same requests: every run of every tool, as the server counted them, equal to ours; with the
    # whole tree verified at every step (no adaptation) the same greedy requests also take the same steps
    keys = SERVED_KEYS[:-1] if adapt else SERVED_KEYS
    ours_served = {k: runs["medusa-trt bench"][0][k] for k in keys}
    odd = [
        (tool, r, {k: x[k] for k in keys})
        for tool, rs in runs.items()
        for r, x in enumerate(rs)
        if {k: x[k] for k in keys} != ours_served
    ]
    verdicts["same requests"] = {"within": not odd, "each run": ours_served, "differing": odd}
    return {"median": summary, "difference_from_ours_pct": diff, "verdict": verdicts, "by_round": by_round(runs)}


def by_round(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each tool against ours in the same round (a minute apart at most, so slow changes in the machine's
    load touch both): in how many rounds it read above ours, and the median of its differences."""
    ours = runs["medusa-trt bench"]
    out: dict[str, dict[str, Any]] = {}
    for tool, rs in runs.items():
        if tool == "medusa-trt bench":
            continue
        for key in ("ttft_ms", "tpot_ms"):
            d = [p for x, o in zip(rs, ours, strict=True) if (p := _pct(x[key], o[key])) is not None]
            out.setdefault(tool, {})[key] = {
                "rounds": len(d),
                "above_ours": sum(v > 0 for v in d),
                "median_pct": _median(d),
            }
    return out


def _pct(v: float | None, base: float | None) -> float | None:
    return round((v - base) / base * 100, 1) if v is not None and base else None


def report_lines(doc: dict[str, Any], within_pct: float) -> list[str]:
    """The table (medians over rounds; % from ours) and one verdict line per metric."""
    med, diff, verdict = doc["median"], doc["difference_from_ours_pct"], doc["verdict"]
    cols = ("ttft_ms", "tpot_ms", "tokens_per_step", "step_ms")
    lines = [f"{'medians over rounds':<20}" + "".join(f"{c:>20}" for c in cols)]
    for tool, v in med.items():
        cells = []
        for c in cols:
            d = diff.get(tool, {}).get(c)
            cells.append(f"{_fmt(v[c]):>9}" + (f" ({d:+6.1f}%)" if d is not None else " " * 10))
        note = "  (diagnostic, not in the verdict)" if tool in DIAGNOSTIC else ""
        lines.append(f"{tool:<20}" + "".join(f"{c:>20}" for c in cells) + note)
    loads = ", ".join(f"{x:.2f}" for x in doc["load_average_at_each_round"])
    lines.append(f"load average at each round: {loads}; at the end: {doc['load_average'][0]:.2f} ({doc['cpus']} CPUs)")
    for metric in ("TTFT", "TPOT"):
        v = verdict[metric]
        parts = ", ".join(f"{t} {d:+.1f}%" if d is not None else f"{t} n/a" for t, d in v["differences_pct"].items())
        word = "within" if v["within"] else "NOT within"
        lines.append(f"verdict {metric}: {word} {within_pct:g}% of ours ({parts})")
    for tool, r in doc["by_round"].items():
        rounds = [
            f"{m} above ours in {x['above_ours']} of {x['rounds']} rounds (median {x['median_pct']:+.1f}%)"
            for m, x in (("TTFT", r["ttft_ms"]), ("TPOT", r["tpot_ms"]))
            if x["rounds"]
        ]
        lines.append(f"round by round, {tool}: " + "; ".join(rounds))
    same = verdict["same requests"]
    e = same["each run"]
    if same["within"]:
        steps = f", {e['steps_per_request']} decoding steps" if "steps_per_request" in e else ""
        lines.append(
            f"verdict same requests: yes, every run of every tool: {e['requests']} requests, "
            f"{e['prompt_tokens_per_request']} prompt and {e['completion_tokens_per_request']} completion tokens"
            f"{steps} each (server's /metrics)"
        )
    else:
        lines.append(f"verdict same requests: NO, ours {e}; differing: {same['differing']}")
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def pool(paths: list[Path], within_pct: float) -> None:
    """The report over the rounds of several runs (their --json-out files) taken together."""
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    adapt = {bool(d["settings"].get("adapt")) for d in docs}
    if len(adapt) > 1:
        raise SystemExit("--pool: runs with and without --adapt do not pool")
    tools = [t for t in docs[0]["rounds"] if all(t in d["rounds"] for d in docs)]
    runs = {t: [x for d in docs for x in d["rounds"][t]] for t in tools}
    doc = {
        "load_average_at_each_round": [x for d in docs for x in d["load_average_at_each_round"]],
        "load_average": docs[-1]["load_average"],
        "cpus": docs[-1]["cpus"],
        **summarize(runs, within_pct, adapt.pop()),
    }
    print(f"{len(docs)} runs pooled, {len(runs['medusa-trt bench'])} rounds")
    print("\n".join(report_lines(doc, within_pct)))
    sys.exit(0 if all(v["within"] for v in doc["verdict"].values()) else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="the engine directory to serve (required unless --pool)")
    ap.add_argument("--guidellm", help="the guidellm executable (its own venv; required unless --pool)")
    ap.add_argument("--aiperf", help="the aiperf executable (its own venv; required unless --pool)")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="which prompts of the built-in set")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paced-rate", type=float, default=50.0, help="aiperf --request-rate of the paced run")
    ap.add_argument("--within", type=float, default=15.0, help="the verdict's bound, in %% of ours")
    ap.add_argument("--no-diagnostics", action="store_true", help="skip aiperf unpaced and ours + 1 busy core")
    ap.add_argument(
        "--adapt",
        action="store_true",
        help="serve with adaptive speculation (run's default): the subtree then follows each run's step times",
    )
    ap.add_argument("--json-out", type=Path, help="also write every round's figures here (JSON)")
    ap.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: pool the rounds of earlier --json-out files and print their report",
    )
    a = ap.parse_args()
    if a.pool:
        pool(a.pool, a.within)
        return
    if not (a.engine and a.guidellm and a.aiperf):
        ap.error("--engine, --guidellm and --aiperf are required (unless --pool)")
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    names = TOOLS + (() if a.no_diagnostics else DIAGNOSTIC)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    loads: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp,
        engine_server(a.engine, run_args=() if a.adapt else ("--no-adapt",)) as url,
    ):
        a.prompts = write_prompts(a, Path(tmp) / "prompts.jsonl")
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        warm_up(url, model, a)
        for r in range(a.rounds):
            work = Path(tmp) / str(r)
            work.mkdir()
            loads.append(os.getloadavg()[0])
            # a different order each round: a burst of load from elsewhere does not always hit the same tools
            for name in names[r % len(names) :] + names[: r % len(names)]:
                before = server_counts(url)
                result = measure(name, url, model, a, work)
                result.update(served(before, server_counts(url)))
                # the time of one decoding step: TPOT with the tokens per step taken out
                tps = result["tokens_per_step"]
                result["step_ms"] = round(result["tpot_ms"] * tps, 3) if tps and result["tpot_ms"] else None
                runs[name].append(result)
    doc = {
        "load_average_at_each_round": [round(x, 2) for x in loads],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "settings": {
            k: getattr(a, k)
            for k in ("input_len", "max_tokens", "num_prompts", "seed", "rounds", "paced_rate", "adapt")
        },
        "rounds": runs,
        **summarize(runs, a.within, a.adapt),
    }
    if a.json_out is not None:
        a.json_out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print("\n".join(report_lines(doc, a.within)))
    sys.exit(0 if all(v["within"] for v in doc["verdict"].values()) else 1)


if __name__ == "__main__":
    main()
