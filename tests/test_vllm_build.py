"""`build --profile cpu-vllm`: the steps, the engine directory, resume, a hub model pinned to its commit, and
the output rules. Building needs no vLLM (only serving does), so these run everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.standins import SHA, fake_hub_cache


def _build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medusa_trt", "build", "--profile", "cpu-vllm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _doc(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose head size (32) vLLM's CPU attention takes."""
    from tests.helpers.models import make_tiny_llama
    from tests.helpers.vllm import VLLM_TINY

    return make_tiny_llama(tmp_path_factory.mktemp("vllm-tiny"), **VLLM_TINY)


@pytest.fixture(scope="module")
def heads3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import make_medusa_heads

    return make_medusa_heads(tmp_path_factory.mktemp("heads3"), hidden_size=128, vocab_size=320, num_heads=3)


@pytest.fixture(scope="module")
def heads4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import make_medusa_heads

    return make_medusa_heads(tmp_path_factory.mktemp("heads4"), hidden_size=128, vocab_size=320, num_heads=4)


def test_a_head_size_vllms_cpu_attention_lacks_is_refused(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    done = _build("--model", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(tmp_path / "e"))
    assert done.returncode == 4 and "head size 16; vLLM's CPU attention takes 32, 64" in done.stderr
    assert not (tmp_path / "e").exists()


def test_dry_run_lists_the_steps_and_writes_nothing(tmp_path: Path, model: Path, heads4: Path) -> None:
    out = tmp_path / "eng"
    doc = _doc(_build("--model", str(model), "--medusa", str(heads4), "-o", str(out), "--dry-run", "--json"))
    assert [s["name"] for s in doc["steps"]] == ["model-ref", "heads", "manifest", "serve"]
    serve = doc["steps"][-1]["argv"]
    assert serve[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    spec = json.loads(serve[serve.index("--speculative-config") + 1])
    assert spec == {"method": "medusa", "model": str(out.resolve() / "heads"), "num_speculative_tokens": 4}
    assert doc["spec"]["engine"] == "vllm" and doc["spec"]["tree"] == [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]
    assert any("top-1 chain of 4" in n for n in doc["notes"])
    assert not out.exists()


def test_build_resume_and_the_manifest(tmp_path: Path, model: Path, heads3: Path) -> None:
    out = tmp_path / "eng"
    args = ("--model", str(model), "--medusa", str(heads3), "-o", str(out), "--json")
    first = _doc(_build(*args))["manifest"]
    assert {c["step"]: c["status"] for c in first["commands"]} == {"model-ref": "ran", "heads": "ran"}
    again = _doc(_build(*args))["manifest"]
    assert {c["step"]: c["status"] for c in again["commands"]} == {"model-ref": "skipped", "heads": "skipped"}
    m = json.loads((out / "medusa-trt.json").read_text())
    assert m["engine"] == "vllm" and m["max_draft_len"] == 3 and m["num_medusa_heads"] == 3  # 3 heads: a chain of 3
    assert m["vllm"]["model"] == str(model.resolve()) and m["vllm"]["revision"] is None
    assert m["vllm"]["num_speculative_tokens"] == 3 and "--speculative-config" in m["vllm"]["args"]
    assert json.loads((out / "heads" / "config.json").read_text())["medusa_fc_bias"] is True
    ref = json.loads((out / "model.json").read_text())
    assert ref["model"] == str(model.resolve())  # a reference: nothing of the model is copied
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")] == ["heads/model.safetensors"]


def test_a_hub_model_is_pinned_to_its_commit(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    hub = tmp_path / "hf" / "hub"
    fake_hub_cache(hub, "example-org/tiny-llama", tiny_llama)
    out = tmp_path / "eng"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = _build("--model", "example-org/tiny-llama", "--medusa", str(tiny_heads), "-o", str(out), "--json", env=env)
    m = _doc(done)["manifest"]
    assert m["vllm"]["model"] == "example-org/tiny-llama" and m["vllm"]["revision"] == SHA
    args = m["vllm"]["args"]
    assert args[args.index("--revision") + 1] == SHA and args[args.index("--model") + 1] == "example-org/tiny-llama"


def test_a_hub_revision_that_cannot_be_pinned_is_refused(tmp_path: Path, tiny_heads: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = _build("--model", "example-org/absent", "--medusa", str(tiny_heads), "-o", str(tmp_path / "e"), env=env)
    assert done.returncode == 2 and "cannot pin example-org/absent@main to a commit" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["notes.txt", "model.json"])
def test_a_foreign_directory_is_never_written(tmp_path: Path, tiny_llama: Path, tiny_heads: Path, name: str) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / name).write_text("mine")
    done = _build("--model", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(out))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert (out / name).read_text() == "mine" and sorted(p.name for p in out.iterdir()) == [name]
