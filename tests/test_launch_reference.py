"""`medusa-trt run DIR` on a reference build: a real subprocess serving the built engine directory,
answering with the one-shot greedy output, and stopping on SIGTERM with 128+15."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from medusa_trt.cli import run as cli
from medusa_trt.supervise import free_port


def test_run_serves_the_built_engine(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    assert (
        cli(["build", "--profile", "cpu", "--model", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(out)]) == 0
    )
    capsys.readouterr()
    assert cli(["run", str(out), "--prompt", "def main():", "--max-tokens", "6", "--json"]) == 0
    one_shot = json.loads(capsys.readouterr().out)

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medusa_trt", "run", str(out), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == [tiny_llama.name]  # model_name from the manifest
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            timeout=60,
            json={"model": tiny_llama.name, "prompt": "def main():", "max_tokens": 6, "temperature": 0},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == one_shot["text"]
        assert body["usage"]["completion_tokens"] == 6 and body["usage"]["decoding_steps"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
