"""Diagnostics: `-v` and MEDUSA_TRT_LOG_LEVEL show debug records on stderr; stdout stays one JSON document."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medusa_trt import logs
from medusa_trt.cli import run

PLAN = ["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-405b", "--json"]
PROFILE_LINE = "medusa-trt DEBUG medusa_trt.config.profile: profile 'hgx-h200-fp8-tp8': "


@pytest.fixture(autouse=True)
def _quiet_after() -> Iterator[None]:
    """Leave the package logger as a plain run leaves it (warnings only) for the tests that follow."""
    yield
    logs.configure(logging.WARNING)


def test_verbose_logs_debug_and_json_stays_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(PLAN) == 0
    quiet = capsys.readouterr()
    assert "DEBUG" not in quiet.err  # default: warnings and errors only
    assert run(["-v", *PLAN]) == 0
    loud = capsys.readouterr()
    assert PROFILE_LINE in loud.err
    assert loud.out.endswith("}\n")
    # the same document (bar the free disk space, which moves between runs on a shared machine)
    doc, plain = json.loads(loud.out), json.loads(quiet.out)
    assert doc.keys() == plain.keys() and doc["fits"] is True
    assert [(c["name"], c["verdict"]) for c in doc["checks"]] == [(c["name"], c["verdict"]) for c in plain["checks"]]


def test_log_level_from_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.LOG_LEVEL_ENV, "DEBUG")
    assert run(PLAN) == 0
    assert PROFILE_LINE in capsys.readouterr().err
    monkeypatch.setenv(logs.LOG_LEVEL_ENV, "info")
    assert run(PLAN) == 0
    assert "DEBUG" not in capsys.readouterr().err
    monkeypatch.setenv(logs.LOG_LEVEL_ENV, "loud")
    assert run(PLAN) == 2  # a usage error, before any work
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: {logs.LOG_LEVEL_ENV}='loud' is not a log level" in captured.err
    assert "hint: Use one of debug, info, warning, error" in captured.err


def test_level_from() -> None:
    assert logs.level_from(True, {logs.LOG_LEVEL_ENV: "error"}) == logging.DEBUG  # -v wins
    assert logs.level_from(False, {}) == logging.WARNING
    assert logs.level_from(False, {logs.LOG_LEVEL_ENV: " Warning "}) == logging.WARNING
    assert logs.level_from(False, {logs.LOG_LEVEL_ENV: "error"}) == logging.ERROR


def test_build_dry_run_in_a_process_logs_each_value_and_its_source(
    tiny_llama: Path, tiny_heads: Path, tmp_path: Path
) -> None:
    out = tmp_path / "engine"
    argv = ["-v", "build", "-p", "cpu-tp2", "-m", str(tiny_llama), "--medusa", str(tiny_heads), "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k != logs.LOG_LEVEL_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "medusa_trt", *argv, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # the whole of stdout is the document: no log line leaked into it
    assert doc["dry_run"] is True and doc["spec"]["tp"] == 2
    debug = [line for line in proc.stderr.splitlines() if line.startswith("medusa-trt DEBUG ")]
    assert "medusa-trt DEBUG medusa_trt.engines.spec: build tp = 2 (from profile parallelism.tp)" in debug
    assert f'medusa-trt DEBUG medusa_trt.engines.spec: build output = "{out}" (from flag --output)' in debug
    assert not out.exists()  # a dry run writes nothing
