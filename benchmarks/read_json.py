"""What bounding every JSON we read costs: ``fsio.read_json`` against a bare ``json.loads``.

The document is shaped like a Llama 3 ``tokenizer.json`` (a 128,000-entry BPE vocabulary and
280,000 merges, about 9 MiB), the largest JSON file medusa-trt reads (at ``convert``, before it is
copied, and when ``run`` loads the tokenizer). The two readers are interleaved, so that a busy
machine slows both alike; the report gives medians and the load average next to them.

    python benchmarks/read_json.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from medusa_trt import fsio


def llama3_like_tokenizer() -> dict[str, object]:
    vocab = {f"tok{i}_{'x' * (i % 8 + 1)}": i for i in range(128_000)}
    merges = [[f"a{i}", f"b{i}"] for i in range(280_000)]
    added = [{"id": 128_000 + i, "content": f"<|reserved_special_token_{i}|>", "special": True} for i in range(256)]
    return {"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": merges}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        path.write_text(json.dumps(llama3_like_tokenizer()))
        bare: list[float] = []
        bounded: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            json.loads(path.read_bytes())
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fsio.read_json(path, "tokenizer.json")
            bounded.append(time.perf_counter() - t0)
        size = path.stat().st_size
    doc = {
        "file_mib": round(size / 2**20, 2),
        "repeats": args.repeats,
        "json_loads_s_median": round(statistics.median(bare), 3),
        "fsio_read_json_s_median": round(statistics.median(bounded), 3),
        "overhead": round(statistics.median(bounded) / statistics.median(bare) - 1, 3),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
