"""Where a tool's TTFT and TPOT differ from ours: the tokens on the wire, and who used the CPU meanwhile.

    python benchmarks/ttft_wire.py --engine ENGINE_DIR --aiperf /path/to/venv/bin/aiperf [--rounds 2]

One server (`medusa-trt run ENGINE_DIR` on a free loopback port) is measured through a loopback TCP
proxy in this process that timestamps the bytes each way. For every streamed request it takes the
time from the request's arrival to the first chunk with non-empty text on its way back (the "wire
TTFT": what the server took, without either client's own overhead) and, over that same window, the CPU
time (``/proc/PID/task/*/schedstat``) of the client's processes (every process this script started
except the server), per process, and of the server. Clients, round after round at concurrency 1, the
same settings as ``bench_agreement.py``: ``medusa-trt bench``, aiperf as documented (``--concurrency 1``),
aiperf paced (``--request-rate RATE --arrival-pattern constant`` as well) and, with ``--guidellm``, guidellm,
all sending the same prompt file (``bench_agreement.write_prompts``) to a server that verifies the whole
tree at every step (``run --no-adapt``), so every client's requests take the same decoding steps. The
same for the decode window, from the first text chunk to the end of the stream: per token after the
first, the wire's TPOT (first to last text chunk over ``--max-tokens`` - 1) and the CPU the client's
processes and the server used. Prints one JSON document: per client and round the medians of its own
TTFT and TPOT, the wire's, and the CPU milliseconds in each window. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_agreement import aiperf_argv, guidellm_argv, ours_argv, write_prompts

TEXT = re.compile(rb'"text": ?"(?:[^"\\]|\\.)')  # a completion chunk whose text is not empty


def _ppids() -> dict[int, int]:
    out = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{p}/stat").read_text()
                out[int(p)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _tree(root: int, ppids: dict[int, int]) -> set[int]:
    """`root` and every process below it."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += kids.get(p, [])
    return out


def _cpu_ns(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return sum(
            int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in os.listdir(f"/proc/{pid}/task")
        )
    return 0


def _title(pid: int) -> str:
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="replace") for w in argv if w]
        if words and words[0].startswith("aiperf "):
            return re.sub(r"_[0-9a-f]{8}$", "", words[0])  # "aiperf worker_1a2b3c4d" -> "aiperf worker"
        return " ".join(Path(w).name if i == 0 else w for i, w in enumerate(words[:4]))[:48]
    return str(pid)


