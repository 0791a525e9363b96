"""Do `medusa-trt bench`, guidellm and aiperf report the same TTFT and TPOT against one server?

    python benchmarks/bench_agreement.py --engine ENGINE_DIR \\
        --guidellm /path/to/venv/bin/guidellm --aiperf /path/to/other-venv/bin/aiperf \\
        [--input-len 128] [--max-tokens 64] [--num-prompts 16] [--rounds 2]

One server (`medusa-trt run ENGINE_DIR` on a free loopback port) is measured by the three tools in turn,
round after round (so a change in the machine's load touches them alike), at concurrency 1, with the
same prompt and output lengths, greedy, ``ignore_eos`` so every request yields ``--max-tokens`` tokens,
and output tokens counted from the server's ``usage`` (aiperf: ``--use-server-token-count``; guidellm
reads ``usage`` by default). TPOT is (E2EL - TTFT) / (tokens - 1) in all three: guidellm calls it
``inter_token_latency_ms``, aiperf ``inter_token_latency``. Prints one JSON document: each tool's
median TTFT and TPOT per round, their medians, and each tool's difference from ours.
guidellm 0.8 and aiperf 0.13 need different dependencies: install each in its own venv.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def ours(url: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "medusa_trt", "bench", "--url", url, "--input-len", str(a.input_len)]
    argv += ["--max-tokens", str(a.max_tokens), "--tokenizer", str(a.engine), "--concurrency", "1"]
    argv += ["--num-prompts", str(a.num_prompts), "--endpoint", "completions", "--json-out", str(out), "--warmup", "2"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    level = _find(doc, "median_ttft_ms")
    return {"ttft_ms": level["median_ttft_ms"], "tpot_ms": level["median_tpot_ms"]}


def guidellm(url: str, model: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    argv = [
        a.guidellm,
        "run",
        "--backend",
        f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
    ]
    argv += ["--profile", "kind=synchronous", "--constraint", f"kind=max_requests,count={a.num_prompts}"]
    argv += ["--data", f"kind=synthetic_text,prompt_tokens={a.input_len},output_tokens={a.max_tokens}"]
    argv += ["--tokenizer", f"kind=huggingface_auto,model={a.engine}", "--output", f"kind=json,path={out}"]
    argv += ["--disable-console"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    return {
        "ttft_ms": metrics["time_to_first_token_ms"]["successful"]["median"],
        "tpot_ms": metrics["inter_token_latency_ms"]["successful"]["median"],
    }


def aiperf(url: str, model: str, a: argparse.Namespace, out: Path) -> dict[str, float]:
    argv = [a.aiperf, "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming"]
    argv += ["--tokenizer", str(a.engine), "--synthetic-input-tokens-mean", str(a.input_len)]
    argv += ["--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(a.max_tokens)]
    argv += ["--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true", "--extra-inputs", "temperature:0"]
    argv += ["--use-server-token-count", "--concurrency", "1", "--request-count", str(a.num_prompts)]
    argv += ["--warmup-request-count", "2", "--artifact-dir", str(out), "--ui-type", "none"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    doc = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    return {"ttft_ms": doc["time_to_first_token"]["p50"], "tpot_ms": doc["inter_token_latency"]["p50"]}


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
    a = ap.parse_args()
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    runs: dict[str, list[dict[str, float]]] = {"medusa-trt bench": [], "guidellm": [], "aiperf": []}
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp, engine_server(a.engine) as url:
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        for r in range(a.rounds):
            work = Path(tmp) / str(r)
            work.mkdir()
            runs["medusa-trt bench"].append(ours(url, a, work / "bench.json"))
            runs["guidellm"].append(guidellm(url, model, a, work / "guidellm.json"))
            runs["aiperf"].append(aiperf(url, model, a, work / "aiperf"))
    summary = {
        tool: {k: round(statistics.median(x[k] for x in rs), 3) for k in ("ttft_ms", "tpot_ms")}
        for tool, rs in runs.items()
    }
    base = summary["medusa-trt bench"]
    diff = {
        tool: {k: f"{(v[k] - base[k]) / base[k] * 100:+.1f}%" for k in v}
        for tool, v in summary.items()
        if tool != "medusa-trt bench"
    }
    doc = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: getattr(a, k) for k in ("input_len", "max_tokens", "num_prompts", "rounds")},
        "rounds": runs,
        "median": summary,
        "difference_from_ours": diff,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
