"""vLLM's chain beside our reference runtime's chain and tree, same heads, on this machine.

    python benchmarks/vllm_engines.py [--cache DIR | --tiny] [--out DIR] [--num-prompts 8] [--max-tokens 128]
                                      [--input-len 64] [--bias-check]

Needs vLLM (its CPU build): installed here, or in an environment named by MEDUSA_TRT_VLLM_PYTHON.
The model, heads and tree are the demo's (`medusa-trt demo --cache-dir DIR` first; default: the demo's
cache), or with --tiny a small Llama 3 (hidden 128, head size 32) pre-trained here for a minute on a
small repetitive corpus, with 4 heads trained by `heads train`'s code and the tree `tree build` picks
from their accuracy table. Three engine directories are built from the same heads: vLLM (`cpu-vllm`,
a top-1 chain of min(heads, 4)), the reference runtime with the same chain, and the reference
runtime with the tree. Then `medusa-trt bench --engine ... --compare-no-medusa` measures them one after
the other (plain decoding comes from the reference engine with Medusa off), greedy, and writes the
table, `side.json` and `side.png` under --out.

`--bias-check` also serves the heads to vLLM as FasterDecoding files, through vLLM's own loader (which
builds the ResBlocks without bias when the config does not say `medusa_fc_bias`), and prints the
accepted tokens per chain position with and without the biases, from vLLM's counters, on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "medusa_trt", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"medusa-trt {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def build_all(model: Path, heads: Path, tree: Path, out: Path, k: int) -> dict[str, Path]:
    chain = json.dumps([[0] * d for d in range(1, k + 1)])
    dirs = {"vllm": out / "vllm-chain", "chain": out / "reference-chain", "tree": out / "reference-tree"}
    cli("build", "--profile", "cpu-vllm", "--model", str(model), "--medusa", str(heads), "-o", str(dirs["vllm"]))
    for key, tree_arg in (("chain", chain), ("tree", str(tree))):  # the reference engine, same heads, two trees
        cli(
            "build",
            "--profile",
            "cpu",
            "--model",
            str(model),
            "--medusa",
            str(heads),
            "--tree",
            tree_arg,
            "-o",
            str(dirs[key]),
        )
    return dirs


def side_by_side(dirs: dict[str, Path], out: Path, num_prompts: int, max_tokens: int, input_len: int) -> None:
    t0 = time.perf_counter()
    done = cli(
        "bench",
        *(a for d in dirs.values() for a in ("--engine", str(d))),
        "--compare-no-medusa",
        "--num-prompts",
        str(num_prompts),
        "--max-tokens",
        str(max_tokens),
        "--input-len",  # the builtin prompts cut to this many tokens: a tiny vocabulary makes them long
        str(input_len),
        "--json-out",
        str(out / "side.json"),
        "--plot",
        str(out / "side.png"),
    )
    print(done.stderr)
    print(markdown(json.loads((out / "side.json").read_text())))
    print(f"bench took {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")


def markdown(doc: dict) -> str:
    """The side-by-side table as Markdown: a row per engine column, the figures across."""
    lines = [
        "| engine | drafting | tokens/s/user | TTFT ms | TPOT ms | tokens/step | tokens/s end to end | completed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        name, drafting = r["engine"].split(": ", 1)
        mode = {None: "", True: ", Medusa", False: ", plain (Medusa off)"}[r["medusa"]]
        tps = r["output_tokens_per_s_per_user"]["mean"]
        # per request, output tokens over the whole request (TTFT included): immune to chunks that reach a
        # starved client in one burst, which make TPOT (and its inverse, tokens/s/user) near zero (infinite)
        e2e = [q["output_tokens"] / q["e2el_ms"] * 1e3 for q in r["requests"] if q["ok"] and q["e2el_ms"]]
        lines.append(
            f"| {name} | {drafting}{mode} | {tps:.1f} | {r['mean_ttft_ms']:.1f} | {r['mean_tpot_ms']:.2f} "
            f"| {r['tokens_per_step']:.2f} | {sum(e2e) / max(1, len(e2e)):.1f} "
            f"| {r['completed']}/{r['completed'] + r['failed']} |"
        )
    same = [c["identical"] for c in doc["identical_outputs"]]
    lines.append(f"\ngreedy outputs identical across all columns: {all(same) if same else 'not compared'}")
    return "\n".join(lines)


def bias_check(vllm_dir: Path, heads: Path, num_prompts: int, max_tokens: int, input_len: int) -> None:
    """The same vLLM command, its heads swapped for the FasterDecoding files (vLLM's loader drops the biases)."""
    import httpx

    from medusa_trt import spec_counters
    from medusa_trt.bench.datasets import draw_prompts, load_prompts, load_tokenizer
    from medusa_trt.supervise import Supervisor, free_port

    tok = load_tokenizer(vllm_dir)  # the model's, through the engine's model.json
    prompts = [p.text for p in draw_prompts(load_prompts("builtin"), num_prompts, 0, input_len, tok)]
    cmd = json.loads(cli("run", str(vllm_dir), "--print-cmd", "--json").stdout)
    for label, heads_dir in (
        ("ours (vLLM's format, biases kept)", vllm_dir / "heads"),
        ("vLLM's loader on FasterDecoding files", heads),
    ):
        port = free_port()
        argv = list(cmd["argv"])
        i = argv.index("--speculative-config")
        speculative = json.loads(argv[i + 1])
        speculative["model"] = str(heads_dir)
        argv[i + 1] = json.dumps(speculative)
        argv[argv.index("--port") + 1] = str(port)
        # started, waited for and stopped (its whole process group) as `run` does
        with Supervisor(argv, env=cmd["env"], host="127.0.0.1", port=port, log=Path(os.devnull)) as sup:
            url = sup.url
            before = spec_counters.read(url)
            for p in prompts:
                body = {
                    "model": cmd["model_name"],
                    "messages": [{"role": "user", "content": p}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=None).raise_for_status()
            after = spec_counters.read(url)
            assert before is not None and after is not None
            counted = after.minus(before)
            print(
                f"{label}: accepted per position {counted['num_accepted_tokens_per_pos']} over {counted['num_drafts']} drafts, vLLM's mean acceptance length {counted['acceptance_length']:.3f}"
            )
    print(f"load average {os.getloadavg()}")


TINY_CORPUS = (
    "def main():\n    return 0\n\nclass Model:\n    def __init__(self, name):\n        self.name = name\n"
    "The quick brown fox jumps over the lazy dog. Speculative decoding drafts tokens and verifies them.\n"
) * 8
TINY_PROMPTS = ["def main():\n", "The quick brown fox", "class Model:\n", "Speculative decoding", "return 0\n"]


def make_tiny(root: Path) -> tuple[Path, Path, Path]:
    """A small pre-trained Llama (head size 32), 4 trained heads, and the tree for their accuracy table."""
    import torch

    from medusa_trt.demo.pretrain import ModelRecipe, pretrain
    from medusa_trt.train.trainer import TrainConfig, train_heads

    model, heads, tree = root / "model", root / "heads", root / "tree.yaml"
    if not (model / "config.json").is_file():
        torch.set_num_threads(2)
        recipe = ModelRecipe(
            vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, steps=50, batch_size=8, seq_len=64, warmup=10,
        )  # fmt: skip
        pretrain(model, TINY_CORPUS, recipe)
    if not (heads / "accuracy.csv").is_file():
        cfg = TrainConfig(num_heads=4, steps=150, lr=3e-3, batch_size=8, seq_len=64, gen_tokens=48, progress=False)
        train_heads(model, heads, data=TINY_PROMPTS, config=cfg)
    if not tree.is_file():
        cli("tree", "build", "--accuracy", str(heads / "accuracy.csv"), "--nodes", "8", "--out", str(tree))
    return model, heads, tree


def main() -> None:
    from medusa_trt.demo.pipeline import default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=default_cache_dir(), help="the demo's cache directory")
    ap.add_argument("--out", type=Path, default=Path("vllm-engines"))
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="a small model made here instead of the demo's")
    ap.add_argument("--bias-check", action="store_true")
    ap.add_argument("--no-side-by-side", action="store_true", help="only the --bias-check")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        model, heads, tree = make_tiny(args.out / "tiny")
    else:
        model, heads, tree = args.cache / "model", args.cache / "heads", args.cache / "tree.yaml"
        for p in (model, heads, tree):
            if not p.exists():
                sys.exit(f"{p} not found: run `medusa-trt demo --cache-dir {args.cache}` first, or pass --tiny")
    k = min(4, json.loads((heads / "config.json").read_text())["medusa_num_heads"])
    print(f"model {model}, heads {heads}, tree {tree}; load average {os.getloadavg()}")
    dirs = build_all(model, heads, tree, args.out, k)
    if not args.no_side_by_side:
        side_by_side(dirs, args.out, args.num_prompts, args.max_tokens, args.input_len)
    if args.bias_check:
        bias_check(dirs["vllm"], heads, args.num_prompts, args.max_tokens, args.input_len)


if __name__ == "__main__":
    main()
