"""What vLLM's ``stream_options.continuous_usage_stats`` (guidellm asks for it) costs a streamed token.

    python benchmarks/continuous_usage.py --engine ENGINE_DIR [--num-prompts 16] [--max-tokens 64] [--rounds 4]

One server (`medusa-trt run ENGINE_DIR --no-adapt` on a free loopback port: every request takes the same
steps however it is asked) gets the same greedy requests (``bench_agreement.write_prompts``), each sent
twice in a row, once with ``include_usage`` only (as ``bench`` and aiperf ask) and once with
``continuous_usage_stats`` as well (as guidellm asks), which of the two first alternating from one
request to the next, over one kept-alive connection. Prints the median TPOT (first to last text chunk
over the tokens after the first) of each, their ratio, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_agreement import write_prompts  # a script beside this one


def tpot_ms(client: Any, url: str, body: dict[str, Any]) -> float:
    """First to last chunk with text, over the tokens after the first (ignore_eos: max_tokens of them)."""
    t0, times = time.perf_counter(), []
    with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
                if choices[0].get("text"):
                    times.append(time.perf_counter() - t0)
    return (times[-1] - times[0]) * 1e3 / (body["max_tokens"] - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    a.engine = a.engine.resolve()

    import httpx

    from medusa_trt.bench.server import engine_server

    got: dict[bool, list[float]] = {False: [], True: []}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp, engine_server(a.engine, run_args=("--no-adapt",)) as url:
        prompts = [json.loads(x)["text"] for x in write_prompts(a, Path(tmp) / "p.jsonl").read_text().splitlines()]
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        with httpx.Client(timeout=300) as c:
            for r in range(a.rounds + 1):  # round 0 warms the server up, untimed
                for i, prompt in enumerate(prompts):
                    for cus in (False, True) if (r + i) % 2 == 0 else (True, False):
                        opts = {"include_usage": True, **({"continuous_usage_stats": True} if cus else {})}
                        body = {"model": model, "prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0}
                        body |= {"stream": True, "ignore_eos": True, "stream_options": opts}
                        t = tpot_ms(c, url, body)
                        if r:
                            got[cus].append(t)
                loads.append(os.getloadavg()[0])
    plain, cont = (statistics.median(got[k]) for k in (False, True))
    doc = {
        "median_tpot_ms_include_usage": round(plain, 3),
        "median_tpot_ms_continuous_usage_stats": round(cont, 3),
        "ratio": round(cont / plain, 3),
        "requests_each": len(got[False]),
        "load_average": [round(x, 2) for x in loads],
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
