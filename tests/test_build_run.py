"""Real builds: the reference profiles end to end, resume/force/changed input, and the TensorRT-LLM
path against stand-in tools (exit 3 without TensorRT-LLM, the tool's log, failures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from medusa_trt.cli import run as cli
from tests.helpers import HANG_S
from tests.helpers.standins import SHA, fake_hub_cache, fake_trtllm_dist, install, records


def build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    capsys.readouterr()
    rc = cli(["build", *args, "--json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def statuses(doc: dict[str, Any] | None) -> dict[str, str]:
    assert doc is not None
    return {c["step"]: c["status"] for c in doc["manifest"]["commands"]}


@pytest.mark.parametrize("profile,tp", [("cpu", 1), ("cpu-tp2", 2)])
def test_reference_build_loads_and_matches(
    profile: str, tp: int, tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    rc, doc, err = build(
        capsys, "--profile", profile, "--model", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(out)
    )
    assert rc == 0, err
    assert statuses(doc) == {"convert": "ran", "runtime-files": "ran", "validate": "ran"}
    m = json.loads((out / "medusa-trt.json").read_text())
    assert m["engine"] == "reference" and m["engine_dir"] is None and m["checkpoint_dir"] == "checkpoint"
    assert m["tp"] == tp and m["num_medusa_heads"] == 3 and m["max_draft_len"] == 15 and len(m["tree"]) == 15
    assert m["profile"]["name"] == profile and len(m["profile"]["id"]) == 12
    assert m["inputs"]["model"]["local"] == str(tiny_llama.resolve()) and m["inputs"]["model"]["fingerprint"]
    assert m["tools"]["medusa-trt"] and m["tools"]["torch"]
    assert sorted(p.name for p in (out / "checkpoint").glob("rank*.safetensors")) == [
        f"rank{r}.safetensors" for r in range(tp)
    ]
    for name in ("tokenizer.json", "medusa_tree.yaml"):
        assert (out / name).is_file()
    assert not (out / "medusa.yaml").exists() and m["config"] is None  # trtllm-serve's file: TensorRT-LLM only
    assert not list(out.glob(".*.tmp*")), "no temporary files left behind"

    if tp > 1:
        return  # the validate step loaded it at tp 2 and ran a forward; spawning ranks again costs ~8 s
    from medusa_trt.runtime import SamplingParams, load_engine

    engine = load_engine(out)  # the engine directory itself, through its manifest
    try:
        assert engine.tp == tp and engine.tree == m["tree"]
        ids = engine.tokenizer.encode("def main():")
        greedy = [t for c in engine.generate(ids, SamplingParams(max_tokens=8), medusa=False) for t in c.token_ids]
        medusa = [t for c in engine.generate(ids, SamplingParams(max_tokens=8), medusa=True) for t in c.token_ids]
        assert greedy == medusa and len(greedy) == 8
    finally:
        engine.close()


def test_resume_force_and_changed_input(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = tmp_path / "heads"
    shutil.copytree(tiny_heads, heads)
    out = tmp_path / "eng"
    args = ("--profile", "cpu", "--model", str(tiny_llama), "--medusa", str(heads), "-o", str(out))
    rc, doc, err = build(capsys, *args)
    assert rc == 0, err
    ckpt_mtime = (out / "checkpoint" / "rank0.safetensors").stat().st_mtime_ns

    rc, doc, err = build(capsys, *args)  # a rerun skips every finished step
    assert rc == 0 and set(statuses(doc).values()) == {"skipped"}, err
    assert (out / "checkpoint" / "rank0.safetensors").stat().st_mtime_ns == ckpt_mtime

    (out / "medusa_tree.yaml").unlink()  # a missing output redoes only its step
    rc, doc, err = build(capsys, *args)
    assert statuses(doc) == {"convert": "skipped", "runtime-files": "ran", "validate": "skipped"}
    assert (out / "medusa_tree.yaml").is_file()

    rc, doc, err = build(capsys, *args, "--force")
    assert rc == 0 and set(statuses(doc).values()) == {"ran"}, err

    cfg = json.loads((heads / "config.json").read_text())  # a changed input reruns its step and what follows
    cfg["note"] = "edited"
    (heads / "config.json").write_text(json.dumps(cfg))
    rc, doc, err = build(capsys, *args)
    assert rc == 0 and statuses(doc) == {"convert": "ran", "runtime-files": "ran", "validate": "ran"}, err


@pytest.fixture(scope="module")
def tiny8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny8"), seed=1, num_attention_heads=8, num_key_value_heads=2)


def test_no_tensorrt_llm_exits_3_before_any_work(
    tiny8: Path, tiny_heads4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    out = tmp_path / "eng"
    rc, _doc, err = build(
        capsys, "--profile", "hgx-h200-bf16-tp8", "--model", str(tiny8), "--medusa", str(tiny_heads4), "-o", str(out)
    )
    assert rc == 3
    assert "TensorRT-LLM is not installed" in err and "hint:" in err and "Traceback" not in err
    assert not out.exists()

    from medusa_trt.engines.build import execute, prepare
    from medusa_trt.errors import MissingDependencyError

    plan = prepare("hgx-h200-bf16-tp8", str(tiny8), medusa=str(tiny_heads4), output=out)
    with pytest.raises(MissingDependencyError) as e:
        execute(plan)
    assert e.value.hint is not None and "pip install 'medusa-trt[trtllm]'" in e.value.hint
    assert not out.exists()


def test_unsupported_tensorrt_llm_version_exits_3(
    tiny8: Path, tiny_heads4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = fake_trtllm_dist(tmp_path / "site", "1.3.0")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PATH", f"{install(tmp_path / 'bin')}:/usr/bin:/bin")
    rc, _doc, err = build(
        capsys,
        "--profile",
        "hgx-h200-bf16-tp8",
        "--model",
        str(tiny8),
        "--medusa",
        str(tiny_heads4),
        "-o",
        str(tmp_path / "eng"),
    )
    assert rc == 3 and "1.3.0 is not supported" in err


@pytest.fixture
def trtllm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in trtllm-build/serve on PATH and a tensorrt_llm 1.2.0 in the package metadata."""
    monkeypatch.syspath_prepend(str(fake_trtllm_dist(tmp_path / "site")))
    monkeypatch.setenv("PATH", f"{install(tmp_path / 'bin')}:/usr/bin:/bin")
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STANDIN_RECORD", str(record))
    return record


