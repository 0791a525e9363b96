"""What the server costs per streamed token: the same greedy generations in process and through `medusa-trt run`.

    python benchmarks/serve_overhead.py --engine DEMO_CACHE/engine [--src PATH]... [--rounds 9] [--json]

The comparison (the verdict): plain decoding of the same prompts, the same tokens, at the same torch thread
count, once in process (``engine.generate`` in a child interpreter) and once through the server (`medusa-trt
run ENGINE` on loopback, streamed ``/v1/completions`` read by a raw HTTP/1.1 client that costs a few
microseconds per chunk), interleaved request by request in each round. The thread count is the server's engine's
(``serve.worker.engine_threads``: one core fewer than the machine has, so 1 on 2 cores); `run --prompt` keeps
torch's default, which ``--default-threads`` adds as a row of its own. Each round gives one ratio, server /
in process; the verdict is their median against the target (>= 0.85: within 15%), with the spread beside it.

Rows: on the demo's engine (``medusa-trt demo`` builds it; its cache dir holds ``engine/``), the demo's bench
prompts (held-out stdlib code, as token ids), ``--tokens`` tokens each (ignore_eos), greedy, one request at a
time, plain and Medusa (the engine's tree, adaptive, after one warm-up pass on each side), in process, through
the server with the raw client, and with `medusa-trt bench`'s own client (httpx, an SSE and JSON parse per
chunk: what the demo's figures go through). A rate is 1 / mean TPOT over the requests (TPOT: ``(end - first
token) / (tokens - 1)``, the end being ``data: [DONE]`` through the server, the generation's last chunk in
process): the harmonic mean of the demo's per-request rates, which one request whose tokens arrive all at
once cannot inflate.

The in-process child and the server stay up for the whole run (loaded once); in each round, for each source
tree (``--src PATH``: put first on PYTHONPATH, e.g. an older commit's ``git archive COMMIT src | tar -x -C
DIR``; ``os.pathsep`` joins several), each mode runs every prompt on both sides back to back, which side
first alternating from prompt to prompt, so a change in load (seconds long on a shared machine) touches both
alike. It also reports the CPU milliseconds per token of the server process (with its engine process), of its event-loop thread alone,
of the client and of the in-process child, the server's above the in-process child's, whether every output is identical to the in-process plain one,
and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from serve_latency import _recv, _request, read_chunk

MODES = {"plain": False, "medusa": True}
TARGET = 0.85  # plain through the server at least this fraction of in process (within 15%)


# --- in process: a child interpreter that stays loaded, one pass per request on stdin ------------------------
def child(engine_dir: Path, prompts: list[list[int]], tokens: int) -> None:
    """The in-process side: answers each ``{"prompt": i, "medusa": bool, "threads": int}`` line with that
    request's rate, text and CPU seconds (``"prompt": null``: every prompt, the warm-up)."""
    import torch

    from medusa_trt.runtime import SamplingParams, load_engine

    default = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        from medusa_trt.serve.worker import engine_threads

        server = engine_threads(1, cores, default) or default
    except ImportError:  # a source tree from before the server set its engine thread's count
        server = default
    engine = load_engine(engine_dir)
    try:

        def one(ids: list[int], medusa: bool) -> dict[str, Any]:
            cpu0 = time.process_time()
            gen = engine.generate(ids, SamplingParams(max_tokens=tokens, ignore_eos=True), medusa=medusa)
            first, out = 0.0, []
            for chunk in gen:
                first = first or time.perf_counter()
                out.extend(chunk.token_ids)
            rate = (len(out) - 1) / (time.perf_counter() - first)  # 1/TPOT, as `bench`'s
            text = engine.tokenizer.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            return {"rate": rate, "text": text, "cpu_s": time.process_time() - cpu0}

        torch.set_num_threads(server)
        for ids in prompts:  # warm-up; the adaptive tree learns, as the server's does in its warm-up
            one(ids, True)
        _say(sys.stdout, {"server_threads": server, "default_threads": default})
        for line in sys.stdin:
            ask = json.loads(line)
            if torch.get_num_threads() != int(ask["threads"]):
                torch.set_num_threads(int(ask["threads"]))
            _say(sys.stdout, one(prompts[int(ask["prompt"])], bool(ask["medusa"])))
    finally:
        engine.close()


