"""benchmarks/compile_step.py's fixed-shape step (the one its torch.compile and AOTInductor variants
compile) computes what the runtime's step computes: on a tiny real checkpoint, in float32 and bfloat16,
a greedy chain of plain steps gives the runtime's tokens and one 5-node tree step the runtime's argmax
per node; the benchmark itself runs end to end (no compiler: that takes minutes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.checkpoints import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compile_step  # noqa: E402 (a script in benchmarks/, not a package)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-4), ("bfloat16", 0.15)])
def test_the_fixed_shape_step_reproduces_the_runtime(
    tiny_llama: Path, tiny_heads4: Path, tmp_path: Path, dtype: str, tol: float
) -> None:
    ckpt = make_checkpoint(tiny_llama, tmp_path / "ckpt", heads=tiny_heads4, dtype=dtype)
    setup = compile_step.Setup(str(ckpt), context=12, capacity=12 + 24 + 8)
    try:
        eager = compile_step.outputs(setup, compile_step.make_step(setup, "eager", tmp_path), chain=24)
        static = compile_step.outputs(setup, compile_step.make_step(setup, "static-eager", tmp_path), chain=24)
    finally:
        setup.engine.close()
    assert len(set(eager["tokens"])) > 1  # a chain that moves, so a wrong cache slot or mask would show
    assert static["tokens"] == eager["tokens"]
    assert bool((static["tree"].argmax(-1) == eager["tree"].argmax(-1)).all())
    scale = float(eager["logits"].abs().max())
    assert float((static["logits"] - eager["logits"]).abs().max()) <= tol * scale
    assert float((static["tree"] - eager["tree"]).abs().max()) <= tol * scale


def test_the_benchmark_runs_and_reports_identical_outputs(tiny_llama: Path, tiny_heads4: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tiny_llama, tmp_path / "ckpt", heads=tiny_heads4)
    args = [str(ckpt), "--variants", "eager,eager-repacked,static-eager", "--start-rounds", "0"]
    args += ["--steps", "3", "--rounds", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compile_step.py"), *args, "--chain", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert set(doc["ms"]) == {"eager", "eager-repacked", "static-eager"} and len(doc["loads"]) == 2
    assert all(ms[k]["wall"] > 0 and ms[k]["cpu"] >= 0 for ms in doc["ms"].values() for k in ("plain", "tree5"))
    assert doc["outputs"]["static-eager"]["chain_identical"] and doc["outputs"]["static-eager"]["tree_argmax_identical"]
    assert doc["outputs"]["eager"]["chain_max_abs_diff"] == 0.0  # eager against itself: the same kernels
    assert doc["outputs"]["eager-repacked"]["chain_identical"]  # the same kernels over weights packed again
