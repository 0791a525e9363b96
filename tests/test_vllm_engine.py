"""vLLM for real: `build --profile cpu-vllm` on `heads train` output, `run` supervising vLLM's OpenAI server,
greedy equality with the reference runtime, per-position acceptance equal to our chain of the same K, `bench`
tokens/step from vLLM's counters, `run --prompt`, engines side by side, signals and exit codes.

Every vLLM here is a real process (its CPU build) on loopback. Where vLLM is not installed these tests
skip with the reason; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.vllm import make_vllm_model, require_vllm, train_vllm_heads

# each vLLM start takes tens of seconds on a 2-core machine; one worker gets them all (pyproject: loadgroup)
pytestmark = [pytest.mark.timeout(1800), pytest.mark.xdist_group("vllm")]

K = 4
CHAIN = [[0] * d for d in range(1, K + 1)]
PROMPTS = ["def main():\n", "The quick brown", "class Model:\n", "Speculative decoding drafts", "self.name"]
MAX_TOKENS = 40


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medusa_trt", *args], capture_output=True, text=True, env=_env(), check=False
    )


@pytest.fixture(scope="module")
def vllm_python() -> str:
    return require_vllm()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny pre-trained Llama and the 4 heads `heads train`'s code trained for it (FasterDecoding files)."""
    return make_vllm_model(tmp_path_factory.mktemp("vllm-model"), num_heads=K)


@pytest.fixture(scope="module")
def engines(vllm_python: str, trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The heads-train output built, unchanged, for vLLM (cpu-vllm) and for the reference runtime (a chain of 4)."""
    model, heads = trained
    root = tmp_path_factory.mktemp("engines")
    out = {"vllm": root / "vllm", "reference": root / "reference"}
    done = _cli("build", "--profile", "cpu-vllm", "--model", str(model), "--medusa", str(heads), "-o", str(out["vllm"]))
    assert done.returncode == 0, done.stderr
    tree = json.dumps(CHAIN)
    done = _cli(
        "build",
        "--profile",
        "cpu",
        "--model",
        str(model),
        "--medusa",
        str(heads),
        "--tree",
        tree,
        "-o",
        str(out["reference"]),
    )
    assert done.returncode == 0, done.stderr
    return out


class Served:
    """`medusa-trt run DIR --port N` in a child process; ``url`` once it printed that it serves."""

    def __init__(self, engine_dir: Path, *extra: str) -> None:
        from medusa_trt.supervise import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medusa_trt", "run", str(engine_dir), "--port", str(self.port), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "medusa-trt: serving" in line and " at " in line:
                self.url = line.rsplit(" at ", 1)[1].strip().removesuffix("/v1")
                self.ready.set()
        self.ready.set()  # the process ended: wake the waiter

    def wait_ready(self) -> str:
        self.ready.wait()
        assert self.url, "medusa-trt run ended before serving:\n" + "".join(self.lines[-40:])
        return self.url

    def vllm_pids(self) -> list[int]:
        """vLLM's API server: our child (in its own session, which its engine processes share)."""
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait()


@pytest.fixture(scope="module")
def server(engines: dict) -> Iterator[Served]:
    srv = Served(engines["vllm"])
    srv.wait_ready()
    yield srv
    srv.stop()


def _complete(url: str, prompt: str) -> dict[str, Any]:
    body = {"model": "model", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": True}
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=None)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["choices"][0])


def _reference(engine_dir: Path) -> list[dict[str, Any]]:
    """Our runtime on the same prompts: the whole chain every step (no adaptive subtree), greedy."""
    from medusa_trt.runtime import SamplingParams, load_engine
    from medusa_trt.runtime.once import generate_text

    with load_engine(engine_dir, tree=json.dumps(CHAIN), adapt=False) as engine:
        return [generate_text(engine, p, SamplingParams(max_tokens=MAX_TOKENS), medusa=True) for p in PROMPTS]


def test_greedy_output_and_per_position_acceptance_equal_our_chain(server: Served, engines: dict) -> None:
    from medusa_trt import spec_counters

    url = server.wait_ready()
    before = spec_counters.read(url)
    got = [_complete(url, p) for p in PROMPTS]
    after = spec_counters.read(url)
    assert before is not None and after is not None
    counted = after.minus(before)
    ours = _reference(engines["reference"])
    for theirs, mine in zip(got, ours, strict=True):
        assert theirs["token_ids"] == mine["token_ids"]  # token for token
    ours_per_pos = [sum(d["stats"]["accepted_per_depth"][i] for d in ours) for i in range(K)]
    assert counted["num_accepted_tokens_per_pos"] == ours_per_pos
    assert counted["num_drafts"] == sum(d["num_steps"] for d in ours)
    assert ours_per_pos[0] > 0  # the trained heads' drafts are accepted: the comparison means something