class WireProxy:
    """A loopback TCP proxy (its own thread and event loop) that measures each streamed request."""

    def __init__(self, upstream_port: int, server_pid: int, tokens: int) -> None:
        self.up, self.server_pid, self.tokens = upstream_port, server_pid, tokens
        self.rows: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def clients(self) -> list[int]:
        """Every process this script started but the server (and what the server started)."""
        ppids = _ppids()
        return sorted(_tree(os.getpid(), ppids) - _tree(self.server_pid, ppids) - {os.getpid()})

    def snapshot(self, pids: list[int]) -> dict[str, Any]:
        per = {p: _cpu_ns(p) for p in pids}
        return {"t": self.loop.time(), "per": per, "server": _cpu_ns(self.server_pid)}

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool, st: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError):
            while b := await r.read(65536):
                w.write(b)  # forward first, then measure
                if up and b.startswith(b"POST"):
                    st["pids"] = st.get("pids") or self.clients()
                    st["start"] = self.snapshot(st["pids"])
                elif not up and st.get("start") and TEXT.search(b):
                    st["first"] = self.snapshot(st["pids"])
                    st["last_text"] = st["first"]["t"]
                    self._row(st.pop("start"), st["first"])
                elif not up and st.get("first"):
                    if TEXT.search(b):
                        st["last_text"] = self.loop.time()
                    if b"[DONE]" in b:  # the decode window: first text to the stream's end
                        self._decode(st.pop("first"), st["last_text"], self.snapshot(st["pids"]))
        w.close()

    def _decode(self, a: dict[str, Any], last_text: float, b: dict[str, Any]) -> None:
        """Per token after the first (every request yields `tokens`, ignore_eos): the wire's TPOT (first to
        last text chunk, as guidellm and aiperf take it), and the CPU the clients and the server used."""
        n = self.tokens - 1
        client = sum(ns - a["per"].get(pid, ns) for pid, ns in b["per"].items()) / 1e6
        self.rows[-1] |= {
            "wire_tpot_ms": (last_text - a["t"]) * 1e3 / n,
            "client_cpu_ms_per_token": client / n,
            "server_cpu_ms_per_token": (b["server"] - a["server"]) / 1e6 / n,
        }

    def _row(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        per: dict[str, float] = {}
        for pid, ns in b["per"].items():
            name = _title(pid)
            per[name] = per.get(name, 0.0) + (ns - a["per"].get(pid, ns)) / 1e6
        self.rows.append(
            {
                "wire_ttft_ms": (b["t"] - a["t"]) * 1e3,
                "client_cpu_ms": sum(per.values()),
                "client_cpu_ms_by_process": per,
                "server_cpu_ms": (b["server"] - a["server"]) / 1e6,
            }
        )

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.up)
        for w in (cw, uw):  # as the server's and the clients' own sockets: no Nagle delay added
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st: dict[str, Any] = {}
        await asyncio.gather(self._pump(cr, uw, True, st), self._pump(ur, cw, False, st))

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        self.thread.start()
        srv = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, sock=self.sock), self.loop).result()
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            self.loop.call_soon_threadsafe(srv.close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()

    def take(self) -> list[dict[str, Any]]:
        rows, self.rows = self.rows, []
        return rows


def _run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _tool_figures(kind: str, out: Path) -> dict[str, list[float]]:
    """The tool's own TTFT and TPOT, per request in the order sent (guidellm: its medians only)."""
    if kind == "guidellm":  # its medians (the per-request layout is its own)
        metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
        return {
            "ttft": [metrics["time_to_first_token_ms"]["successful"]["median"]],
            "tpot": [metrics["inter_token_latency_ms"]["successful"]["median"]],
        }
    if kind == "ours":
        doc = json.loads(out.read_text())
        done = [q for run in doc["runs"] for q in run["requests"] if q["ok"]]
        return {"ttft": [q["ttft_ms"] for q in done], "tpot": [q["tpot_ms"] for q in done]}
    recs = [json.loads(x) for x in next(out.rglob("profile_export.jsonl")).read_text().splitlines()]
    recs = sorted((r for r in recs if r["metadata"]["benchmark_phase"] == "profiling"), key=_started)
    return {
        "ttft": [r["metrics"]["time_to_first_token"]["value"] for r in recs],
        "tpot": [r["metrics"]["inter_token_latency"]["value"] for r in recs],
    }


def _started(rec: dict[str, Any]) -> int:
    return int(rec["metadata"]["request_start_ns"])


def _summary(tool: dict[str, list[float]], rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    rows = rows[-n:]  # the measured requests come last (after warm-ups, validation requests)
    med = statistics.median
    names = {k for r in rows for k in r["client_cpu_ms_by_process"]}
    by = {k: round(med(r["client_cpu_ms_by_process"].get(k, 0.0) for r in rows), 2) for k in sorted(names)}
    # one request at a time: the tool's records and the proxy's rows are the same requests, in order
    paired = len(tool["ttft"]) == len(rows)

    def decode(key: str) -> float | None:
        xs = [r[key] for r in rows if key in r]
        return round(med(xs), 3) if xs else None

    return {
        "tool_ttft_ms": round(med(tool["ttft"]), 2),
        "tool_minus_wire_ms": round(med(t - r["wire_ttft_ms"] for t, r in zip(tool["ttft"], rows, strict=True)), 2)
        if paired
        else None,
        "wire_ttft_ms": round(med(r["wire_ttft_ms"] for r in rows), 2),
        "client_cpu_ms_in_window": round(med(r["client_cpu_ms"] for r in rows), 2),
        "server_cpu_ms_in_window": round(med(r["server_cpu_ms"] for r in rows), 2),
        "client_cpu_ms_by_process": {k: v for k, v in by.items() if v >= 0.05},
        # the decode window (first text to the end of the stream), per token after the first
        "tool_tpot_ms": round(med(tool["tpot"]), 3),
        "wire_tpot_ms": decode("wire_tpot_ms"),
        "client_cpu_ms_per_token": decode("client_cpu_ms_per_token"),
        "server_cpu_ms_per_token": decode("server_cpu_ms_per_token"),
        "requests": len(rows),
    }


def _server_pid(port: int) -> int:
    mark = f"--port\0{port}".encode()
    for p in os.listdir("/proc"):
        if p.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
                if b"medusa_trt\0run\0" in cmd and mark in cmd:
                    return int(p)
    raise SystemExit(f"no medusa_trt run process with --port {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--aiperf", required=True, help="the aiperf executable (its own venv)")
    ap.add_argument("--guidellm", help="the guidellm executable (its own venv), to measure it too")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="which prompts of the built-in set")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--paced-rate", type=float, default=50.0)
    a = ap.parse_args()
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    clients = ("medusa-trt bench", "aiperf", "aiperf (paced)", *(("guidellm",) if a.guidellm else ()))
    result: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    loads = []
    with (
        tempfile.TemporaryDirectory(prefix="ttft-wire-") as tmp,
        engine_server(a.engine, run_args=("--no-adapt",)) as url,  # the same steps for every client
    ):
        a.prompts = write_prompts(a, Path(tmp) / "prompts.jsonl")  # every client sends the same requests
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        port = int(url.rsplit(":", 1)[1])
        proxy = WireProxy(port, _server_pid(port), a.max_tokens)
        with proxy.serving() as purl:
            for r in range(a.rounds):
                loads.append(round(os.getloadavg()[0], 2))
                for c in clients:
                    out = Path(tmp) / f"{r}-{c.replace(' ', '_').replace('(', '').replace(')', '')}"
                    kind = {"medusa-trt bench": "ours", "guidellm": "guidellm"}.get(c, "aiperf")
                    if kind == "ours":
                        out = out.with_suffix(".json")
                        _run(ours_argv(purl, a, out))
                    elif kind == "guidellm":
                        out = out.with_suffix(".json")
                        _run(guidellm_argv(purl, model, a, out))
                    else:
                        _run(aiperf_argv(purl, model, a, out, paced=c.endswith("(paced)")))
                    result[c].append(_summary(_tool_figures(kind, out), proxy.take(), a.num_prompts))
    doc = {
        "load_average_at_each_round": loads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "settings": {k: getattr(a, k) for k in ("input_len", "max_tokens", "num_prompts", "rounds", "paced_rate")},
        "rounds": result,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
