"""A minimal OpenAI-style streaming server on raw asyncio: what the benchmark client is measured against.

It streams as fast as the socket allows (or with a fixed delay per chunk): `max_tokens` tokens in
chunks of `tokens_per_chunk` (one chunk per "decoding step", as a Medusa server does; 1 per chunk
when the request sends "medusa": false), then a usage chunk with `decoding_steps`, then [DONE].
`fail_every=n` answers every n-th completion request with HTTP 500.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class LoopbackOptions:
    tokens_per_chunk: int = 1
    chunk_delay_s: float = 0.0
    fail_every: int = 0  # 0: never
    bad_stream_every: int = 0  # every n-th completion request streams invalid JSON (0: never)
    diverge_with_medusa: bool = False  # Medusa-on requests get different text (a broken server)
    model: str = "loopback"


def _head(status: str, ctype: str, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}", "Connection: keep-alive", "Server: medusa-trt-loopback"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_response(status: str, doc: object) -> bytes:
    body = json.dumps(doc).encode()
    return _head(status, "application/json", len(body)) + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class LoopbackServer:
    def __init__(self, opts: LoopbackOptions | None = None) -> None:
        self.opts = opts or LoopbackOptions()
        self.requests = 0
        self.completion_requests = 0
        self.bodies: list[dict[str, object]] = []  # every completion request's JSON body, in arrival order

    async def _stream(self, writer: asyncio.StreamWriter, req: dict[str, object]) -> None:
        o = self.opts
        n_tokens = int(req.get("max_tokens") or 16)  # type: ignore[call-overload]
        per = o.tokens_per_chunk if req.get("medusa", True) is not False else 1
        chat = "messages" in req
        writer.write(_head("200 OK", "text/event-stream", None))
        done = chunks = 0
        while done < n_tokens:
            # like our server: prefill makes the first token alone, then each step emits `per`
            k = 1 if chunks == 0 else min(per, n_tokens - done)
            mark = "m" if o.diverge_with_medusa and req.get("medusa") is True else "t"
            text = "".join(f" {mark}{done + i}" for i in range(k))
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            choice["finish_reason"] = "length" if done + k >= n_tokens else None
            writer.write(_chunked(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"))
            done, chunks = done + k, chunks + 1
            if o.chunk_delay_s:
                await asyncio.sleep(o.chunk_delay_s)
            await writer.drain()
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": n_tokens,
            "total_tokens": n_tokens + 7,
            "decoding_steps": chunks - 1,
        }
        writer.write(_chunked(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"))
        writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async def _answer(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes) -> None:
        self.requests += 1
        if method == "GET" and path == "/health":
            writer.write(_json_response("200 OK", {"status": "ok"}))
        elif method == "GET" and path == "/v1/models":
            writer.write(_json_response("200 OK", {"object": "list", "data": [{"id": self.opts.model}]}))
        elif method == "GET" and path == "/version":
            writer.write(_json_response("200 OK", {"version": "loopback-1"}))
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            self.completion_requests += 1
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            self.bodies.append(doc if isinstance(doc, dict) else {})
            if self.opts.fail_every and self.completion_requests % self.opts.fail_every == 0:
                err = {"error": {"message": "injected failure", "type": "server_error", "param": None, "code": 500}}
                writer.write(_json_response("500 Internal Server Error", err))
            elif self.opts.bad_stream_every and self.completion_requests % self.opts.bad_stream_every == 0:
                writer.write(_head("200 OK", "text/event-stream", None))
                writer.write(_chunked(b"data: {not json\n\n") + b"0\r\n\r\n")
            else:
                await self._stream(writer, self.bodies[-1])
        else:
            writer.write(_json_response("404 Not Found", {"error": {"message": f"no route {path}"}}))
        await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: several requests per connection
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for h in lines[1:]:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                await self._answer(writer, method, path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextmanager
def loopback_server(opts: LoopbackOptions | None = None, port: int = 0) -> Iterator[tuple[str, LoopbackServer]]:
    """Run a LoopbackServer on 127.0.0.1 in a background thread; yield (base URL, server)."""
    srv = LoopbackServer(opts)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.base_events.Server] = {}

    async def start() -> None:
        holder["s"] = await asyncio.start_server(srv.handle, "127.0.0.1", port)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(120)
    bound = holder["s"].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}", srv
    finally:

        async def shutdown() -> None:  # close the socket and end open connections before the loop stops
            holder["s"].close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def serve_forever(port: int, opts: LoopbackOptions | None = None) -> None:
    """Run in the current process until killed (the client benchmark runs it in its own process)."""
    srv = LoopbackServer(opts)

    async def main() -> None:
        server = await asyncio.start_server(srv.handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
