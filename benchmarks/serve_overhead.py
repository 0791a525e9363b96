"""What the server costs per streamed token: the same greedy generations in process and through `medusa-trt run`.

    python benchmarks/serve_overhead.py --engine DEMO_CACHE/engine [--src DIR]... [--rounds 3] [--json]

On the demo's engine (``medusa-trt demo`` builds it; its cache dir holds ``engine/``), the demo's bench prompts
(held-out stdlib code, as token ids), ``--tokens`` tokens each (ignore_eos), greedy, one request at a time:

- in process: ``engine.generate`` in a fresh interpreter, at torch's default threads (as `run --prompt`
  has them) and at one thread (what the server's engine thread gets on 2 cores: serve.worker.engine_threads);
- through the server: `medusa-trt run ENGINE` on loopback, streamed ``/v1/completions`` read by a raw
  HTTP/1.1 client (a few microseconds per chunk), and by `medusa-trt bench`'s own client (httpx, an SSE and
  JSON parse per chunk: what the demo's figures go through).

Each is plain and Medusa (the engine's tree, adaptive, after one warm-up pass), and every rate is the demo's:
per request ``(tokens - 1) / (end - first token)`` (1/TPOT; the end is ``data: [DONE]`` through the server,
the generation's last chunk in process), averaged over the requests. Rounds alternate in process and server,
each source tree in turn (``--src DIR``: another source tree, e.g. ``git archive COMMIT src | tar -x -C
DIR``), so a change in load touches them alike; each figure is the best of ``--rounds``. It also says the
CPU milliseconds per token of the server process and of the client (both on the same cores), whether every
output is identical to the in-process plain one, and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serve_latency import _recv, _request, read_chunk

MODES = {"plain": False, "medusa": True}


# --- in process (a child interpreter, so that --src trees and the server start alike) ----------------------
def inprocess(engine_dir: Path, prompts: list[list[int]], tokens: int) -> dict[str, Any]:
    """Both modes, one pass each after a warm-up: per-request rates and the outputs."""
    import torch

    from medusa_trt.runtime import SamplingParams, load_engine

    engine = load_engine(engine_dir)
    try:

        def one_pass(medusa: bool) -> tuple[list[float], list[list[int]]]:
            rates, outputs = [], []
            for ids in prompts:
                gen = engine.generate(ids, SamplingParams(max_tokens=tokens, ignore_eos=True), medusa=medusa)
                first, out = 0.0, []
                for chunk in gen:
                    first = first or time.perf_counter()
                    out.extend(chunk.token_ids)
                rates.append((len(out) - 1) / (time.perf_counter() - first))  # 1/TPOT, as `bench`'s
                outputs.append(out)
            return rates, outputs

        one_pass(True)  # warm-up; the adaptive tree learns, as the server's does in its warm-up
        doc: dict[str, Any] = {"threads": torch.get_num_threads()}
        for threads in (doc["threads"], 1):  # torch's default (as `run --prompt`), then one thread
            torch.set_num_threads(threads)
            for name, medusa in MODES.items():
                cpu0 = time.process_time()
                rates, outputs = one_pass(medusa)
                cpu = time.process_time() - cpu0
                text = [
                    engine.tokenizer.decode(o, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    for o in outputs
                ]
                key = name if threads == doc["threads"] else f"1-thread {name}"
                doc[key] = {"rates": rates, "text": text, "cpu_ms_per_token": 1e3 * cpu / (len(prompts) * tokens)}
        return doc
    finally:
        engine.close()


def run_inprocess(args: argparse.Namespace, src: str | None, prompts_file: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--engine", str(args.engine), "--child", str(prompts_file)]
    cmd += ["--tokens", str(args.tokens)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(src), check=False)
    if res.returncode != 0:
        raise SystemExit(f"in-process run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return doc


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return env


# --- through the server -------------------------------------------------------------------------------------
def _body(ids: list[int], tokens: int, medusa: bool) -> dict[str, Any]:
    return {
        "prompt": ids,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "medusa": medusa,
        "stream_options": {"include_usage": True},
    }


def raw_stream(sock: socket.socket, port: int, buf: bytes, body: dict[str, Any]) -> tuple[float, str, bytes]:
    """One streamed completion on a kept-alive connection: its rate, its text, the bytes left over."""
    sock.sendall(_request("POST", "/v1/completions", port, body))
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    _, buf = buf.split(b"\r\n\r\n", 1)
    times: list[float] = []
    done = 0.0
    parts: list[str] = []
    usage: dict[str, Any] = {}
    while True:  # chunked transfer: each chunk holds one or more whole SSE events
        chunk, buf = read_chunk(sock, buf)
        now = time.perf_counter()
        for event in chunk.split(b"\n\n"):
            if event == b"data: [DONE]":
                done = now
            if not event.startswith(b"data: {"):
                continue
            doc = json.loads(event[6:])
            if doc.get("usage"):
                usage = doc["usage"]
            for choice in doc["choices"]:
                if choice.get("text"):
                    times.append(now)
                    parts.append(choice["text"])
        if not chunk:
            break
    n = int(usage["completion_tokens"])
    # 1/TPOT as `bench` has it: first text to [DONE] (a server that falls behind and sends several steps in
    # one write would make first-to-last-text read too fast)
    return (n - 1) / (done - times[0]), "".join(parts), buf


def raw_pass(port: int, prompts: list[list[int]], tokens: int, medusa: bool) -> tuple[list[float], list[str]]:
    rates, texts = [], []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = b""
        for ids in prompts:
            rate, text, buf = raw_stream(sock, port, buf, _body(ids, tokens, medusa))
            rates.append(rate)
            texts.append(text)
    return rates, texts


def bench_pass(url: str, prompts: list[list[int]], tokens: int, medusa: bool) -> tuple[list[float], list[str]]:
    """`medusa-trt bench`'s client (the demo's): 1/TPOT per request, from the server's token counts."""
    from medusa_trt.bench.client import make_client, stream_request

    async def go() -> tuple[list[float], list[str]]:
        rates, texts = [], []
        async with make_client(url, 1, 300.0) as client:
            for i, ids in enumerate(prompts):
                rec = await stream_request(
                    client,
                    index=i,
                    prompt=ids,  # type: ignore[arg-type]  # a token-id prompt: the same tokens as in process
                    model="",
                    max_tokens=tokens,
                    endpoint="completions",
                    medusa=medusa,
                    ignore_eos=True,
                )
                if rec.error or rec.tokens_per_s is None:
                    raise SystemExit(f"bench client: {rec.error}")
                rates.append(rec.tokens_per_s)
                texts.append(rec.text)
        return rates, texts

    return asyncio.run(go())


