"""`heads train` stage by stage: wall time and peak RSS per stage, at tp 1 and tp 2, with and without
--share-lm-head, the hidden stage at two sequence counts, and the dry-run figures for 70B/405B.

    python benchmarks/heads_scale.py scale --dir /tmp/heads-scale [--sequences 32 --more 128]
    python benchmarks/heads_scale.py share                            # the demo model, both ways
    python benchmarks/heads_scale.py dryrun
    python benchmarks/heads_scale.py distil --sequences 32 --gen-tokens 64 --batch 16

scale: a random fp32 Llama (hidden 768, 6 layers, vocab 32000: ~92 M parameters, ~370 MB) made
locally; distil and hidden run on the reference runtime at tp 1 and tp 2 (gloo ranks), train on the
cached states with 1 and 2 DDP processes, with and without the shared lm_head. Peak RSS is the
largest sum over this process and its children (the tp/DDP ranks), sampled every 20 ms while the
stage runs; the process's RSS before the stage is reported beside it (the model code and torch).

share: the demo's model and its heads recipe (4 heads, 160 prompts, 200 steps), trained with a
separate lm_head per head and with the shared base lm_head, each at the demo's learning rate and at
3e-3 (its rate before it shared): held-out top-1/top-5 per head and the expected tokens/step of the
tree each run reports.

distil: the scale model's local distillation at tp 1 and tp 2, one prompt at a time (--distil-batch 1)
and --batch prompts together; wall time, generated tokens/s, and whether the journals are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

SHAPES = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
    num_key_value_heads=4, max_position_embeddings=1024,
)  # fmt: skip


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Samples RSS of this process + its children; yields a dict filled with before/peak MiB."""
    import psutil

    me = psutil.Process()
    out = {"before_mib": me.memory_info().rss / 2**20, "peak_mib": 0.0}
    stop = threading.Event()

    def total() -> float:
        rss = me.memory_info().rss
        for c in me.children(recursive=True):
            with suppress(psutil.Error):  # a rank that just exited
                rss += c.memory_info().rss
        return rss / 2**20

    def sample() -> None:
        while not stop.is_set():
            out["peak_mib"] = max(out["peak_mib"], total())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["peak_mib"] = max(out["peak_mib"], total())


def timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, dict[str, float]]:
    with peak_rss() as mem:
        t0 = time.perf_counter()
        res = fn(*args, **kw)
        mem["seconds"] = time.perf_counter() - t0
    return res, {k: round(v, 2) for k, v in mem.items()}


def _nothing() -> None:
    return None


def scale_model(root: Path, tps: tuple[int, ...] = (1, 2)) -> tuple[Path, dict[int, Path]]:
    """The random fp32 Llama of SHAPES under ``root`` (made once) and its checkpoint at each tp."""
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.demo.synthetic import make_tiny_llama

    hf = root / "hf"
    if not (hf / "config.json").is_file():
        make_tiny_llama(hf, **SHAPES)  # type: ignore[arg-type]
    ckpts = {}
    for tp in tps:
        ckpts[tp] = root / f"ck-tp{tp}"
        if not (ckpts[tp] / "config.json").is_file():
            convert_checkpoint(hf, ckpts[tp], tp=tp, progress=False)
    return hf, ckpts


