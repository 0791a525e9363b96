"""The server on each event loop and HTTP parser uvicorn can give it: asyncio's loop with h11 (the
fallback where uvloop or httptools is missing) and uvloop with httptools (what "auto", the default,
picks: both are dependencies). A real `run_server` in its own process on loopback: it says which it
runs on, streams the same greedy text it returns whole, keeps a connection alive across requests, and
ends on SIGTERM with 128+15."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medusa_trt.supervise import Supervisor, free_port
from tests.helpers import HANG_S

PROMPT = "def main():"
# (uvicorn's loop, its http, what the server's log names)
SETTINGS = [
    ("asyncio", "h11", "event loop asyncio.unix_events._UnixSelectorEventLoop, HTTP H11Protocol"),
    ("auto", "auto", "event loop uvloop.Loop, HTTP HttpToolsProtocol"),  # both are dependencies here
]
DRIVER = """
import logging, sys
from pathlib import Path
from medusa_trt.serve.server import run_server
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
sys.exit(run_server(Path(sys.argv[1]), port=int(sys.argv[2]), loop=sys.argv[3], http=sys.argv[4]))
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    from tests.helpers.checkpoints import make_checkpoint

    return make_checkpoint(tiny_llama, tmp_path_factory.mktemp("loops") / "ck", heads=tiny_heads)


@pytest.fixture(params=SETTINGS, ids=[f"{loop}-{http}" for loop, http, _ in SETTINGS])
def served(request: pytest.FixtureRequest, ckpt: Path, tmp_path: Path) -> Iterator[tuple[Supervisor, Path, str]]:
    loop, http, named = request.param
    if loop != "asyncio" and sys.platform in ("win32", "cygwin"):
        pytest.skip("uvloop is not a dependency on Windows")
    port, log = free_port(), tmp_path / "server.log"
    argv = [sys.executable, "-c", DRIVER, str(ckpt), str(port), loop, http]
    sup = Supervisor(argv, env={}, host="127.0.0.1", port=port, startup_timeout_s=HANG_S, log=log)
    sup.start()
    try:
        sup.wait_ready()
        yield sup, log, named
    finally:
        sup.stop()


def _stream(client: httpx.Client, url: str, medusa: bool) -> str:
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "medusa": medusa, "stream": True}
    parts = []
    with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(parts)


def test_streams_keeps_alive_and_stops_on_sigterm(served: tuple[Supervisor, Path, str]) -> None:
    sup, log, named = served
    assert named in log.read_text()
    with httpx.Client(timeout=HANG_S) as client:  # one kept-alive connection for every request
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "medusa": False}
        whole = client.post(f"{sup.url}/v1/completions", json=body).json()["choices"][0]["text"]
        assert whole
        assert _stream(client, sup.url, medusa=False) == whole
        assert _stream(client, sup.url, medusa=True) == whole  # greedy Medusa: the same text
        assert client.get(f"{sup.url}/health").status_code == 200
    assert sup.proc is not None
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=HANG_S) == 128 + signal.SIGTERM