def through_server(args: argparse.Namespace, src: str | None, prompts: list[list[int]]) -> dict[str, Any]:
    from medusa_trt.bench.server import engine_server

    old = os.environ.get("PYTHONPATH")
    os.environ.update(_env(src))
    try:
        with engine_server(args.engine) as url:
            port = int(url.rsplit(":", 1)[1])
            server = _server_process(port)
            raw_pass(port, prompts[:2], 8, False)  # warm-up
            raw_pass(port, prompts, args.tokens, True)  # the adaptive tree learns, as in process
            doc: dict[str, Any] = {}
            for client in ("raw", "bench"):
                for name, medusa in MODES.items():
                    cpu0, mine0 = _cpu(server), time.process_time()
                    if client == "raw":
                        rates, texts = raw_pass(port, prompts, args.tokens, medusa)
                    else:
                        rates, texts = bench_pass(url, prompts, args.tokens, medusa)
                    n = len(prompts) * args.tokens
                    doc[f"{client} {name}"] = {
                        "rates": rates,
                        "text": texts,
                        "server_cpu_ms_per_token": 1e3 * (_cpu(server) - cpu0) / n,
                        "client_cpu_ms_per_token": 1e3 * (time.process_time() - mine0) / n,
                    }
            return doc
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _server_process(port: int) -> Any:
    """The process listening on ``port`` (the server's own interpreter, under the CLI's supervisor)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _cpu(proc: Any) -> float:
    if proc is None:
        return float("nan")
    t = proc.cpu_times()
    return float(t.user + t.system)


# --- the report -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="the demo's engine dir (DEMO_CACHE/engine)")
    ap.add_argument("--src", action="append", default=[], help="another source tree to run (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # the in-process side
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(inprocess(args.engine, json.loads(args.child.read_text()), args.tokens)))
        return
    import tempfile

    from medusa_trt.demo.corpus import code_prompts, load_corpus
    from medusa_trt.runtime.api import load_tokenizer

    tokenizer = load_tokenizer(args.engine)
    texts = code_prompts(load_corpus().heldout_files[0::2], args.prompts)  # the demo's bench prompts
    prompts = [list(tokenizer(t)["input_ids"]) for t in texts]
    load_before = os.getloadavg()
    trees: list[str | None] = [None, *args.src]
    best: dict[str, dict[str, dict[str, Any]]] = {str(s or "this tree"): {} for s in trees}
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        for r in range(args.rounds):
            for s in trees:
                inproc = run_inprocess(args, s, prompts_file)
                threads = inproc.pop("threads")
                rows = {f"in-process {k}": v for k, v in inproc.items()}
                rows |= through_server(args, s, prompts)
                load = os.getloadavg()[0]
                for key, row in rows.items():
                    row["rate"] = statistics.mean(row["rates"])
                    row["load_1min"] = load
                    row["round"] = r
                    kept = best[str(s or "this tree")].get(key)
                    if kept is None or row["rate"] > kept["rate"]:
                        best[str(s or "this tree")][key] = row
                if not args.json:
                    print(f"round {r + 1} {s or 'this tree'}: " + _line(rows), file=sys.stderr)
    doc = {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
        "prompts": len(prompts),
        "tokens": args.tokens,
        "in_process_threads": threads,
        "trees": {name: summary(rows) for name, rows in best.items()},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        report(doc)


def _line(rows: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{k} {v['rate']:.0f}" for k, v in rows.items()) + f" (load {os.getloadavg()[0]:.1f})"


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    reference = rows["in-process plain"]["text"]
    out: dict[str, Any] = {
        "tokens_per_s_per_user": {k: round(v["rate"], 1) for k, v in rows.items()},
        "load_1min_of_best": {k: round(v["load_1min"], 2) for k, v in rows.items()},
        "server_cpu_ms_per_token": {
            k: round(v["server_cpu_ms_per_token"], 3) for k, v in rows.items() if "server_cpu_ms_per_token" in v
        },
        "client_cpu_ms_per_token": {
            k: round(v["client_cpu_ms_per_token"], 3) for k, v in rows.items() if "client_cpu_ms_per_token" in v
        },
        "in_process_cpu_ms_per_token": {
            k: round(v["cpu_ms_per_token"], 3) for k, v in rows.items() if "cpu_ms_per_token" in v
        },
        "identical_outputs": all(v["text"] == reference for v in rows.values()),
    }
    rate = out["tokens_per_s_per_user"]
    ip = rate["in-process plain"]
    out["server_vs_in_process_plain"] = {c: round(rate[f"{c} plain"] / ip, 3) for c in ("raw", "bench")}
    out["server_vs_in_process_medusa"] = {
        c: round(rate[f"{c} medusa"] / rate["in-process medusa"], 3) for c in ("raw", "bench")
    }
    out["speedup"] = {
        c: round(rate[f"{c} medusa"] / rate[f"{c} plain"], 3)
        for c in ("in-process", "in-process 1-thread", "raw", "bench")
    }
    return out


def report(doc: dict[str, Any]) -> None:
    print(
        f"{doc['prompts']} prompts x {doc['tokens']} tokens, greedy, one request at a time; tokens/s/user "
        f"(1/TPOT, mean over requests), best of rounds; {doc['cores']} cores"
    )
    for name, s in doc["trees"].items():
        rate = s["tokens_per_s_per_user"]
        print(f"{name}:")
        th = f"{doc['in_process_threads']} threads"
        print(f"  {'':<12}{'in process':>11}{'in process':>12}{'server, raw':>13}{'server, bench':>15}")
        print(f"  {'':<12}{th:>11}{'1 thread':>12}{'client':>13}{'client':>15}")
        for mode in MODES:
            print(
                f"  {mode:<12}{rate[f'in-process {mode}']:>11.1f}{rate[f'in-process 1-thread {mode}']:>12.1f}"
                f"{rate[f'raw {mode}']:>13.1f}{rate[f'bench {mode}']:>15.1f}"
            )
        sp = s["speedup"]
        print(
            f"  {'speedup':<12}{sp['in-process']:>10.2f}x{sp['in-process 1-thread']:>11.2f}x"
            f"{sp['raw']:>12.2f}x{sp['bench']:>14.2f}x"
        )
        r = s["server_vs_in_process_plain"]
        print(f"  plain through the server / in process: raw client {r['raw']:.2f}, bench client {r['bench']:.2f}")
        m = s["server_vs_in_process_medusa"]
        print(f"  Medusa through the server / in process: raw client {m['raw']:.2f}, bench client {m['bench']:.2f}")
        print(f"  server CPU ms/token: {s['server_cpu_ms_per_token']}")
        print(f"  client CPU ms/token: {s['client_cpu_ms_per_token']}")
        print(f"  identical outputs: {s['identical_outputs']}")
    print(f"load average {doc['load_average_before']} before, {doc['load_average_after']} after")


if __name__ == "__main__":
    main()