def distil(root: Path, n: int, seq_len: int, gen: int, batch: int) -> dict[str, Any]:
    import torch

    from medusa_trt.steps import Stage
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.data import builtin_prompts, encode_prompt
    from medusa_trt.train.distil import JOURNAL, distil_jobs, local_generator, run_distil

    torch.set_num_threads(os.cpu_count() or 1)
    _, ckpts = scale_model(root)
    prompts = (builtin_prompts() * (1 + n // 24))[:n]
    report: dict[str, Any] = {"sequences": n, "gen_tokens": gen, "runs": []}
    for tp, ckpt in ckpts.items():
        tok = load_tokenizer(ckpt)
        jobs = distil_jobs([encode_prompt(tok, p) for p in prompts], gen_tokens=gen, seq_len=seq_len, max_pos=1024)
        journals = []
        for b in (1, batch):
            st = Stage.at(root, f"distil-batch{b}-tp{tp}", {"n": n, "gen": gen, "seq": seq_len})
            dist, m = timed(run_distil, st, jobs, local_generator(ckpt, "cpu", b), _nothing)
            made = sum(len(s) - s0 for s, s0 in zip(dist.sequences, dist.starts, strict=True))
            journals.append((st.dir / JOURNAL).read_text())
            shutil.rmtree(st.dir)  # the next run distils again instead of reading this journal
            report["runs"].append(
                {"tp": tp, "batch": b, "generated_tokens": made, "tokens_per_s": round(made / m["seconds"], 1), **m}
            )
        report[f"identical_journals_tp{tp}"] = journals[0] == journals[1]
    return report


def scale(root: Path, n: int, more: int, seq_len: int, gen: int, steps: int) -> dict[str, Any]:
    import torch

    from medusa_trt.steps import Stage
    from medusa_trt.train.backbone import load_tokenizer
    from medusa_trt.train.data import builtin_prompts, encode_prompt
    from medusa_trt.train.distil import DISTIL_VERSION, distil_jobs, local_generator, run_distil
    from medusa_trt.train.hidden import run_hidden
    from medusa_trt.train.loop import LoopConfig, train_data_parallel

    torch.set_num_threads(os.cpu_count() or 1)
    hf, ckpts = scale_model(root)
    size = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    report: dict[str, Any] = {"model_mib": round(size / 2**20, 1), "sequences": n, "seq_len": seq_len, "runs": []}
    prompts = (builtin_prompts() * (1 + n // 24))[:n]
    for tp in (1, 2):
        ckpt = ckpts[tp]
        tok = load_tokenizer(ckpt)
        jobs = distil_jobs([encode_prompt(tok, p) for p in prompts], gen_tokens=gen, seq_len=seq_len, max_pos=1024)
        st = Stage.at(root, f"distil-tp{tp}", {"n": n, "gen": gen, "seq": seq_len, "v": DISTIL_VERSION})
        dist, m = timed(run_distil, st, jobs, local_generator(ckpt, "cpu"), _nothing)
        report["runs"].append({"stage": "distil", "tp": tp, "sequences": n, **m})
        for count in (n, more):
            seqs = (dist.sequences * (1 + count // len(dist.sequences)))[:count]
            hs = Stage.at(root, f"hidden-tp{tp}-{count}", {"n": count})
            _, m = timed(run_hidden, hs, ckpt, seqs, device="cpu", per_shard=8, advance=_nothing)
            report["runs"].append({"stage": "hidden", "tp": tp, "sequences": count, **m})
        if tp == 1:
            hidden_dir, data = Stage.at(root, f"hidden-tp1-{n}", {"n": n}).dir, dist
    for share in (False, True):
        for world in (1, 2):
            key = {"share": share, "world": world, "steps": steps}
            tstage = Stage.at(root, "train", key)
            loop = LoopConfig(
                stage_dir=tstage.open().dir, hidden_dir=hidden_dir, per_shard=8, sequences=data.sequences,
                starts=data.starts, ckpt_dir=root / "ck-tp1", num_heads=4, num_layers=1, share_lm_head=share,
                steps=steps, lr=1e-3, batch_size=8, warmup_frac=0.05, weight_decay=0.0, checkpoint_every=0,
                log_every=steps, eval_frac=0.1, seed=0, device="cpu", world=world, key=key,
            )  # fmt: skip
            res, m = timed(train_data_parallel, loop)
            trainable = sum(p.numel() for p in res.heads.parameters() if p.requires_grad)
            report["runs"].append(
                {"stage": "train", "share_lm_head": share, "train_devices": world, "steps": steps,
                 "trainable_params": trainable, **m}
            )  # fmt: skip
    return report


def share(cache: Path, pretrain_steps: int | None) -> dict[str, Any]:
    from dataclasses import replace

    from medusa_trt.demo.corpus import code_prompts
    from medusa_trt.demo.pipeline import DemoConfig, Stages
    from medusa_trt.train.trainer import TrainConfig, train_heads

    cfg = DemoConfig()
    if pretrain_steps is not None:  # a shorter pre-training than the demo's (slow machines)
        cfg = replace(cfg, recipe=replace(cfg.recipe, steps=pretrain_steps))
    stages = Stages(cache, cfg, print, fresh=False)
    model = stages.model()
    prompts: list[Any] = list(code_prompts(stages.corpus.train_files, cfg.distill_prompts))
    out: dict[str, Any] = {}
    # the demo's rate and the rate it used before its heads shared the lm_head: the ResBlocks alone
    # take a higher one
    for lr in sorted({3e-3, cfg.head_lr}):
        for shared in (False, True):
            tcfg = TrainConfig(
                num_heads=cfg.num_heads, steps=cfg.head_steps, lr=lr, batch_size=cfg.head_batch,
                seq_len=cfg.distill_tokens + 96, gen_tokens=cfg.distill_tokens, checkpoint_every=0,
                log_every=cfg.head_steps, progress=False, share_lm_head=shared,
            )  # fmt: skip
            t0 = time.perf_counter()
            res = train_heads(model, cache / f"heads-share-{shared}-{lr:g}", data=prompts, config=tcfg)
            out[f"{'shared' if shared else 'separate'} lr {lr:g}"] = {
                "top1": [round(a, 3) for a in res.top1],
                "top5": [round(a, 3) for a in res.top5],
                "tree": res.tree,
                "expected_tokens_per_step": round(res.expected_tokens_per_step, 3),
                "eval_loss": round(res.eval_final_loss, 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
    out["pretrain_steps"] = cfg.recipe.steps
    return out


def dryrun() -> dict[str, Any]:
    from medusa_trt.config.model import PRESETS
    from medusa_trt.config.profile import load_profile
    from medusa_trt.train.budget import Workload, training_budget

    out = {}
    for model in ("llama-3.1-70b", "llama-3.1-405b"):
        for prof in ("hgx-h200-bf16-tp8", "hgx-h100-bf16-tp8"):
            for shared in (False, True):
                w = Workload(
                    sequences=10000, seq_len=2048, gen_tokens=1024, num_heads=4, num_layers=1, steps=20000,
                    batch_size=8, tp=8, train_devices=8, share_lm_head=shared, teacher=False, distil_batch=16,
                )  # fmt: skip
                b = training_budget(PRESETS[model], load_profile(prof), w).to_json()
                out[f"{model} {prof} share={shared}"] = {
                    "fits": b["fits"],
                    **{
                        k: [v["memory_gib_per_device"], v["disk_gib"], v["est_seconds"]] for k, v in b["stages"].items()
                    },
                }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("scale", "share", "dryrun", "distil"))
    ap.add_argument("--dir", type=Path, default=Path("/tmp/heads-scale"))
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--more", type=int, default=128, help="the hidden stage's second sequence count")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16, help="distil: the batched run's --distil-batch")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="share: pre-train the demo model this long")
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    if a.what == "scale":
        doc = scale(a.dir, a.sequences, a.more, a.seq_len, a.gen_tokens, a.steps)
    elif a.what == "distil":
        doc = distil(a.dir, a.sequences, a.seq_len, a.gen_tokens, a.batch)
    elif a.what == "share":
        doc = share(a.dir, a.pretrain_steps)
    else:
        doc = dryrun()
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
