"""Reference-runtime decode benchmark: plain vs Medusa tokens/s, step time vs tree size, tokens/step.

    .venv/bin/python benchmarks/decode.py [--hidden 512 --layers 4 --vocab 2048 --tokens 96]
                                          [--tree nvidia_low_latency_15] [--heads trained|random] [--json]

Builds a random Llama 3 model of the given size (tests/helpers/models.py), Medusa heads, converts it with the
real converter, and loads it with the reference runtime on CPU (tp 1). ``trained`` heads are the
paper's initialisation (zero ResBlock, base lm_head): each head guesses the base model's next token,
which a random model's repetitive greedy output often accepts. ``random`` heads are near-useless.
The step-time curve times one verification forward over T tree tokens (root included) after a
``--context``-token prompt, against T = 1 (a plain decode step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CURVE = (1, 4, 8, 16, 32, 64)


def build(work: Path, a: argparse.Namespace) -> Path:
    from safetensors.torch import load_file

    from medusa_trt.checkpoint.convert import convert_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.helpers
    from tests.helpers.models import make_medusa_heads, make_tiny_llama

    model = make_tiny_llama(
        work / "model",
        seed=a.seed,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64,
        num_key_value_heads=max(1, a.hidden // 256),
        intermediate_size=a.hidden * 11 // 4,
        vocab_size=a.vocab,
        max_position_embeddings=2048,
    )
    lm_head = load_file(str(model / "model.safetensors"))["lm_head.weight"] if a.heads == "trained" else None
    heads = make_medusa_heads(
        work / "heads",
        hidden_size=a.hidden,
        vocab_size=a.vocab,
        num_heads=a.num_heads,
        scale=0.0 if lm_head is not None else 0.05,
        lm_head=lm_head,
    )
    ckpt = work / "ckpt"
    convert_checkpoint(model, ckpt, medusa=heads, tp=1, progress=False)
    return ckpt


def step_curve(engine: Any, context: int, reps: int) -> dict[int, float]:
    """Median seconds of one forward over T tree tokens, for T in CURVE."""
    import torch

    from medusa_trt.medusa.buffers import build_buffers
    from medusa_trt.medusa.trees import load_tree, sort_tree

    runner = engine._runner
    nodes = sort_tree(load_tree("mc_sim_7b_63"))  # any prefix of the sorted order is prefix-closed
    prompt = torch.randint(3, 300, (context,))
    out: dict[int, float] = {}
    for t in CURVE:
        buf = build_buffers(nodes[: t - 1]) if t > 1 else None
        runner.alloc(context + 64)
        runner.forward(prompt, torch.arange(context))
        times = []
        for _ in range(reps):
            ids = torch.randint(3, 300, (t,))
            pos = buf.position_ids + context if buf is not None else torch.tensor([context])
            t0 = time.perf_counter()
            runner.forward(ids, pos, buf.attn_mask if buf is not None else None)
            times.append(time.perf_counter() - t0)
            runner.model.length = context  # drop the tree: back to the prompt
        out[t] = statistics.median(times)
    return out


def run_generation(engine: Any, medusa: bool, tokens: int, repeats: int) -> dict[str, float]:
    from medusa_trt.runtime import SamplingParams

    best: dict[str, float] = {}
    for r in range(repeats):
        prompt = [(r * 31 + i * 17) % 300 + 3 for i in range(16)]
        gen = engine.generate(prompt, SamplingParams(max_tokens=tokens, stop_token_ids=()), medusa=medusa)
        t0 = time.perf_counter()
        n = sum(len(c.token_ids) for c in gen)
        wall = time.perf_counter() - t0
        st = gen.stats
        row = {
            "tokens": n,
            "steps": st.num_steps,
            "tokens_per_step": st.tokens_per_step,
            "tokens_per_s": n / wall,
            "step_ms": 1e3 * st.decode_s / max(st.num_steps, 1),
        }
        if not best or row["tokens_per_s"] > best["tokens_per_s"]:
            best = row
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--num-heads", type=int, default=3)
    p.add_argument("--heads", choices=["trained", "random"], default="trained")
    p.add_argument("--tree", default="nvidia_low_latency_15")
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from medusa_trt.runtime import load_engine

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        engine = load_engine(build(Path(tmp), a), tree=a.tree)
        run_generation(engine, False, 8, 1)  # warm-up
        plain = run_generation(engine, False, a.tokens, a.repeats)
        medusa = run_generation(engine, True, a.tokens, a.repeats)
        curve = step_curve(engine, a.context, reps=10)
        engine.close()
    doc = {
        "model": {
            "hidden": a.hidden,
            "layers": a.layers,
            "vocab": a.vocab,
            "medusa_heads": a.num_heads,
            "heads": a.heads,
        },
        "tree": a.tree,
        "tree_nodes": len(engine.tree),
        "threads": torch.get_num_threads(),
        "plain": plain,
        "medusa": medusa,
        "speedup": medusa["tokens_per_s"] / plain["tokens_per_s"],
        "step_ms_vs_tree_tokens": {str(t): 1e3 * s for t, s in curve.items()},
    }
    if a.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(
        f"model hidden={a.hidden} layers={a.layers} vocab={a.vocab}, {a.heads} heads x{a.num_heads}, "
        f"tree {a.tree} ({doc['tree_nodes']} nodes), {doc['threads']} threads"
    )
    print(f"{'mode':<8}{'tokens/s':>10}{'tokens/step':>13}{'step ms':>9}{'steps':>7}")
    for name, row in (("plain", plain), ("medusa", medusa)):
        print(
            f"{name:<8}{row['tokens_per_s']:>10.1f}{row['tokens_per_step']:>13.2f}{row['step_ms']:>9.2f}"
            f"{int(row['steps']):>7}"
        )
    print(f"speedup {doc['speedup']:.2f}x")
    print("verification forward vs tree tokens T (root included), context", a.context)
    base = curve[1]
    for t, s in curve.items():
        print(f"  T={t:<3} {1e3 * s:7.2f} ms  ({s / base:.2f}x of T=1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
