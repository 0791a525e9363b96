"""One-command check of the reference runtime on a CUDA GPU (or, smaller, on CPU): one JSON document.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--device cuda|cpu] [--size 1b|small|tiny]

On a synthetic Llama 3 model (random weights; ``1b`` has Llama 3.2 1B's shapes, the default with
CUDA; ``small`` is the default on CPU; ``tiny`` is what CI runs) with Medusa heads initialised from
the lm_head, it records:

- ``logits``: the runtime's logits against Hugging Face transformers on the same weights, in float32
  and bfloat16 (max absolute difference, top-1 agreement over the prompt's positions);
- ``greedy_lossless``: greedy Medusa output equals plain greedy output (float32);
- ``exact_sampling``: seeded sampling gives the same tokens with Medusa on and off, and different
  seeds give different texts;
- ``decode_tokens_per_s``: plain, Medusa (adaptive) and transformers ``generate`` with a static
  cache, decode phase only (the prefill's time and token excluded);
- ``step_ms``: the verification step time against draft nodes 0..63 (tree tokens 1..64); the whole
  file is accepted by ``medusa-trt tree build --step-times``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
}
VOCAB = {"1b": 128256, "small": 4096, "tiny": 320}
NODES = (0, 1, 3, 7, 15, 31, 63)  # tree tokens 1, 2, 4, ..., 64


def make_model(work: Path, size: str, num_heads: int) -> tuple[Path, Path]:
    """A random Llama 3 HF dir of ``size`` and lm_head-initialised Medusa heads."""
    from safetensors.torch import load_file

    from medusa_trt.demo.synthetic import make_medusa_heads, make_tiny_llama

    shape = SIZES[size]
    model = make_tiny_llama(
        work / "model",
        seed=0,
        vocab_size=VOCAB[size],
        intermediate_size=shape["hidden_size"] * 4,
        max_position_embeddings=2048,
        **shape,
    )
    lm_head = load_file(str(model / "model.safetensors"))["lm_head.weight"]
    heads = make_medusa_heads(
        work / "heads",
        hidden_size=shape["hidden_size"],
        vocab_size=VOCAB[size],
        num_heads=num_heads,
        scale=0.0,
        lm_head=lm_head,
    )
    return model, heads


def convert(model: Path, heads: Path, out: Path, dtype: str) -> Path:
    from medusa_trt.checkpoint.convert import convert_checkpoint

    convert_checkpoint(model, out, medusa=heads, tp=1, dtype=dtype, progress=False)
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def logits_check(model: Path, ckpt: Path, dtype: str, device: str, prompt: list[int]) -> dict[str, float]:
    """Runtime logits vs transformers' on the same weights and dtype, over every prompt position."""
    import torch
    from transformers import LlamaForCausalLM

    from medusa_trt.runtime.config import read_checkpoint
    from medusa_trt.runtime.model import LlamaShard, LocalComm

    ids = torch.tensor(prompt, device=device)
    shard = LlamaShard(read_checkpoint(ckpt), 0, device, LocalComm())
    shard.alloc(len(prompt))
    ours = shard.forward(ids, torch.arange(len(prompt), device=device))  # [T, V] float32
    assert ours is not None
    del shard
    hf = LlamaForCausalLM.from_pretrained(str(model), torch_dtype=getattr(torch, dtype)).to(device).eval()
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].float()  # [T, V]
    del hf
    return {
        "max_abs_diff": float((ours - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "top1_agreement": float((ours.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def tokens(engine: Any, prompt: list[int], medusa: bool, **kw: Any) -> tuple[list[int], Any]:
    from medusa_trt.runtime import SamplingParams

    gen = engine.generate(prompt, SamplingParams(**kw), medusa=medusa)
    return [t for c in gen for t in c.token_ids], gen.stats


def generation_checks(engine: Any, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """Greedy lossless, exact-sampling smoke, and decode tokens/s of plain and Medusa decoding."""
    lossless, steps, emitted = True, 0, 0
    for p in prompts:
        plain, _ = tokens(engine, p, False, max_tokens=max_tokens)
        fast, st = tokens(engine, p, True, max_tokens=max_tokens)
        lossless &= fast == plain
        steps, emitted = steps + st.num_steps, emitted + st.completion_tokens - 1
    same_seed, texts = True, set()
    for seed in range(4):
        kw = {"max_tokens": 32, "temperature": 1.0, "top_p": 0.95, "seed": seed}
        on, _ = tokens(engine, prompts[0], True, **kw)
        off, _ = tokens(engine, prompts[0], False, **kw)
        same_seed &= on == off
        texts.add(tuple(on))
    rate: dict[str, float] = {}
    for name, medusa in (("plain", False), ("medusa", True)):
        n, secs = 0, 0.0
        for p in prompts:
            _, st = tokens(engine, p, medusa, max_tokens=max_tokens)
            n, secs = n + st.completion_tokens - 1, secs + st.decode_s
        rate[name] = n / secs
    return {
        "greedy_lossless": {"identical": lossless, "prompts": len(prompts), "tokens_per_step": emitted / steps},
        "exact_sampling": {"same_seed_medusa_on_off_identical": same_seed, "distinct_texts_over_4_seeds": len(texts)},
        "decode_tokens_per_s": rate,
        "medusa_tree_nodes_now": engine.tree_nodes,
    }


def hf_generate_rate(model: Path, device: str, prompts: list[list[int]], max_tokens: int) -> float:
    """transformers generate (greedy, static cache): decode tokens/s, the prefill's time taken out."""
    import torch
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(model), torch_dtype=torch.float32).to(device).eval()

    def timed(ids: Any, new: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        hf.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static", pad_token_id=0
        )
        _sync(device)
        return time.perf_counter() - t0

    n, secs = 0, 0.0
    with torch.no_grad():
        timed(torch.tensor([prompts[0]], device=device), 4)  # warm-up (static cache allocation)
        for p in prompts:
            ids = torch.tensor([p], device=device)
            secs += timed(ids, max_tokens) - timed(ids, 1)
            n += max_tokens - 1
    return n / max(secs, 1e-9)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from medusa_trt.runtime import load_engine
    from medusa_trt.train.sweep import sweep_step_times

    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "device": a.device,
        "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": a.size,
        "model": {**SIZES[a.size], "vocab_size": VOCAB[a.size], "medusa_heads": a.heads},
    }
    import transformers

    doc["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, heads = make_model(work, a.size, a.heads)
        g = torch.Generator().manual_seed(1)
        vocab = VOCAB[a.size]
        prompts = [torch.randint(3, vocab, (a.prompt_len,), generator=g).tolist() for _ in range(a.prompts)]
        doc["logits"] = {}
        for dtype in ("float32", "bfloat16"):
            ckpt = convert(model, heads, work / f"ck-{dtype}", dtype)
            doc["logits"][dtype] = logits_check(model, ckpt, dtype, a.device, prompts[0])
            if dtype == "bfloat16":
                import shutil

                shutil.rmtree(ckpt)
        ckpt = work / "ck-float32"
        with load_engine(ckpt, device=a.device) as engine:
            doc.update(generation_checks(engine, prompts, a.max_tokens))
        doc["decode_tokens_per_s"]["transformers_static"] = hf_generate_rate(model, a.device, prompts, a.max_tokens)
        ms = sweep_step_times(ckpt, list(NODES), context_len=a.context, repeats=a.repeats, device=a.device)
        doc["step_ms"] = {str(n): ms[n] for n in NODES}
    doc["wall_s"] = time.perf_counter() - t0
    return doc


def main(argv: list[str] | None = None) -> int:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--size", choices=list(SIZES), default=None, help="default: 1b with CUDA, else small")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--context", type=int, default=256, help="KV-cache tokens while timing steps")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (else stdout)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not cuda:
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 3
    a.size = a.size or ("1b" if a.device.startswith("cuda") else "small")
    text = json.dumps(run(a), indent=2)
    if a.out is None:
        print(text)
    else:
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
