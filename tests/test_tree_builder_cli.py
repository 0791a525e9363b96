"""`medusa-trt tree build` through the real CLI: YAML and JSON output, step times, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medusa_trt.cli import run
from medusa_trt.medusa.trees import load_tree

ACC = "0.6,0.2,0.1\n0.5,0.3,0.1\n"


@pytest.fixture()
def acc_csv(tmp_path: Path) -> Path:
    p = tmp_path / "acc.csv"
    p.write_text(ACC)
    return p


def test_build_json(acc_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tree", "build", "--accuracy", str(acc_csv), "--nodes", "5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["choices"] == [[0], [0, 0], [1], [0, 1], [2]]
    assert doc["expected_tokens_per_step"] == pytest.approx(2.38)


def test_build_yaml_loads_as_a_tree(acc_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.yaml"
    assert run(["tree", "build", "-a", str(acc_csv), "-n", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "expected_tokens_per_step: 2.1000" in printed
    assert load_tree(str(out)) == [[0], [0, 0], [1]]


def test_build_with_step_times(acc_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = tmp_path / "steps.csv"
    st.write_text("nodes,step_ms\n0,10\n1,10\n2,10.2\n6,30\n")  # cheap up to 2 nodes, then steep
    assert run(["tree", "build", "-a", str(acc_csv), "--step-times", str(st), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes"] == 2 and doc["max_draft_len"] == 2
    assert doc["choices"] == [[0], [0, 0]]
    assert [c["nodes"] for c in doc["curve"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("args", "code", "msg"),
    [
        (["--nodes", "50"], 2, "only 12 nodes fit"),
        (["--max-topk", "0"], 2, "at least 1"),
    ],
)
def test_build_errors(acc_csv: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, msg: str) -> None:
    assert run(["tree", "build", "-a", str(acc_csv), *args]) == code
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_missing_and_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["tree", "build", "-a", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read accuracy table" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("0.5,x\n")
    assert run(["tree", "build", "-a", str(bad)]) == 2
    assert "not a number" in capsys.readouterr().err


def test_build_with_a_profile_uses_its_predicted_step_times(acc_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medusa_trt.config.model import resolve_model
    from medusa_trt.config.profile import load_profile
    from medusa_trt.plan import step_time_curve

    args = ["tree", "build", "-a", str(acc_csv), "--profile", "hgx-h200-fp8-tp8", "--model", "llama-3.1-70b"]
    assert run([*args, "--nodes", "12", "--context-len", "2048", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    curve = step_time_curve(load_profile("hgx-h200-fp8-tp8"), resolve_model("llama-3.1-70b"), 12, 2048)
    assert sorted(curve) == list(range(13)) and curve[0] < curve[12]  # more tokens verified: never free
    assert doc["step_ms"] == pytest.approx(curve[doc["nodes"]])
    assert {c["nodes"]: c["step_ms"] for c in doc["curve"]} == pytest.approx({n: curve[n] for n in range(1, 13)})
