"""The reference server's API surface against real clients on 127.0.0.1: the listening socket's
TCP options, log-probabilities and echo, refused fields, HEAD and the OpenAPI description."""

from __future__ import annotations

import http.client
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.loopback import app_in_thread


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("serve-api") / "llama", seed=0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, tiny_heads: Path) -> Iterator[Any]:
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.runtime import load_engine

    out = tmp_path_factory.mktemp("serve-api-ckpt") / "ckpt"
    convert_checkpoint(model_dir, out, medusa=tiny_heads, tp=1, progress=False)
    eng = load_engine(out, tree="mc_sim_7b_61")  # large and fixed: these random heads still accept a few drafts
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def url(engine: Any) -> Iterator[str]:
    from medusa_trt.serve import create_app

    with app_in_thread(create_app(engine, "tiny"), start_timeout_s=20) as base:
        yield base


def _accepted_socket(peer: tuple[str, int]) -> socket.socket:
    """The server side of the connection whose client end is ``peer`` (this process's own fds)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[:2] == peer:
                return s
        except OSError:
            pass
        s.close()
    raise AssertionError(f"no accepted socket for {peer}")


def test_accepted_connections_have_tcp_nodelay(url: str) -> None:
    # the server is ours (serve.server._bind's socket under uvicorn); the client end is plain http.client
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    try:
        for _ in range(2):  # a kept-alive connection: the case a delayed ACK would stall
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b'{"status":"ok"}'
        assert conn.sock is not None
        server_side = _accepted_socket(conn.sock.getsockname()[:2])
        with server_side:
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()
