"""`run DIR` for TensorRT-LLM engines: the trtllm-serve command, its YAML and environment, the health
wait, signal forwarding and 128+signal exit, --print-cmd and multi-node lines (stand-in trtllm-serve)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from medusa_trt.cli import run as cli_run
from medusa_trt.engines import launch
from medusa_trt.errors import CheckpointError, ToolFailedError
from medusa_trt.supervise import Supervisor, free_port
from tests.helpers import HANG_S
from tests.helpers.standins import env_with, fake_trtllm_dist, install, records

PROFILE = "hgx-h200-fp8-tp8"


@pytest.fixture(scope="module")
def standin_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def trt_engine(tmp_path_factory: pytest.TempPathFactory, tiny_heads4: Path, standin_bin: Path) -> Iterator[Path]:
    """A TensorRT-LLM engine directory built by `build` with the stand-in trtllm-build.

    Built with the BF16 profile (the FP8 plan needs quantize.py on a GPU host), then its manifest
    names the FP8 profile, whose runtime env and serve settings `run` must apply.
    """
    import shutil

    from medusa_trt.cli import run as cli
    from tests.helpers.models import make_tiny_llama

    base = tmp_path_factory.mktemp("src")
    model = make_tiny_llama(base / "llama", seed=1, num_attention_heads=8, num_key_value_heads=2)
    out = base / "engine-dir"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(fake_trtllm_dist(base / "site")))
        mp.setenv("PATH", f"{standin_bin}:/usr/bin:/bin")
        mp.setenv("STANDIN_RECORD", str(base / "build.jsonl"))
        rc = cli(
            [
                "build",
                "--profile",
                "hgx-h200-bf16-tp8",
                "--model",
                str(model),
                "--medusa",
                str(tiny_heads4),
                "-o",
                str(out),
            ]
        )
        assert rc == 0
    from medusa_trt.config.profile import load_profile

    m = json.loads((out / "medusa-trt.json").read_text())
    fp8 = load_profile(PROFILE)
    m["profile"] = {"name": fp8.name, "id": fp8.id, "profile": fp8.model_dump(mode="json")}
    m["runtime_env"] = fp8.env
    (out / "medusa-trt.json").write_text(json.dumps(m))
    yield out
    shutil.rmtree(base, ignore_errors=True)


def test_print_cmd_is_the_supervised_command(trt_engine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.serve(trt_engine, "127.0.0.1", 8123, print_cmd=True, show=print) == 0
    line = capsys.readouterr().out.strip()
    words = shlex.split(line)
    cut = words.index("trtllm-serve")
    env = dict(w.split("=", 1) for w in words[:cut])
    assert env == {
        "TRTLLM_ENABLE_PDL": "1",
        "UB_ONESHOT": "1",
        "UB_TP_SIZE": "8",
        "TRTLLM_PDL_OVERLAP_RATIO": "0.15",
        "TRTLLM_PREFETCH_RATIO": "-1",
    }
    argv = words[cut:]
    assert argv[:4] == ["trtllm-serve", str(trt_engine / "engine"), "--backend", "tensorrt"]
    opts = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert opts["--tp_size"] == "8" and opts["--host"] == "127.0.0.1" and opts["--port"] == "8123"
    assert opts["--tokenizer"] == str(trt_engine) and opts["--config"] == str(trt_engine / "medusa.yaml")
    assert opts["--kv_cache_free_gpu_memory_fraction"] == "0.9"


def test_api_key_is_refused_for_trtllm_serve(trt_engine: Path) -> None:
    """trtllm-serve has no API-key option: a key must not be dropped silently (the server would be open)."""
    from medusa_trt.errors import InvalidInputError

    for print_cmd in (False, True):
        with pytest.raises(InvalidInputError, match="trtllm-serve has no API-key option"):
            launch.serve(trt_engine, "127.0.0.1", 8123, print_cmd=print_cmd, api_key="k", show=print)


def test_print_cmd_json_is_the_same_command(trt_engine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert launch.serve(trt_engine, "127.0.0.1", 8123, print_cmd=True, show=print) == 0
    text = capsys.readouterr().out.strip()
    assert cli_run(["run", str(trt_engine), "--port", "8123", "--print-cmd", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["engine"] == "trtllm" and doc["nodes"] == 1 and doc["lines"] == [text]
    assert shlex.split(text) == [f"{k}={v}" for k, v in doc["env"].items()] + doc["argv"]
    # serving itself prints no document: --json without --print-cmd is a usage error
    assert cli_run(["run", str(trt_engine), "--json"]) == 2
    assert "--json needs --prompt" in capsys.readouterr().err


def test_config_yaml_is_the_llm_api_speculative_config(trt_engine: Path) -> None:
    doc = yaml.safe_load((trt_engine / "medusa.yaml").read_text())
    m = json.loads((trt_engine / "medusa-trt.json").read_text())
    assert doc == {
        "speculative_config": {
            "decoding_type": "Medusa",
            "max_draft_len": m["max_draft_len"],
            "num_medusa_heads": m["num_medusa_heads"],
            "medusa_choices": m["tree"],
        }
    }
    assert yaml.safe_load((trt_engine / "medusa_tree.yaml").read_text()) == m["tree"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_supervisor_waits_for_health_and_forwards_signals(
    trt_engine: Path, standin_bin: Path, tmp_path: Path, signum: int
) -> None:
    port = free_port()
    record = tmp_path / "serve.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medusa_trt", "run", str(trt_engine), "--port", str(port)],
        env=env_with(standin_bin, STANDIN_RECORD=str(record)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:  # the URL is printed only after /health answered
            line = proc.stderr.readline()
            seen.append(line)
            if "serving" in line or not line:
                break
        assert f"http://127.0.0.1:{port}/v1" in seen[-1], "".join(seen)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200

        started = records(record, "trtllm-serve")[0]
        assert started["argv"][:3] == [str(trt_engine / "engine"), "--backend", "tensorrt"]
        assert started["config"] == (trt_engine / "medusa.yaml").read_text()
        assert started["env"]["TRTLLM_ENABLE_PDL"] == "1" and started["env"]["UB_TP_SIZE"] == "8"

        proc.send_signal(signum)
        rc = proc.wait(timeout=HANG_S)
        assert rc == 128 + signum
        assert {"tool": "trtllm-serve", "signal": signum} in records(record)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SERVER_WITH_WORKER = """
