"""Do `medusa-trt bench`, guidellm and aiperf report the same TTFT and TPOT against one server?

    python benchmarks/bench_agreement.py --engine ENGINE_DIR \\
        --guidellm /path/to/venv/bin/guidellm --aiperf /path/to/other-venv/bin/aiperf \\
        [--input-len 128] [--max-tokens 64] [--num-prompts 16] [--rounds 2]

One server (`medusa-trt run ENGINE_DIR` on a free loopback port) is measured by the three tools in turn,
round after round, in a different order each round (so a change in the machine's load touches them alike), at concurrency 1, with the
same prompt and output lengths, greedy, ``ignore_eos`` so every request yields ``--max-tokens`` tokens,
and output tokens counted from the server's ``usage`` (aiperf: ``--use-server-token-count``; guidellm
reads ``usage`` by default). TPOT is (E2EL - TTFT) / (tokens - 1) in all three: guidellm calls it
``inter_token_latency_ms``, aiperf ``inter_token_latency``. Prints one JSON document: each tool's
median TTFT and TPOT per round, their medians, and each tool's difference from ours, and, from the server's
``/metrics``, the tokens per step each tool's requests got: with Medusa on, TPOT follows tokens/step, which
each tool's own (synthetic) prompts decide, so a TPOT difference comes with its tokens/step difference; ``step_ms`` (TPOT x tokens/step, the time of one
decoding step) compares the tools with that taken out.
guidellm 0.8 and aiperf 0.13 need different dependencies: install each in its own venv.

Two more runs per round explain aiperf's TTFT. At ``--concurrency N`` without a request rate, aiperf 0.13
waits for a free slot in a loop that yields to its event loop and tries again
(``aiperf/timing/strategies/request_rate.py``, ``execute_phase``: ``try_issue_credit`` returns None, then
``yield_to_event_loop()``), so its ``timing_manager`` process keeps a core busy while a request is in
flight: on a machine whose cores the server also needs, the server computes the first token more slowly.
- "aiperf (paced)": the same aiperf command with ``--request-rate RATE --arrival-pattern constant``
  (``--paced-rate``, default 50/s): it still sends one request at a time, and tries for a slot once
  per 1/RATE s instead of in a loop;
- "ours + 1 busy core": ``medusa-trt bench`` beside a process that keeps one core busy, which is what
  aiperf's loop costs the server.
The aiperf timing_manager's CPU use (share of one core, read from /proc while it runs) is reported per run.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ours_argv(url: str, a: argparse.Namespace, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "medusa_trt", "bench", "--url", url, "--input-len", str(a.input_len)]
    argv += ["--max-tokens", str(a.max_tokens), "--tokenizer", str(a.engine), "--concurrency", "1"]
    argv += ["--num-prompts", str(a.num_prompts), "--endpoint", "completions", "--json-out", str(out), "--warmup", "2"]
    return argv


def ours(url: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    subprocess.run(ours_argv(url, a, out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    argv += ["--data", f"kind=synthetic_text,prompt_tokens={a.input_len},output_tokens={a.max_tokens}"]
    argv += ["--tokenizer", f"kind=huggingface_auto,model={a.engine}", "--output", f"kind=json,path={out}"]
    argv += ["--disable-console"]
    return argv


def guidellm(url: str, model: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    argv = guidellm_argv(url, model, a, out)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    argv += ["--tokenizer", str(a.engine), "--synthetic-input-tokens-mean", str(a.input_len)]
    argv += ["--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(a.max_tokens)]
    argv += ["--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--extra-inputs", "temperature:0"]
    argv += ["--use-server-token-count", "--concurrency", "1", "--request-count", str(a.num_prompts)]
    argv += ["--warmup-request-count", "2", "--artifact-dir", str(out), "--ui-type", "none"]
    if paced:  # still one request at a time; a slot is tried once per 1/rate s instead of in a loop
        argv += ["--request-rate", str(a.paced_rate), "--arrival-pattern", "constant"]
    return argv


def aiperf(url: str, model: str, a: argparse.Namespace, out: Path, paced: bool = False) -> dict[str, Any]:
    argv = aiperf_argv(url, model, a, out, paced)
    with timing_manager_cpu() as cpu:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def tokens_per_step(url: str) -> tuple[float, float]:
    """The server's tokens-per-step histogram so far: (sum, count) over its series, one observation per
    generation. With Medusa on, TPOT follows tokens/step, which each tool's own prompts decide."""
    import httpx

    total = [0.0, 0.0]
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for i, suffix in enumerate(("_sum", "_count")):
            if name == f"medusa_trt_tokens_per_step{suffix}":
                total[i] += float(line.rsplit(" ", 1)[1])
    return total[0], total[1]


def _median(xs: list[float | None]) -> float | None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--guidellm", required=True, help="the guidellm executable (its own venv)")
    ap.add_argument("--aiperf", required=True, help="the aiperf executable (its own venv)")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--paced-rate", type=float, default=50.0, help="aiperf --request-rate of the paced run")
    a = ap.parse_args()
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    names = ("medusa-trt bench", "guidellm", "aiperf", "aiperf (paced)", "ours + 1 busy core")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    loads: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp,
        engine_server(a.engine) as url,
    ):
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        for r in range(a.rounds):
            work = Path(tmp) / str(r)
            work.mkdir()
            loads.append(os.getloadavg()[0])
            # a different order each round: a burst of load from elsewhere does not always hit the same tools
            for name in names[r % len(names) :] + names[: r % len(names)]:
                before = tokens_per_step(url)
                result = measure(name, url, model, a, work)
                after = tokens_per_step(url)
                n = after[1] - before[1]
                result["tokens_per_step"] = round((after[0] - before[0]) / n, 3) if n else None
                # the time of one decoding step: TPOT with each tool's own acceptance taken out
                tps = result["tokens_per_step"]
                result["step_ms"] = round(result["tpot_ms"] * tps, 3) if tps and result["tpot_ms"] else None
                runs[name].append(result)
    summary = {tool: {k: _median([x[k] for x in rs]) for k in rs[0]} for tool, rs in runs.items()}
    base = summary["medusa-trt bench"]
    diff = {
        tool: {k: f"{(v[k] - base[k]) / base[k] * 100:+.1f}%" for k in ("ttft_ms", "tpot_ms", "step_ms")}
        for tool, v in summary.items()
        if tool != "medusa-trt bench"
    }
    doc = {
        "load_average_at_each_round": [round(x, 2) for x in loads],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "settings": {k: getattr(a, k) for k in ("input_len", "max_tokens", "num_prompts", "rounds", "paced_rate")},
        "rounds": runs,
        "median": summary,
        "difference_from_ours": diff,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