def _say(out: IO[str], doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc) + "\n")
    out.flush()


class InProcess:
    """The child interpreter of one source tree, loaded once."""

    def __init__(self, args: argparse.Namespace, src: str | None, prompts_file: Path) -> None:
        cmd = [sys.executable, __file__, "--engine", str(args.engine), "--child", str(prompts_file)]
        cmd += ["--tokens", str(args.tokens)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(src), bufsize=1
        )
        self.prompts, self.tokens = len(json.loads(prompts_file.read_text())), args.tokens
        hello = self._read()
        self.server_threads, self.default_threads = int(hello["server_threads"]), int(hello["default_threads"])

    def request(self, prompt: int, medusa: bool, threads: int) -> dict[str, Any]:
        """One generation of prompt number ``prompt``: its rate, text and CPU seconds."""
        assert self.proc.stdin is not None
        _say(self.proc.stdin, {"prompt": prompt, "medusa": medusa, "threads": threads})
        return self._read()

    def run(self, medusa: bool, threads: int) -> dict[str, Any]:
        """Every prompt in turn: a row."""
        return _row([self.request(i, medusa, threads) for i in range(self.prompts)], self.tokens)

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the in-process child ended ({self.proc.wait()}); its error is above")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _row(done: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    cpu = sum(d["cpu_s"] for d in done)
    return {
        "rates": [d["rate"] for d in done],
        "text": [d["text"] for d in done],
        "cpu_ms_per_token": 1e3 * cpu / (len(done) * tokens),
    }


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in src.split(os.pathsep))
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


def _timed_cpu(fn: Callable[[int], Any], arg: int) -> float:
    """Our own CPU seconds spent calling ``fn`` (kept out of the client's figure)."""
    t0 = time.process_time()
    fn(arg)
    return time.process_time() - t0


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


class Served:
    """`medusa-trt run ENGINE` from one source tree, started once, warmed up as the in-process side is."""

    def __init__(self, url: str, prompts: list[list[int]], tokens: int) -> None:
        self.url, self.port, self.prompts, self.tokens = url, int(url.rsplit(":", 1)[1]), prompts, tokens
        self.proc = _server_process(self.port)
        raw_pass(self.port, prompts[:2], 8, False)  # first requests: imports, caches
        raw_pass(self.port, prompts, tokens, True)  # the adaptive tree learns, as in process

    def run(self, client: str, medusa: bool, between: Callable[[int], Any] | None = None) -> dict[str, Any]:
        """Every prompt in turn through ``client`` ("raw" or "bench"): a row. With ``between``, the raw client
        calls it with each prompt's number before or after that prompt's request (alternately): the
        in-process side's turn, so that both sides meet the same moments of load."""
        (cpu0, loop0), mine0, spent = _cpu(self.proc), time.process_time(), 0.0
        if client == "raw":
            rates, text = [], []
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                buf = b""
                for i, ids in enumerate(self.prompts):
                    if between is not None and i % 2 == 0:
                        spent += _timed_cpu(between, i)
                    rate, one, buf = raw_stream(sock, self.port, buf, _body(ids, self.tokens, medusa))
                    rates.append(rate)
                    text.append(one)
                    if between is not None and i % 2 == 1:
                        spent += _timed_cpu(between, i)
        else:
            rates, text = bench_pass(self.url, self.prompts, self.tokens, medusa)
        (cpu1, loop1), n = _cpu(self.proc), len(self.prompts) * self.tokens
        return {
            "rates": rates,
            "text": text,
            "server_cpu_ms_per_token": 1e3 * (cpu1 - cpu0) / n,
            "loop_cpu_ms_per_token": 1e3 * (loop1 - loop0) / n,
            "client_cpu_ms_per_token": 1e3 * (time.process_time() - mine0 - spent) / n,
        }


@contextlib.contextmanager
def serving(engine: Path, src: str | None) -> Iterator[str]:
    """The server of one source tree (its PYTHONPATH set while it starts)."""
    from medusa_trt.bench.server import engine_server

    old = os.environ.get("PYTHONPATH")
    os.environ.update(_env(src))
    try:
        with engine_server(engine) as url:
            _restore(old)
            yield url
    finally:
        _restore(old)