def test_trtllm_build_runs_the_planned_command(
    tiny8: Path, tiny_heads4: Path, tmp_path: Path, trtllm_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eng"
    args = ("--profile", "hgx-h200-bf16-tp8", "--model", str(tiny8), "--medusa", str(tiny_heads4), "-o", str(out))
    capsys.readouterr()
    assert cli(["build", *args, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    planned = next(s for s in dry["steps"] if s["name"] == "build")["argv"]
    rc, doc, err = build(capsys, *args)
    assert rc == 0, err
    assert statuses(doc) == {"convert": "ran", "build": "ran", "runtime-files": "ran", "serve-config": "ran"}
    ran = records(trtllm_env, "trtllm-build")
    assert len(ran) == 1 and ["trtllm-build", *ran[0]["argv"]] == planned
    m = json.loads((out / "medusa-trt.json").read_text())
    assert m["engine"] == "trtllm" and m["engine_dir"] == "engine" and m["tools"]["tensorrt_llm"] == "1.2.0"
    assert m["config"] == "medusa.yaml" and yaml.safe_load((out / "medusa.yaml").read_text()) == dry["medusa_yaml"]
    assert sorted(p.name for p in (out / "engine").glob("rank*.engine")) == [f"rank{r}.engine" for r in range(8)]
    log = (out / "logs" / "build.log").read_text()
    assert "building rank layer 2" in log and log.startswith("$ trtllm-build")
    assert next(c for c in m["commands"] if c["step"] == "build")["log"] == "logs/build.log"

    rc, doc, err = build(capsys, *args)  # resumed: the engine is not rebuilt
    assert statuses(doc)["build"] == "skipped" and len(records(trtllm_env, "trtllm-build")) == 1


def test_trtllm_build_failure_shows_the_log_tail(
    tiny8: Path,
    tiny_heads4: Path,
    tmp_path: Path,
    trtllm_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "7")
    out = tmp_path / "eng"
    rc, _doc, err = build(
        capsys, "--profile", "hgx-h200-bf16-tp8", "--model", str(tiny8), "--medusa", str(tiny_heads4), "-o", str(out)
    )
    assert rc == 1
    assert "build failed (exit 7)" in err and "out of memory while building" in err and "build.log" in err
    assert not (out / "medusa-trt.json").exists() and not (out / ".steps" / "build.json").exists()
    assert (out / ".steps" / "convert.json").exists(), "finished steps stay done for the retry"


def test_fp8_hub_build_takes_the_tokenizer_from_the_fetched_model(
    tiny_llama: Path, tiny_heads4: Path, tmp_path: Path
) -> None:
    """quantize.py's checkpoint has no tokenizer: runtime-files finds it in sources/model (the fetched hub model)."""
    from medusa_trt.engines.build import prepare
    from medusa_trt.engines.checkpoint_steps import runtime_files
    from medusa_trt.engines.trtllm import quantize_needed
    from medusa_trt.outputs import OwnedDir

    out = tmp_path / "eng"
    plan = prepare(
        "hgx-h200-fp8-tp8", "meta-llama/Llama-3.1-70B-Instruct", medusa=str(tiny_heads4), output=out, checks=False
    )
    assert plan.spec.model.local is None and quantize_needed(plan.spec)
    (out / "checkpoint").mkdir(parents=True)
    shutil.copytree(tiny_llama, out / "sources" / "model")
    runtime_files(plan.spec, OwnedDir(out.resolve(), "engine"))
    assert (out / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    assert (out / "medusa_tree.yaml").is_file() and not (out / "medusa.yaml").exists()  # serve-config writes it


def test_sigterm_stops_the_running_tool_and_records_no_step(
    tiny8: Path, tiny_heads4: Path, tmp_path: Path, trtllm_env: Path
) -> None:
    """A build stopped by SIGTERM (a scheduler's kill) stops trtllm-build too, exits 143, and the
    unfinished step is not marked done, so the next run redoes it."""
    pid_file, out = tmp_path / "build.pid", tmp_path / "eng"
    env = {**os.environ, "STANDIN_HANG": str(pid_file), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medusa_trt",
            "build",
            "--profile",
            "hgx-h200-bf16-tp8",
            "--model",
            str(tiny8),
            "--medusa",
            str(tiny_heads4),
            "-o",
            str(out),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + HANG_S
    while not (pid_file.is_file() and pid_file.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    tool = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # the tool was stopped, not orphaned
        for _ in range(100):
            os.kill(tool, 0)
            time.sleep(0.1)
    assert (out / ".steps" / "convert.json").exists() and not (out / ".steps" / "build.json").exists()


def test_hub_fetch_links_the_pinned_snapshot_and_records_its_commit(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FP8 builds from a hub id download for quantize.py through the converter's hub code (offline
    cache here): sources/model is the snapshot, and the manifest names its commit, not just 'main'."""
    import huggingface_hub.constants as hc

    from medusa_trt.checkpoint.sources import snapshot_commit
    from medusa_trt.engines.trtllm import fetch
    from medusa_trt.errors import CheckpointError

    cache = tmp_path / "hf" / "hub"
    fake_hub_cache(cache, "acme/tiny-llama", tiny_llama)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    local = tmp_path / "eng" / "sources" / "model"
    local.parent.mkdir(parents=True)
    fetch("acme/tiny-llama", None, local, "model")
    assert (local / "config.json").read_bytes() == (tiny_llama / "config.json").read_bytes()
    assert snapshot_commit(local) == SHA and not local.with_name("model.partial").exists()
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        fetch("acme/missing", None, tmp_path / "eng" / "sources" / "medusa", "heads")
