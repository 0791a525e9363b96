"""vLLM's side of ``benchmarks/decode.py --vs-vllm``: run with vLLM's own interpreter (its CPU build lives in
a separate environment), prints one JSON document on its last stdout line.

    VLLM_PYTHON benchmarks/vllm_decode.py --model HF_DIR [--heads VLLM_HEADS_DIR --k 4]
                                          --prompts PROMPTS.json --max-tokens 128 --repeats 3

One request at a time, greedy, ``ignore_eos`` (every request yields exactly --max-tokens tokens), the prompts
given as token ids so both engines see the same input. Tokens/s is the completion tokens over the wall
time of the ``generate`` calls (prefill included, as for the reference runtime's side); tokens/step comes
from vLLM's spec-decode counters (1 + accepted / drafts; vllm-project/vllm ``vllm/v1/spec_decode/metrics.py``).
Every pass is timed; the best is reported, with every pass's output checked equal to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def counters(llm: Any) -> dict[str, float]:
    """vLLM's spec-decode counters by name (totals since the engine started)."""
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_accepted_tokens"):
            out[m.name] = float(getattr(m, "value", 0) or 0)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--heads", default=None, help="vLLM-format Medusa heads (model_type medusa); none: plain")
    p.add_argument("--k", type=int, default=4, help="num_speculative_tokens (a top-1 chain of K heads)")
    p.add_argument("--prompts", required=True, help="JSON list of token id lists")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile; starts faster)")
    a = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from vllm import LLM, SamplingParams

    prompts = json.loads(open(a.prompts).read())  # noqa: SIM115 - read once
    kw: dict[str, Any] = {}
    if a.heads:
        kw["speculative_config"] = {"method": "medusa", "model": a.heads, "num_speculative_tokens": a.k}
    t0 = time.perf_counter()
    llm = LLM(
        model=a.model,
        dtype="float32",
        max_model_len=512,
        max_num_seqs=1,
        enforce_eager=a.eager,
        disable_log_stats=False,
        seed=0,
        **kw,
    )
    load_s = time.perf_counter() - t0
    sp = SamplingParams(temperature=0.0, max_tokens=a.max_tokens, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompts[0]}], sp, use_tqdm=False)  # warm-up
    outputs: list[list[int]] | None = None
    passes = []
    for _ in range(a.repeats):
        before = counters(llm)
        wall, tokens, got = 0.0, 0, []
        for ids in prompts:
            t = time.perf_counter()
            res = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
            wall += time.perf_counter() - t
            toks = list(res[0].outputs[0].token_ids)
            tokens += len(toks)
            got.append(toks)
        after = counters(llm)
        drafts = after.get("vllm:spec_decode_num_drafts", 0) - before.get("vllm:spec_decode_num_drafts", 0)
        acc = after.get("vllm:spec_decode_num_accepted_tokens", 0) - before.get(
            "vllm:spec_decode_num_accepted_tokens", 0
        )
        passes.append(
            {"tokens_per_s": tokens / wall, "tokens_per_step": 1 + acc / drafts if drafts else 1.0, "tokens": tokens}
        )
        if outputs is None:
            outputs = got
        elif got != outputs:
            passes[-1]["differs_from_first_pass"] = True
    best = max(passes, key=lambda r: r["tokens_per_s"])
    doc = {"load_s": load_s, "passes": passes, **best, "outputs": outputs}
    sys.stdout.write("\n" + json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
