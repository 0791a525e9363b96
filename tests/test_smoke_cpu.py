"""CPU smoke test: build a tiny model with heads (cpu, cpu-tp2), serve it with `medusa-trt run` as a real
subprocess on a loopback port, and use it as an OpenAI client would."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from medusa_trt.supervise import Supervisor, free_port
from tests.helpers import HANG_S

PROMPT = "def main():"
MAX_TOKENS = 12
LONG = 2048  # context of the smoke model


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a longer context, so a stream outlives a disconnect even on a fast machine."""
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("smoke-llama"), seed=0, max_position_embeddings=LONG)


@pytest.fixture(scope="module", params=["cpu", "cpu-tp2"])
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, long_llama: Path, tiny_heads: Path
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The engine dir built by `medusa-trt build --profile P`, and the one-shot greedy outputs."""
    from medusa_trt.cli import run as cli
    from medusa_trt.runtime import SamplingParams
    from medusa_trt.runtime.once import generate_once

    out = tmp_path_factory.mktemp(f"smoke-{request.param}") / "engine"
    rc = cli(
        [
            "build",
            "--profile",
            request.param,
            "--model",
            str(long_llama),
            "--medusa",
            str(tiny_heads),
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    greedy = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, top_k=0, seed=None)
    once = generate_once(out, PROMPT, greedy, medusa=True, tree=None, device="cpu", chat=False)
    once_chat = generate_once(out, "hello", greedy, medusa=True, tree=None, device="cpu", chat=True)
    return out, once, once_chat


@pytest.fixture()
def served(
    built: tuple[Path, dict[str, Any], dict[str, Any]], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    engine_dir = built[0]
    port = free_port()
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "medusa_trt", "run", str(engine_dir), "--port", str(port)]
    sup = Supervisor(
        argv, env={"PYTHONUNBUFFERED": "1"}, host="127.0.0.1", port=port, startup_timeout_s=HANG_S, log=log
    )
    with sup:  # the one supervisor: /health waited for, the server stopped (SIGTERM, then SIGKILL) after
        assert sup.proc is not None
        yield sup.url, sup.proc, log


def _events(client: httpx.Client, url: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def test_serve_end_to_end(
    built: tuple[Path, dict[str, Any], dict[str, Any]], served: tuple[str, subprocess.Popen[str], Path]
) -> None:
    _, once, once_chat = built
    url, proc, log = served
    assert f"at {url}" in log.read_text()  # the URL is printed once ready
    c = httpx.Client(base_url=url, timeout=60)
    card = c.get("/v1/models").json()["data"][0]
    model, long_tokens = card["id"], card["max_model_len"] - 16
    greedy = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0}

    # completions, not streaming and streaming: the one-shot greedy text, and its step count
    doc = c.post("/v1/completions", json={**greedy, "prompt": PROMPT}).json()
    assert doc["choices"][0]["text"] == once["text"]
    assert doc["usage"]["completion_tokens"] == once["completion_tokens"]
    # Steps depend on near-ties between draft candidates, which float rounding in another process
    # (other thread counts) may break differently; the text may not change, the step count may.
    assert 1 <= doc["usage"]["decoding_steps"] <= doc["usage"]["completion_tokens"] - 1
    ev = _events(
        c, "/v1/completions", {**greedy, "prompt": PROMPT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert ev[-1] == "[DONE]" and ev[-2]["usage"] == doc["usage"]
    assert "".join(e["choices"][0]["text"] for e in ev[:-2]) == once["text"]

    # chat (the tokenizer's template), both ways
    msgs = [{"role": "user", "content": "hello"}]
    chat = c.post("/v1/chat/completions", json={**greedy, "messages": msgs}).json()
    assert chat["choices"][0]["message"]["content"] == once_chat["text"]
    assert chat["usage"]["prompt_tokens"] == once_chat["prompt_tokens"]
    ev = _events(c, "/v1/chat/completions", {**greedy, "messages": msgs, "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1]) == once_chat["text"]

    # Medusa off: the same greedy text, one token per step
    off = c.post("/v1/completions", json={**greedy, "prompt": PROMPT, "medusa": False}).json()
    assert off["choices"][0]["text"] == once["text"]
    assert off["usage"]["decoding_steps"] == off["usage"]["completion_tokens"] - 1

    # bad requests: OpenAI error JSON with 4xx, and the server keeps serving
    for body, status in (
        ({**greedy, "model": "nope", "prompt": "x"}, 404),
        ({**greedy, "prompt": "x", "n": 2}, 400),
        ({**greedy, "prompt": "x " * card["max_model_len"]}, 400),
        ({**greedy, "prompt": "x", "top_p": 3}, 400),
    ):
        r = c.post("/v1/completions", json=body)
        assert r.status_code == status and r.json()["error"]["message"]

    # a client that disconnects mid-stream frees the engine for the next request
    with (
        httpx.Client(base_url=url, timeout=60) as c2,
        c2.stream(
            "POST", "/v1/completions", json={**greedy, "prompt": PROMPT, "max_tokens": long_tokens, "stream": True}
        ) as r,
    ):
        next(line for line in r.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + HANG_S  # the dropped generation is cancelled, not run to its end
    while 'outcome="cancelled"' not in (metrics := c.get("/metrics").text):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.05)
    assert 'medusa_trt_generations_total{model="' in metrics
    again = c.post("/v1/completions", json={**greedy, "prompt": PROMPT}).json()
    assert again["choices"][0]["text"] == once["text"]

    # SIGTERM while a long stream runs: the stream ends, the process exits on its own and cleanly
    # (128 + SIGTERM, the `medusa-trt run` contract, and no traceback); benchmarks/faults.py times it
    c.close()
    streamed: list[str] = []
    started = threading.Event()

    def long_stream() -> None:
        body = {**greedy, "prompt": PROMPT, "max_tokens": long_tokens, "stream": True}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.Client(base_url=url, timeout=HANG_S) as c3,
            c3.stream("POST", "/v1/completions", json=body) as r,
        ):
            for line in r.iter_lines():
                if line:
                    streamed.append(line)
                    started.set()

    th = threading.Thread(target=long_stream)
    th.start()
    assert started.wait(HANG_S)
    children = psutil.Process(proc.pid).children(recursive=True)  # the tp ranks (cpu-tp2)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(HANG_S)
    th.join(HANG_S)
    assert not th.is_alive()
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, text
    assert "Traceback" not in text
    # the running stream was ended properly (finish_reason "abort", then [DONE]), not cut
    assert streamed[-1] == "data: [DONE]" and '"finish_reason": "abort"' in streamed[-2]
    _, alive = psutil.wait_procs(children, timeout=HANG_S)
    assert not alive, f"tp ranks left running: {alive}"
