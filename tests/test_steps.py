"""steps.py: the one rule (a stamp of the inputs' hash and the outputs' fingerprint) in both its shapes."""

from __future__ import annotations

import json
from pathlib import Path

from medusa_trt import records
from medusa_trt.steps import Stage, Step, StepKind, StepRunner, StepStatus, digest


def _step(root: Path, value: int, calls: list[int]) -> Step:
    def make() -> None:
        calls.append(value)
        (root / "out").mkdir(exist_ok=True)
        (root / "out" / "v.txt").write_text(str(value))

    return Step("make", "make v.txt", ["make"], inputs={"value": value}, outputs=["out"], kind=StepKind.PYTHON,
                func=make)  # fmt: skip


def test_a_step_is_redone_only_when_its_inputs_or_outputs_changed(tmp_path: Path) -> None:
    calls: list[int] = []
    statuses = [StepRunner(tmp_path).run(_step(tmp_path, 1, calls)).status for _ in range(2)]
    assert statuses == [StepStatus.RAN, StepStatus.SKIPPED] and calls == [1]
    stamp = records.read_at(records.STAMP, tmp_path / ".steps" / "make.json")
    assert stamp["format"] == "medusa-trt-step" and stamp["input_hash"] and "out" in stamp["outputs"]
    assert StepRunner(tmp_path).run(_step(tmp_path, 2, calls)).status is StepStatus.RAN  # another input
    (tmp_path / "out" / "v.txt").write_text("edited, and longer")  # an output changed since its stamp
    assert StepRunner(tmp_path).run(_step(tmp_path, 2, calls)).status is StepStatus.RAN
    assert StepRunner(tmp_path, force=True).run(_step(tmp_path, 2, calls)).status is StepStatus.RAN
    assert calls == [1, 2, 2, 2] and (tmp_path / "out" / "v.txt").read_text() == "2"
    assert json.loads(json.dumps(_step(tmp_path, 2, calls).to_json()))["kind"] == "python"


def test_a_stage_is_keyed_by_its_inputs_and_done_only_while_its_files_are_as_stamped(tmp_path: Path) -> None:
    a, b = Stage.at(tmp_path, "hidden", {"n": 1}), Stage.at(tmp_path, "hidden", {"n": 2})
    assert a.dir != b.dir and a.dir.name.startswith("hidden-") and a.hash == digest({"n": 1})
    assert not a.is_ours() and not a.open().is_done() and a.is_ours()
    (a.dir / "shard-00000.safetensors").write_bytes(b"x" * 8)  # partial work: kept, continued by its owner
    assert not Stage.at(tmp_path, "hidden", {"n": 1}).open().is_done()
    assert (a.dir / "shard-00000.safetensors").read_bytes() == b"x" * 8
    a.finish({"shards": 1})
    assert Stage.at(tmp_path, "hidden", {"n": 1}).is_done() and not b.is_done()
    assert records.read_at(records.STAMP, a.dir / "done.json")["shards"] == 1
    (a.dir / "shard-00000.safetensors").write_bytes(b"y" * 9)  # a file changed after the stamp
    assert not a.is_done()
    a.finish({"shards": 1})
    (a.dir / "shard-00000.safetensors").unlink()  # or went away
    assert not a.is_done()