import os, signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
worker = subprocess.Popen([sys.executable, "-c",
                           "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
open(sys.argv[2], "w").write(str(worker.pid))
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
signal.signal(signal.SIGTERM, lambda *a: os._exit(143))  # exits, leaving its worker behind
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_supervisor_leaves_no_worker_of_the_server_behind(tmp_path: Path) -> None:
    """A server that exits on SIGTERM without stopping what it spawned (MPI ranks): run cleans up."""
    import psutil

    port, pidfile = free_port(), tmp_path / "worker.pid"
    code = (
        "import sys; from medusa_trt.supervise import Supervisor; "
        "sys.exit(Supervisor([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]], env={}, "
        "host='127.0.0.1', port=int(sys.argv[2]), startup_timeout_s=300).run())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, SERVER_WITH_WORKER, str(port), str(pidfile)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            try:
                if pidfile.read_text() and httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except (OSError, httpx.TransportError):
                time.sleep(0.1)
        worker = psutil.Process(int(pidfile.read_text()))
        time.sleep(0.5)  # the supervisor saw /health too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_S) == 128 + signal.SIGTERM
        deadline = time.monotonic() + HANG_S
        while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, (
            "the server's worker was left running"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker is not None and worker.is_running():
            worker.kill()


def test_supervisor_reports_a_child_that_dies_during_startup(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('loading engine'); print('CUDA error: no device'); sys.exit(3)"]
    sup = Supervisor(argv, env={}, host="127.0.0.1", port=free_port(), startup_timeout_s=30, out=open(os.devnull, "w"))  # noqa: SIM115
    with pytest.raises(ToolFailedError) as e:
        sup.run()
    assert "exited with 3 before it was ready" in e.value.message and "CUDA error: no device" in e.value.message


def test_multinode_profile_prints_launch_lines(
    trt_engine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    two_nodes = tmp_path / "two-nodes"
    shutil.copytree(trt_engine, two_nodes, ignore=shutil.ignore_patterns("engine", "checkpoint"))
    m = json.loads((two_nodes / "medusa-trt.json").read_text())
    m["profile"]["profile"]["hardware"]["count"] = 4  # 4 GPUs per node, tp 8: two nodes
    (two_nodes / "medusa-trt.json").write_text(json.dumps(m))
    assert launch.serve(two_nodes, "0.0.0.0", 8000, show=print) == 0
    out = capsys.readouterr().out
    mpirun = next(line for line in out.splitlines() if "mpirun" in line and not line.startswith("#"))
    srun = next(line for line in out.splitlines() if line.startswith(("srun", "TRTLLM")) and "srun" in line)
    assert "-np 8" in mpirun and "ppr:4:node" in mpirun and "trtllm-llmapi-launch trtllm-serve" in mpirun
    assert "-x TRTLLM_ENABLE_PDL" in mpirun
    assert "srun -N 2 --ntasks-per-node=4" in srun and "trtllm-llmapi-launch trtllm-serve" in srun
    assert "--config" in srun and str(two_nodes / "medusa.yaml") in srun


def test_reference_print_cmd_and_missing_manifest(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "medusa-trt.json").write_text(
        json.dumps(
            {
                "engine": "reference",
                "checkpoint_dir": "checkpoint",
                "tree": [[0]],
                "num_medusa_heads": 1,
                "max_draft_len": 1,
                "profile": {"name": "cpu"},
                "runtime_env": {"OMP_NUM_THREADS": "2"},
            }
        )
    )
    assert launch.serve(tmp_path, "127.0.0.1", 9000, print_cmd=True, show=print) == 0
    assert (
        capsys.readouterr().out.strip() == f"OMP_NUM_THREADS=2 medusa-trt run {tmp_path.resolve()} "
        "--host 127.0.0.1 --port 9000"
    )
    with pytest.raises(CheckpointError, match="not a finished medusa-trt build"):
        launch.serve(tiny_llama, "127.0.0.1", 9000)


def test_reference_server_gets_the_profile_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What --print-cmd shows is what runs: the profile's runtime_env is set before the server starts."""
    (tmp_path / "medusa-trt.json").write_text(
        json.dumps(
            {
                "engine": "reference",
                "checkpoint_dir": "checkpoint",
                "tree": [[0]],
                "num_medusa_heads": 1,
                "max_draft_len": 1,
                "profile": {"name": "cpu"},
                "runtime_env": {"OMP_NUM_THREADS": "2"},
            }
        )
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # restored after the test
    seen: dict[str, str | None] = {}

    def fake_run_server(*_a: object, **_k: object) -> int:
        seen["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
        return 0

    from medusa_trt.serve import server

    monkeypatch.setattr(server, "run_server", fake_run_server)
    assert launch.serve(tmp_path, "127.0.0.1", 9000) == 0
    assert seen == {"OMP_NUM_THREADS": "2"}
