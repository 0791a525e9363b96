"""One streamed OpenAI request -> a RequestRecord (SSE parsing, timing, failure classification)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from typing import Any

import httpx

from medusa_trt.bench.metrics import RequestRecord

CHAT_PATH = "/v1/chat/completions"


def _skip_missing_sniffio() -> None:
    """httpcore tries `import sniffio` several times per request; when it is not installed each
    failed import rescans sys.path (~0.1 ms/request). A None entry makes the failure immediate;
    httpcore then assumes asyncio, which is what it would conclude anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


COMPLETIONS_PATH = "/v1/completions"


def build_payload(
    model: str,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float,
    endpoint: str,
    medusa: bool | None,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """The request body. `medusa` and `ignore_eos` are sent only when set: other servers may reject
    unknown fields (vLLM's and TensorRT-LLM's OpenAI servers accept `ignore_eos`)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if medusa is not None:
        body["medusa"] = medusa
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        msg = doc["error"]["message"] if isinstance(doc.get("error"), dict) else doc.get("detail", doc)
        return str(msg)[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace")


def _chunk_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


class _StreamFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def _consume(resp: httpx.Response, rec: RequestRecord, t0: float) -> None:
    """Read SSE lines until [DONE], filling `rec`; raise _StreamFailure on a broken stream."""
    parts: list[str] = []
    done = False
    end = 0.0
    async for line in resp.aiter_lines():
        if done or not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event: lines; drain after [DONE]
        data = line[5:].strip()
        if data == "[DONE]":
            # Keep reading to the end of the body (no break): a fully read response returns its
            # keep-alive connection to the pool instead of paying a new connect per request.
            done = True
            end = time.perf_counter() - t0
            continue
        now = time.perf_counter() - t0
        try:
            obj = json.loads(data)
        except ValueError:
            raise _StreamFailure("malformed_stream", f"invalid JSON in stream: {data[:80]!r}") from None
        if not isinstance(obj, dict):
            raise _StreamFailure("malformed_stream", f"unexpected stream item: {data[:80]!r}")
        if "error" in obj:
            raise _StreamFailure("stream_error", _error_message(data.encode()))
        for choice in obj.get("choices") or ():
            text = _chunk_text(choice)
            if text:  # empty chunks (role-only first deltas) do not count as the first token
                parts.append(text)
                rec.chunk_times.append(now)
            if choice.get("finish_reason"):
                rec.finish_reason = choice["finish_reason"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.output_tokens = usage.get("completion_tokens")
            steps = usage.get("decoding_steps")
            rec.decoding_steps = int(steps) if isinstance(steps, int | float) else None
    rec.e2el_s = end if done else time.perf_counter() - t0
    rec.text = "".join(parts)
    if not done:
        raise _StreamFailure("malformed_stream", "stream ended without data: [DONE]")
    if rec.output_tokens is None:
        raise _StreamFailure("missing_usage", "no usage chunk (the server ignored stream_options.include_usage)")
    rec.ttft_s = rec.chunk_times[0] if rec.chunk_times else rec.e2el_s


async def _send(client: httpx.AsyncClient, path: str, body: dict[str, Any], rec: RequestRecord) -> None:
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as resp:
            if resp.status_code >= 400:
                msg = _error_message(await resp.aread())
                rec.error_kind = "http_4xx" if resp.status_code < 500 else "http_5xx"
                rec.error = f"HTTP {resp.status_code}: {msg}"
                return
            await _consume(resp, rec, t0)
    except _StreamFailure as e:
        rec.error_kind, rec.error = e.kind, str(e)


async def stream_request(
    client: httpx.AsyncClient,
    *,
    index: int,
    prompt: str,
    model: str,
    max_tokens: int,
    temperature: float = 0.0,
    endpoint: str = "chat",
    medusa: bool | None = None,
    timeout_s: float = 300.0,
    ignore_eos: bool = False,
) -> RequestRecord:
    """Send one streaming request and time it. Never raises for server or network failures."""
    rec = RequestRecord(index=index, medusa=medusa)
    body = build_payload(
        model,
        prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        endpoint=endpoint,
        medusa=medusa,
        ignore_eos=ignore_eos,
    )
    path = CHAT_PATH if endpoint == "chat" else COMPLETIONS_PATH
    try:
        if sys.version_info >= (3, 11):  # no extra task per request (wait_for makes one before 3.12)
            async with asyncio.timeout(timeout_s):
                await _send(client, path, body, rec)
        else:
            await asyncio.wait_for(_send(client, path, body, rec), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        rec.error_kind, rec.error = "timeout", f"no complete answer within {timeout_s:g} s"
    except httpx.ConnectError as e:
        rec.error_kind, rec.error = "connect", f"connection failed: {e}"
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:
        rec.error_kind, rec.error = "malformed_stream", f"connection broken mid-stream: {e}"
    except httpx.HTTPError as e:
        rec.error_kind, rec.error = "other", f"{type(e).__name__}: {e}"
    return rec


def auth_headers(api_key: str | None) -> dict[bytes, bytes]:
    """`Authorization: Bearer KEY` when there is a key. UTF-8 bytes: the server compares the key's
    UTF-8 encoding, and httpx would refuse a str header value that is not ASCII."""
    return {b"Authorization": f"Bearer {api_key}".encode()} if api_key else {}


def make_client(base_url: str, concurrency: int, timeout_s: float, api_key: str | None = None) -> httpx.AsyncClient:
    """One pooled client for all users: one keep-alive connection per concurrent user."""
    _skip_missing_sniffio()
    limits = httpx.Limits(max_connections=max(concurrency, 1) + 2, max_keepalive_connections=max(concurrency, 1) + 2)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, headers=auth_headers(api_key))