def test_bench_reads_tokens_per_step_from_vllms_counters(server: Served, tmp_path: Path) -> None:
    url = server.wait_ready()
    out = tmp_path / "bench.json"
    done = _cli(
        "bench",
        "--url",
        url,
        "--num-prompts",
        "4",
        "--max-tokens",
        "32",
        "--endpoint",
        "completions",
        "--json-out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(out.read_text())["runs"][0]
    spec = run["spec_decode"]
    assert spec["num_drafts"] > 0 and len(spec["num_accepted_tokens_per_pos"]) == K
    # vLLM's usage has no step count: its drafts are the decoding steps, read from /metrics
    assert run["total_decoding_steps"] == spec["num_drafts"]
    assert run["tokens_per_step"] == pytest.approx((run["total_output_tokens"] - 4) / spec["num_drafts"])
    assert run["tokens_per_step"] > 1
    assert run["completed"] == 4 and run["failed"] == 0


def test_print_cmd_is_the_supervised_command(engines: dict, vllm_python: str) -> None:
    done = _cli("run", str(engines["vllm"]), "--port", "8123", "--print-cmd", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["engine"] == "vllm" and doc["argv"][:3] == [vllm_python, "-m", "vllm.entrypoints.openai.api_server"]
    assert doc["argv"][-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    assert doc["env"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}


def test_sigterm_is_forwarded_and_the_exit_is_143(server: Served) -> None:
    """Last in this module: it ends the shared server."""
    import psutil

    server.wait_ready()
    (pid,) = server.vllm_pids()
    vllm = psutil.Process(pid)
    children = [vllm, *vllm.children(recursive=True)]  # its engine core and worker too
    assert server.stop(signal.SIGTERM) == 128 + signal.SIGTERM
    _gone, alive = psutil.wait_procs(children)
    assert not alive


def test_vllm_dying_makes_run_exit_non_zero_and_the_api_key_reaches_vllm(engines: dict) -> None:
    srv = Served(engines["vllm"], "--api-key", "s3cret")
    try:
        url = srv.wait_ready()
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        ok = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "model"
        (pid,) = srv.vllm_pids()
        os.kill(pid, signal.SIGKILL)  # vLLM dies under us
        assert srv.proc.wait() == 128 + signal.SIGKILL
    finally:
        srv.stop(signal.SIGKILL)


def test_run_prompt_json_has_token_ids_and_tokens_per_step(engines: dict) -> None:
    done = _cli("run", str(engines["vllm"]), "--prompt", PROMPTS[0], "--max-tokens", str(MAX_TOKENS), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    mine = _reference(engines["reference"])[0]
    assert doc["token_ids"] == mine["token_ids"] and doc["text"] == mine["text"]
    assert doc["num_steps"] == mine["num_steps"] and doc["tokens_per_step"] == pytest.approx(mine["tokens_per_step"])
    assert doc["stats"]["engine"] == "vllm" and doc["stats"]["spec_decode"]["num_drafts"] == doc["num_steps"]


def test_bench_engines_side_by_side(engines: dict, tmp_path: Path) -> None:
    out, plot = tmp_path / "side.json", tmp_path / "side.png"
    done = _cli(
        "bench",
        "--engine",
        str(engines["vllm"]),
        "--engine",
        str(engines["reference"]),
        "--num-prompts",
        "4",
        "--max-tokens",
        "32",
        "--endpoint",
        "completions",
        "--json-out",
        str(out),
        "--plot",
        str(plot),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert [r["engine"].split(": ")[1] for r in doc["runs"]] == ["vllm chain 4", "reference chain 4"]
    assert doc["identical_outputs"][0]["identical"] is True and doc["identical_outputs"][0]["prompts_compared"] == 4
    vllm_run, ref_run = doc["runs"]
    assert vllm_run["spec_decode"]["num_drafts"] > 0 and vllm_run["tokens_per_step"] > 1
    assert ref_run["tokens_per_step"] == pytest.approx(vllm_run["tokens_per_step"])  # the same chain, the same heads
    assert "greedy outputs identical" in done.stderr and plot.stat().st_size > 1000


def test_heads_sharing_the_base_lm_head_reach_vllm_once_and_decode_as_ours(
    vllm_python: str, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """Heads trained with the base lm_head frozen reach vLLM with ``original_lm_head`` and one lm_head
    tensor (vLLM then holds one for every head); vLLM's greedy text and decoding steps still equal our
    chain's on the same heads, so its drafts are the ones the copies gave."""
    from safetensors import safe_open

    model, _ = trained
    heads = train_vllm_heads(model, tmp_path / "heads", num_heads=K, share_lm_head=True)
    out = {"vllm": tmp_path / "vllm", "reference": tmp_path / "reference"}
    done = _cli("build", "--profile", "cpu-vllm", "--model", str(model), "--medusa", str(heads), "-o", str(out["vllm"]))
    assert done.returncode == 0, done.stderr
    cfg = json.loads((out["vllm"] / "heads" / "config.json").read_text())
    assert cfg["original_lm_head"] is True and cfg["num_heads"] == K
    with safe_open(str(out["vllm"] / "heads" / "model.safetensors"), framework="pt") as f:
        assert [k for k in f.keys() if k.startswith("lm_heads.")] == ["lm_heads.0.weight"]  # noqa: SIM118
    done = _cli("build", "--profile", "cpu", "--model", str(model), "--medusa", str(heads), "-o", str(out["reference"]))
    assert done.returncode == 0, done.stderr
    mine = _reference(out["reference"])
    assert sum(m["num_steps"] for m in mine) < sum(len(m["token_ids"]) for m in mine)  # drafts are accepted
    for prompt, want in zip(PROMPTS[:2], mine, strict=False):
        done = _cli("run", str(out["vllm"]), "--prompt", prompt, "--max-tokens", str(MAX_TOKENS), "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["token_ids"] == want["token_ids"] and doc["num_steps"] == want["num_steps"], prompt
