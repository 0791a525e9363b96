"""What the server refuses before a request reaches FastAPI: a missing API key and an oversized body.

Pure ASGI (no FastAPI import here): the CLI imports the settings without loading the server stack.
Both answers are OpenAI-shaped JSON, sent before any of the body is parsed: a body announced larger
than the limit is refused unread, a chunked one as soon as it passes the limit.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from medusa_trt.errors import InvalidInputError
from medusa_trt.runtime.watchdog import FIRST_STEP_TIMEOUT_S, STEP_TIMEOUT_S
from medusa_trt.serve.chat import TEMPLATE_TIMEOUT_S

DEFAULT_MAX_REQUEST_MB = 4.0  # a 128k-token prompt is ~0.5 MB of text; 4 MiB leaves room for chat JSON
API_KEY_ENV = "MEDUSA_TRT_API_KEY"
_OPEN = ("/health", "/metrics", "/version")  # probes and scrapers need no key (as in vLLM)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServeGuard:
    """The server's protective settings (`medusa-trt run` flags)."""

    api_key: str | None = None
    max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20)
    step_timeout_s: float = STEP_TIMEOUT_S
    first_step_timeout_s: float = FIRST_STEP_TIMEOUT_S
    template_timeout_s: float = TEMPLATE_TIMEOUT_S  # a chat template's rendering, per request


def api_key_setting(
    value: str | None, env: Mapping[str, str], without: str = "to serve without one"
) -> tuple[str | None, str | None]:
    """The key to require (None: no auth) and a note to print, from ``--api-key`` or the environment.

    The same rules for the key a client sends (`bench`); ``without`` ends the hint of an empty key.

    A secret file usually ends in a newline that no client sends, so surrounding whitespace is
    stripped (and said). A variable that is set but empty, or blank, is refused: it reads as "auth on"
    to whoever set it, and must not silently serve without a key. (Click passes an empty variable
    on as unset, hence the look at ``env``.)
    """
    if value is None:
        value = env.get(API_KEY_ENV)
    if value is None:
        return None, None
    key = value.strip()
    where = f"--api-key / {API_KEY_ENV}"
    if not key:
        raise InvalidInputError(
            f"the API key ({where}) is empty" + (" after stripping whitespace" if value else ""),
            hint=f"Set a key, or unset {API_KEY_ENV} (and drop --api-key) {without}.",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidInputError(
            f"the API key ({where}) contains a control character, which no HTTP client can send",
            hint="Use printable characters only.",
        )
    stripped = len(value) - len(key)
    if not stripped:
        return key, None
    note = (
        f"note: stripped {stripped} whitespace character{'s' if stripped > 1 else ''} around the API key ({where}); "
        "clients send `Authorization: Bearer KEY` without them"
    )
    return key, note


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning to print when the API is reachable from other machines without a key."""
    if api_key or is_loopback(host):
        return None
    return (
        f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
        f"(set --api-key or {API_KEY_ENV})"
    )


async def _reply(send: Send, status: int, message: str, kind: str, code: str, extra: list[Any] | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """401 for /v1/* without the bearer key; 413 for a body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.key is not None and not str(scope.get("path", "")).startswith(_OPEN) and not self._authorized(headers):
            await _reply(
                send,
                401,
                "Incorrect or missing API key: send `Authorization: Bearer KEY`.",
                "invalid_request_error",
                "invalid_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        announced = headers.get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.max_bytes:
            await self._too_large(send)
            return
        if scope.get("method") in ("POST", "PUT", "PATCH") and announced is None:
            body = await self._read_capped(receive)  # chunked: count as it arrives
            if body is None:
                await self._too_large(send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.key is not None
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return b"".join(parts)  # disconnected: the app sees an empty body and the disconnect later
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)

    async def _too_large(self, send: Send) -> None:
        mib = self.max_bytes / 2**20
        await _reply(
            send,
            413,
            f"The request body is larger than this server's limit of {mib:g} MiB (--max-request-mb).",
            "invalid_request_error",
            "request_too_large",
            [(b"connection", b"close")],
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: disconnect notices
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again
