"""benchmarks/gpu_check.py runs on CPU at its tiny size (as CI runs it) and writes a sane document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_on_cpu_writes_a_sane_document(tmp_path: Path) -> None:
    from medusa_trt.medusa.tree_builder import parse_step_times

    out = tmp_path / "check.json"
    args = ["--device", "cpu", "--size", "tiny", "--prompts", "2", "--max-tokens", "12", "--repeats", "2"]
    args += ["--context", "32", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["size"] == "tiny" and doc["model"]["vocab_size"] == 320
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 0.1)):
        row = doc["logits"][dtype]
        assert 0 <= row["max_abs_diff"] <= tol * max(1.0, row["logit_scale"]) and row["top1_agreement"] >= 0.9
    assert doc["greedy_lossless"]["identical"] is True and doc["greedy_lossless"]["tokens_per_step"] >= 1.0
    assert doc["exact_sampling"]["same_seed_medusa_on_off_identical"] is True
    assert doc["exact_sampling"]["distinct_texts_over_4_seeds"] > 1
    assert set(doc["decode_tokens_per_s"]) == {"plain", "medusa", "transformers_static"}
    assert all(v > 0 for v in doc["decode_tokens_per_s"].values())
    # the file itself is what `tree build --step-times` reads: draft nodes 0..63, i.e. 1..64 tree tokens
    times = parse_step_times(out.read_text(), str(out))
    assert sorted(times) == [0, 1, 3, 7, 15, 31, 63] and all(ms > 0 for ms in times.values())
    assert isinstance(doc["wall_s"], float) and doc["wall_s"] > 0  # recorded; timing claims live in benchmarks/
