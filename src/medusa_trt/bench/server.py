"""The server under test: a fast reachability probe, and our own server started for `--engine`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from medusa_trt import records
from medusa_trt.bench.client import auth_headers
from medusa_trt.errors import InvalidInputError, ServerError
from medusa_trt.supervise import Supervisor, free_port

logger = logging.getLogger(__name__)

API_KEY_ENV = "MEDUSA_TRT_API_KEY"  # what `medusa-trt run` reads (serve.guard; bench does not import serve)


@dataclass
class ServerInfo:
    url: str
    model: str | None  # first id of /v1/models, when the server lists one
    version: Any = None  # /version's answer, when it has one
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "version": self.version, "headers": self.headers}


def probe(url: str, timeout_s: float = 5.0, api_key: str | None = None) -> ServerInfo:
    """Fail fast (ServerError) when nothing answers at `url`, InvalidInputError when it wants another
    API key; else the model and version it reports."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InvalidInputError(f"--url must start with http:// or https://, got {url!r}")
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=auth_headers(api_key)) as c:
            models = c.get("/v1/models")
            _check_auth(url, models.status_code, api_key)
            info = ServerInfo(url=url, model=None)
            if "server" in models.headers:
                info.headers["server"] = models.headers["server"]
            if models.status_code == 200:
                doc = models.json()
                data = doc.get("data") if isinstance(doc, dict) else None
                if isinstance(data, list) and data and isinstance(data[0], dict):
                    info.model = data[0].get("id")
            ver = c.get("/version")
            if ver.status_code == 200:
                try:
                    info.version = ver.json()
                except ValueError:
                    info.version = ver.text[:200]
            return info
    except httpx.ConnectError as e:
        raise ServerError(
            f"cannot reach {url}: {e}", hint="Start a server (`medusa-trt run ENGINE_DIR`) or check --url."
        ) from None
    except httpx.TimeoutException:
        raise ServerError(
            f"{url} did not answer within {timeout_s:g} s", hint="Check that the server is up and not overloaded."
        ) from None
    except (httpx.HTTPError, ValueError) as e:
        raise ServerError(f"{url}: unexpected answer to GET /v1/models ({e})") from None


def _check_auth(url: str, status: int, api_key: str | None) -> None:
    """401/403 on /v1/models: the server wants a key we did not send, or not this one."""
    if status not in (401, 403):
        return
    if api_key is None:
        raise InvalidInputError(
            f"{url} requires an API key (HTTP {status} on /v1/models)",
            hint=f"Pass --api-key KEY or set {API_KEY_ENV}.",
        )
    raise InvalidInputError(
        f"{url} refused the API key (HTTP {status} on /v1/models)",
        hint=f"Give the key the server was started with (--api-key or {API_KEY_ENV}).",
    )


def read_engine_provenance(engine_dir: Path) -> dict[str, Any]:
    """The engine manifest (medusa-trt.json) and the profile it was built for, when present."""
    out: dict[str, Any] = {"dir": str(engine_dir.resolve()), "manifest": None, "profile": None}
    if (manifest := records.peek(records.ENGINE, engine_dir)) is not None:
        out["manifest"] = manifest
        out["profile"] = manifest.get("profile") or manifest.get("profile_id") or manifest.get("profile_name")
    return out


@contextmanager
def engine_server(
    engine_dir: Path, start_timeout_s: float = 600.0, api_key: str | None = None, run_args: Sequence[str] = ()
) -> Iterator[str]:
    """Start `medusa-trt run ENGINE_DIR [RUN_ARGS]` on a free loopback port (``supervise.Supervisor``); yield
    its URL; stop it (SIGTERM, then SIGKILL). With `api_key` the server requires that key (through the
    environment: a key stays out of argv and `ps`)."""
    if not engine_dir.is_dir():
        raise InvalidInputError(
            f"engine directory not found: {engine_dir}", hint="Build one with `medusa-trt build`, or pass --url."
        )
    port = free_port()
    argv = [sys.executable, "-m", "medusa_trt", "run", str(engine_dir), *run_args]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    # its output goes nowhere (the bench's own output stays readable); its last lines come with any error
    with (
        open(os.devnull, "w") as sink,
        Supervisor(
            argv,
            env={"PYTHONUNBUFFERED": "1", **({API_KEY_ENV: api_key} if api_key else {})},
            host="127.0.0.1",
            port=port,
            startup_timeout_s=start_timeout_s,
            out=sink,
            exit_hint="Run `medusa-trt run ENGINE_DIR` by hand to see its full output.",
            timeout_hint="Raise the start timeout or check the engine directory.",
        ) as server,
    ):
        yield server.url
