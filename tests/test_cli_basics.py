"""The CLI: exit codes, --json documents, --version, and a lazy --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medusa_trt import __version__
from medusa_trt.cli import run
from medusa_trt.plan.hw import detect_gpus

CPU_YAML = (Path(__file__).resolve().parents[1] / "profiles" / "cpu.yaml").read_text()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"medusa-trt {__version__}"


def test_profiles_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["profiles", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["profiles"]}
    assert {"cpu", "cpu-tp2", "hgx-h200-fp8-tp8", "hgx-h100-bf16-tp8"} <= set(rows)
    assert rows["cpu"]["runnable"] is True
    if not detect_gpus():
        assert doc["gpus"] == []
        assert rows["hgx-h200-fp8-tp8"]["runnable"] is False and "no NVIDIA GPU" in rows["hgx-h200-fp8-tp8"]["reason"]


def test_profiles_list_and_show_human(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["profiles", "list"]) == 0
    err = capsys.readouterr().err
    assert "hgx-h200-fp8-tp8" in err and "cpu-tp2" in err
    assert run(["profiles", "show", "hgx-h200-fp8-tp8"]) == 0
    err = capsys.readouterr().err
    assert "low_latency_gemm_plugin: fp8" in err and "15 nodes" in err


def test_profiles_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["profiles", "show", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "cpu" and doc["profile"]["engine"] == "reference" and doc["tree"]["nodes"] == 15
    assert run(["profiles", "show", "no-such-profile"]) == 2


def test_plan_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-405b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is True
    assert run(["plan", "-p", "hgx-h100-fp8-tp8", "-m", "llama-3.1-405b"]) == 0
    assert "result: fits" in capsys.readouterr().err
    # Does not fit: the JSON document still comes out, then exit 4 with the shortfall.
    assert run(["plan", "-p", "hgx-h100-bf16-tp8", "-m", "llama-3.1-405b", "--json"]) == 4
    out = capsys.readouterr()
    assert json.loads(out.out)["fits"] is False
    assert "short by" in out.err and "hint:" in out.err
    bad = tmp_path / "bad.yaml"
    bad.write_text(CPU_YAML.replace("  count: 1", "  count: one"))
    assert run(["plan", "-p", str(bad), "-m", "llama-3.1-8b"]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    assert run(["plan", "-p", "cpu", "-m", "llama-9"]) == 2
    assert run(["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-70b", "--tokens-per-step", "9"]) == 2
    assert run(["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-70b", "--num-medusa-heads", "0"]) == 2
    assert (
        run(["plan", "-p", "hgx-h200-fp8-tp8", "-m", "llama-3.1-70b", "--num-medusa-heads", "2"]) == 2
    )  # tree too deep


def test_user_yaml_path_works_like_a_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(CPU_YAML.replace("name: cpu", "name: mine").replace("memory_gib: 8", "memory_gib: 64"))
    assert run(["plan", "-p", str(mine), "-m", "llama-3.2-1b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["profile"]["name"] == "mine" and doc["memory_gib"]["available"] == 64


def test_subprocess_exit_code_and_lazy_imports(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "medusa_trt", "plan", "-p", "hgx-h100-bf16-tp8", "-m", "llama-3.1-405b"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 4, proc.stderr
    assert "error: llama-3.1-405b does not fit" in proc.stderr and "Traceback" not in proc.stderr
    probe = (
        "import sys, contextlib, io\n"
        "from medusa_trt.cli import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [run(['--help']), run(['plan', '-p', 'hgx-h200-fp8-tp8', '-m', 'llama-3.1-70b', '--json'])]\n"
        "    codes += [run([*c.split(), '--help']) for c in ('demo', 'convert', 'build', 'run', 'bench', 'plan',\n"
        "              'profiles list', 'profiles show', 'heads train', 'tree accuracy', 'tree build', 'tree sweep')]\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'tensorrt_llm', 'fastapi', 'uvicorn', 'safetensors',\n"
        "                           'matplotlib', 'huggingface_hub', 'numpy') if m in sys.modules)\n"
        "print(sorted(set(codes)), heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0] []", proc.stdout


def test_unexpected_error_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import medusa_trt.plan

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("boom [x]")

    monkeypatch.setattr(medusa_trt.plan, "preflight_report", boom)
    assert run(["plan", "-p", "cpu", "-m", "llama-3.1-8b"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == ["error: ValueError: boom [x]", "hint: Rerun with --debug for the traceback."]
    assert run(["--debug", "plan", "-p", "cpu", "-m", "llama-3.1-8b"]) == 1
    assert "Traceback" in capsys.readouterr().err
