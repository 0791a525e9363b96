"""The bench client's own cost: streamed tokens/s per client core, and latency it adds per request.

A minimal loopback server (medusa_trt.bench.loopback, raw asyncio) runs in its own process pinned to
one core and streams one token per SSE chunk as fast as it can (the worst case for the client);
the client is pinned to another core. Reported:
  - streamed tokens/s at concurrency 1 and 16, wall-clock and per client CPU-second;
  - added latency per request: median e2e latency of the bench client minus that of a raw-socket
    client doing the same 1-token request (both against the same server).
What the project aims for (the script measures, it does not judge): >= 5,000 tokens/s per client core,
< 1 ms added per request.

    .venv/bin/python benchmarks/bench_client.py [--requests 64] [--max-tokens 256] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time

import httpx

from medusa_trt.bench.client import make_client, stream_request
from medusa_trt.supervise import free_port


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def _server_main(port: int, cpu: int) -> None:
    from medusa_trt.bench.loopback import LoopbackOptions, serve_forever

    _pin(cpu)
    serve_forever(port, LoopbackOptions(tokens_per_chunk=1))


async def _throughput(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    async with make_client(url, concurrency, 60.0) as client:
        await stream_request(client, index=0, prompt="warm", model="loopback", max_tokens=8)
        todo = iter(range(requests))
        tokens = 0
        failures = 0

        async def user() -> None:
            nonlocal tokens, failures
            for i in todo:
                rec = await stream_request(client, index=i, prompt="hello", model="loopback", max_tokens=max_tokens)
                tokens += rec.output_tokens or 0
                failures += not rec.ok

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "concurrency": concurrency,
        "tokens": tokens,
        "failures": failures,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_s_wall": tokens / wall,
        "tokens_per_client_cpu_s": tokens / cpu,
    }


async def _latency(url: str, port: int, n: int) -> dict[str, float]:
    body = json.dumps(
        {
            "model": "loopback",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw: list[float] = []
    for _ in range(n):  # the floor: write the bytes, read until the terminating chunk, no parsing
        t0 = time.perf_counter()
        writer.write(req)
        await writer.drain()
        buf = b""
        while not buf.endswith(b"0\r\n\r\n"):
            buf += await reader.read(65536)
        raw.append(time.perf_counter() - t0)
    writer.close()
    ours: list[float] = []
    async with make_client(url, 1, 60.0) as client:
        cpu0 = time.process_time()
        for i in range(n):
            rec = await stream_request(client, index=i, prompt="hi", model="loopback", max_tokens=1)
            assert rec.ok and rec.e2el_s is not None, rec.error
            ours.append(rec.e2el_s)
        cpu_ms = (time.process_time() - cpu0) * 1e3 / n
    r, o = statistics.median(raw) * 1e3, statistics.median(ours) * 1e3
    # CPU per request is the robust figure on a busy machine; the wall difference includes scheduling.
    return {
        "raw_median_ms": r,
        "bench_client_median_ms": o,
        "added_ms_per_request": o - r,
        "client_cpu_ms_per_request": cpu_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    client_cpu, server_cpu = cpus[0], cpus[-1]
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_server_main, args=(port, server_cpu), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        _pin(client_cpu)
        result = {
            "cpus": {"client": client_cpu, "server": server_cpu, "available": len(cpus)},
            "throughput": [asyncio.run(_throughput(url, c, args.requests, args.max_tokens)) for c in (1, 16)],
            "latency": asyncio.run(_latency(url, port, args.latency_requests)),
        }
    finally:
        proc.terminate()
        proc.join(5)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for t in result["throughput"]:
        print(
            f"concurrency {t['concurrency']:>2}: {t['tokens_per_s_wall']:>9,.0f} tokens/s wall, "
            f"{t['tokens_per_client_cpu_s']:>9,.0f} tokens per client CPU-second "
            f"({t['tokens']} tokens, {t['failures']} failures)"
        )
    lat = result["latency"]
    print(
        f"added latency: {lat['added_ms_per_request']:.3f} ms/request (bench client median "
        f"{lat['bench_client_median_ms']:.3f} ms vs raw socket {lat['raw_median_ms']:.3f} ms); "
        f"client CPU {lat['client_cpu_ms_per_request']:.3f} ms/request (1-token request)"
    )


if __name__ == "__main__":
    main()
