"""Latency our server adds, seen by a raw HTTP/1.1 client on kept-alive connections (as SDKs keep them).

    python benchmarks/serve_latency.py --engine ENGINE_DIR [--src DIR]... [--rounds 5] [--requests 100]

Per server: GET /health over one kept-alive connection (and over a new connection each time, for
contrast), and the time to the first token of a streamed /v1/completions (max_tokens 8, greedy) on a
kept-alive connection. Each ``--src DIR`` serves from another source tree (an export of an older commit:
``git archive COMMIT src | tar -x -C DIR``); the servers run one at a time, round after round, so a
change in the machine's load touches them alike. Prints one JSON document (medians and p90 in ms, and
the load average). Before the listening socket was made IPPROTO_TCP, a kept-alive /health took about
40 ms (the body waited for the client's delayed ACK); the aim is a median under 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any


def _read_response(sock: socket.socket, buf: bytes, first_data: list[float] | None = None) -> bytes:
    """Read one HTTP response (Content-Length or chunked) from ``sock``; returns the bytes left over.

    With ``first_data``, appends the time the first SSE event arrived (the server sends no empty frame)."""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, buf = buf.split(b"\r\n\r\n", 1)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])}
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            buf += _recv(sock)
        return buf[n:]
    while True:  # chunked
        chunk, buf = read_chunk(sock, buf)
        if first_data is not None and not first_data and b"data: {" in chunk:  # frames carry text
            first_data.append(time.perf_counter())
        if not chunk:
            return buf


def read_chunk(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One chunk of a chunked HTTP body (``b""``: the last one) and the bytes left over after it."""
    while b"\r\n" not in buf:
        buf += _recv(sock)
    size_line, buf = buf.split(b"\r\n", 1)
    size = int(size_line, 16)
    while len(buf) < size + 2:
        buf += _recv(sock)
    return buf[:size], buf[size + 2 :]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def _request(method: str, path: str, port: int, body: dict[str, Any] | None = None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


def keepalive_health(port: int, n: int) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = b""
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(_request("GET", "/health", port))
            buf = _read_response(sock, buf)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def fresh_health(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request("GET", "/health", port))
            _read_response(sock, b"")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def first_token(port: int, n: int) -> list[float]:
    body = {"prompt": "def main():", "max_tokens": 8, "temperature": 0, "stream": True, "ignore_eos": True}
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = b""
        for _ in range(n):
            got: list[float] = []
            t0 = time.perf_counter()
            sock.sendall(_request("POST", "/v1/completions", port, body))
            buf = _read_response(sock, buf, got)
            out.append((got[0] - t0) * 1000)
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs), 3), "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 3)}


def measure(engine: Path, src: str | None, requests: int) -> dict[str, list[float]]:
    from medusa_trt.bench.server import engine_server

    old = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(Path(src).resolve())
    try:
        with engine_server(engine) as url:
            port = int(url.rsplit(":", 1)[1])
            first_token(port, 3)  # warm-up: the first forwards are slower
            return {
                "keepalive_health": keepalive_health(port, requests),
                "new_connection_health": fresh_health(port, requests),
                "keepalive_first_token": first_token(port, max(requests // 5, 5)),
            }
    finally:
        if src is not None:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="engine or converted checkpoint directory")
    ap.add_argument("--src", action="append", default=[], help="another source tree to serve from (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100, help="/health requests per round and kind")
    args = ap.parse_args()
    servers: list[str | None] = [None, *args.src]
    samples: dict[str, dict[str, list[float]]] = {str(s or "this tree"): {} for s in servers}
    for _ in range(args.rounds):
        for s in servers:
            for kind, xs in measure(args.engine, s, args.requests).items():
                samples[str(s or "this tree")].setdefault(kind, []).extend(xs)
    doc = {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "servers": {name: {kind: _stats(xs) for kind, xs in kinds.items()} for name, kinds in samples.items()},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