def _restore(old: str | None) -> None:
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


def _cpu(proc: Any) -> tuple[float, float]:
    """CPU seconds of the server process with its children (the engine process, the chat template's renderer),
    and of its main thread alone (the event loop's: HTTP, text, JSON)."""
    import psutil

    if proc is None:
        return float("nan"), float("nan")
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that ended meanwhile
            t = p.cpu_times()
            total += t.user + t.system
    main = [th.user_time + th.system_time for th in proc.threads() if th.id == proc.pid]
    return total, float(main[0]) if main else float("nan")


# --- the rounds ---------------------------------------------------------------------------------------------
def one_round(inproc: InProcess, served: Served, default_threads: bool) -> dict[str, dict[str, Any]]:
    """Every row once; per mode, in process and the raw client interleaved request by request (each prompt
    on both sides back to back, which side first alternating)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, medusa in MODES.items():
        done: list[dict[str, Any]] = []

        def turn(i: int, medusa: bool = medusa, done: list[dict[str, Any]] = done) -> None:
            done.append(inproc.request(i, medusa, inproc.server_threads))

        rows[f"raw {name}"] = served.run("raw", medusa, turn)
        rows[f"in-process {name}"] = _row(done, inproc.tokens)
    for name, medusa in MODES.items():
        rows[f"bench {name}"] = served.run("bench", medusa)
        if default_threads:
            rows[f"in-process default-threads {name}"] = inproc.run(medusa, inproc.default_threads)
    load = os.getloadavg()[0]
    for row in rows.values():
        row["rate"] = statistics.harmonic_mean(row["rates"])  # 1 / mean TPOT
        row["load_1min"] = load
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="the demo's engine dir (DEMO_CACHE/engine)")
    ap.add_argument("--src", action="append", default=[], help="another source tree to run (repeatable)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--default-threads", action="store_true", help="also run in process at torch's default threads")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # the in-process side
    args = ap.parse_args()
    if args.child is not None:
        child(args.engine, json.loads(args.child.read_text()), args.tokens)
        return
    import tempfile

    from medusa_trt.demo.corpus import code_prompts, load_corpus
    from medusa_trt.runtime.api import load_tokenizer

    tokenizer = load_tokenizer(args.engine)
    texts = code_prompts(load_corpus().heldout_files[0::2], args.prompts)  # the demo's bench prompts
    prompts = [list(tokenizer(t)["input_ids"]) for t in texts]
    load_before = os.getloadavg()
    trees: list[str | None] = [None, *args.src]
    names = [str(s or "this tree") for s in trees]
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {n: [] for n in names}
    threads: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(prompts))
        sides: dict[str, tuple[InProcess, Served]] = {}
        for s, name in zip(trees, names, strict=True):
            inproc = InProcess(args, s, prompts_file)
            stack.callback(inproc.close)
            sides[name] = (inproc, Served(stack.enter_context(serving(args.engine, s)), prompts, args.tokens))
            threads[name] = (inproc.server_threads, inproc.default_threads)
        for r in range(args.rounds):
            for name in names:
                rows = one_round(*sides[name], args.default_threads)
                rounds[name].append(rows)
                if not args.json:
                    print(f"round {r + 1} {name}: " + _line(rows), file=sys.stderr)
    doc = {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
        "prompts": len(prompts),
        "tokens": args.tokens,
        "rounds": args.rounds,
        "target": TARGET,
        "trees": {n: summary(rounds[n], *threads[n]) for n in names},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        report(doc)


def _line(rows: dict[str, dict[str, Any]]) -> str:
    ratio = rows["raw plain"]["rate"] / rows["in-process plain"]["rate"]
    rates = ", ".join(f"{k} {v['rate']:.0f}" for k, v in rows.items())
    return f"{rates}; plain server/in-process {ratio:.2f} (load {os.getloadavg()[0]:.1f})"


def _spread(xs: list[float], digits: int = 3) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {
        "median": round(statistics.median(xs), digits),
        "q1": round(q[0], digits),
        "q3": round(q[2], digits),
        "min": round(min(xs), digits),
        "max": round(max(xs), digits),
    }


def summary(rounds: list[dict[str, dict[str, Any]]], server_threads: int, default_threads: int) -> dict[str, Any]:
    keys = list(rounds[0])
    reference = rounds[0]["in-process plain"]["text"]
    ratios = {
        f"{client} {mode}": [rows[f"{client} {mode}"]["rate"] / rows[f"in-process {mode}"]["rate"] for rows in rounds]
        for client in ("raw", "bench")
        for mode in MODES
    }
    plain = ratios["raw plain"]
    out: dict[str, Any] = {
        "threads": {"in_process_and_server_engine": server_threads, "torch_default": default_threads},
        "tokens_per_s_per_user": {k: _spread([rows[k]["rate"] for rows in rounds], 1) for k in keys},
        "server_vs_in_process": {k: _spread(v) for k, v in ratios.items()},
        "server_vs_in_process_per_round": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
        "load_1min_per_round": [round(rows["raw plain"]["load_1min"], 2) for rows in rounds],
        "cpu_ms_per_token": {
            "server": _cpu_medians(rounds, "server_cpu_ms_per_token"),
            "server_loop_thread": _cpu_medians(rounds, "loop_cpu_ms_per_token"),
            "client": _cpu_medians(rounds, "client_cpu_ms_per_token"),
            "in_process": _cpu_medians(rounds, "cpu_ms_per_token"),
            # what the server spends per token beyond the same generation in process (same rounds, same tokens)
            "server_above_in_process": {
                mode: round(
                    statistics.median(
                        rows[f"raw {mode}"]["server_cpu_ms_per_token"] - rows[f"in-process {mode}"]["cpu_ms_per_token"]
                        for rows in rounds
                    ),
                    3,
                )
                for mode in MODES
            },
        },
        "identical_outputs": all(row["text"] == reference for rows in rounds for row in rows.values()),
        "verdict": {
            "compares": (
                f"plain tokens/s/user through the server (raw client) / in process, {server_threads} torch "
                f"thread(s) on both, the same prompts and tokens, interleaved request by request in each round"
            ),
            "median": round(statistics.median(plain), 3),
            "rounds_at_target": sum(x >= TARGET for x in plain),
            "rounds": len(plain),
            "met": statistics.median(plain) >= TARGET,
        },
    }
    return out


def _cpu_medians(rounds: list[dict[str, dict[str, Any]]], field: str) -> dict[str, float]:
    return {
        k: round(statistics.median(rows[k][field] for rows in rounds), 3) for k in rounds[0] if field in rounds[0][k]
    }


def report(doc: dict[str, Any]) -> None:
    print(
        f"{doc['prompts']} prompts x {doc['tokens']} tokens, greedy, one request at a time; tokens/s/user "
        f"(1 / mean TPOT): median [min-max] of {doc['rounds']} rounds; {doc['cores']} cores"
    )
    for name, s in doc["trees"].items():
        th = s["threads"]
        print(f"{name} (in process and the server's engine at {th['in_process_and_server_engine']} thread(s)):")
        for key, v in s["tokens_per_s_per_user"].items():
            print(f"  {key:<36}{v['median']:>8.1f}  [{v['min']:.1f}-{v['max']:.1f}]")
        for key, v in s["server_vs_in_process"].items():
            client, mode = key.split()
            print(
                f"  {mode} through the server ({client} client) / in process: median {v['median']:.3f} "
                f"[{v['min']:.3f}-{v['max']:.3f}], quartiles {v['q1']:.3f}-{v['q3']:.3f}"
            )
        print(f"  per round, plain (raw): {s['server_vs_in_process_per_round']['raw plain']}")
        print(f"  load (1 min) per round: {s['load_1min_per_round']}")
        for who, cpu in s["cpu_ms_per_token"].items():
            print(f"  {who} CPU ms/token (median): {cpu}")
        print(f"  identical outputs: {s['identical_outputs']}")
        v = s["verdict"]
        print(
            f"  verdict: {v['compares']}: median {v['median']:.3f} over {v['rounds']} rounds "
            f"({v['rounds_at_target']} at >= {doc['target']}); target {doc['target']} "
            f"{'met' if v['met'] else 'NOT met'}"
        )
    print(f"load average {doc['load_average_before']} before, {doc['load_average_after']} after")


if __name__ == "__main__":
    main()
