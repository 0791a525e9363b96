"""Medusa-1 training on a frozen backbone, by self-distillation (Medusa paper, arXiv 2401.10774 §2.2.1).

The authors' code for it is ``medusa/train/train_legacy.py``.

Three stages, each in a directory keyed by a hash of its inputs (``steps.Stage``), each resumable:

1. distil: the base model greedily continues every prompt (reference runtime at the checkpoint's
   tp, or an OpenAI-compatible teacher); prompt + continuation is a training sequence, so the heads
   learn the model they will serve.
2. hidden: the frozen backbone's final-norm hidden states, computed once by the reference runtime
   at the checkpoint's tp and streamed to disk shards in the checkpoint's dtype.
3. train: head k (0-based) at position t learns token t+k+2, loss weight 0.8^k; only targets in
   the continuation count. AdamW, warmup + cosine, data-parallel over ``train_devices`` processes.

The backbone is a TRT-LLM checkpoint: one from ``convert``, or a Hugging Face model converted on
the fly (no heads) under ``OUTPUT/.train/``. The final heads are FasterDecoding files, with the
held-out accuracy table (``accuracy.csv``, as ``tree accuracy`` writes it) and the chosen tree's
expected tokens per step.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio, outputs, records
from medusa_trt.errors import InvalidInputError
from medusa_trt.medusa.heads import HEADS_FILE
from medusa_trt.steps import Stage, digest
from medusa_trt.train.data import Prompt, encode_prompt, load_prompts

WORK = ".train"
HEADS_FILES = (HEADS_FILE, "config.json", "training.json", "accuracy.csv")  # the result, hashed in its manifest
OUTPUT_FILES = (WORK, *HEADS_FILES, records.HEADS.filename)  # what `heads train` writes


@dataclass
class TrainConfig:
    num_heads: int = 4
    num_layers: int = 1
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 128  # prompt + continuation are cut to this many tokens
    gen_tokens: int = 96
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    log_every: int = 10
    eval_frac: float = 0.1
    resume: bool = True
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    tp: int | None = None  # converting a Hugging Face model: its tp (an existing checkpoint keeps its own)
    dtype: str | None = None  # converting: the checkpoint dtype (default: the source's)
    revision: str | None = None
    teacher_url: str | None = None
    teacher_api_key: str | None = None
    teacher_concurrency: int = 8
    distil_batch: int = 16  # local distillation: prompts decoded together (not in the stage key: same tokens)
    hidden_cache: str | None = None  # default: OUTPUT/.train
    shard_mib: float = 256.0  # hidden-state shard size: bounds the hidden stage's memory
    train_devices: int = 1
    share_lm_head: bool = False
    tree: str | None = None  # the tree whose expected tokens/step is reported (default: the largest that fits)


@dataclass
class TrainResult:
    steps: int
    final_loss: float  # weighted head loss on the training sequences
    initial_loss: float
    eval_final_loss: float  # the same on the held-out sequences
    eval_initial_loss: float
    top1: list[float]
    top5: list[float]
    initial_top1: list[float]
    sequences: int
    resumed_from: int
    history: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[list[float]] = field(default_factory=list)  # [K][R], held out, own-rank hit rates
    tree: str = ""
    expected_tokens_per_step: float = 0.0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"dir", "cached", "seconds"}
    checkpoint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(cfg: TrainConfig) -> None:
    from medusa_trt.medusa.trees import load_tree, validate_tree

    if cfg.num_heads < 1 or cfg.num_layers < 1 or cfg.steps < 0 or cfg.batch_size < 1:
        raise InvalidInputError("--num-heads, --num-layers and --batch-size must be >= 1, --steps >= 0")
    if cfg.tree is not None:  # before hours of training: the tree must not need a head that is not trained
        validate_tree(load_tree(cfg.tree), num_heads=cfg.num_heads, name=cfg.tree)
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InvalidInputError(f"--lr {cfg.lr}: must be a finite number > 0", hint="e.g. --lr 1e-3")
    if cfg.train_devices < 1 or cfg.batch_size < cfg.train_devices:
        raise InvalidInputError(
            f"--train-devices {cfg.train_devices} with --batch-size {cfg.batch_size}",
            hint="Every training process needs at least one sequence per step: batch size >= devices >= 1.",
        )
    if cfg.teacher_concurrency < 1 or cfg.shard_mib <= 0:
        raise InvalidInputError("--teacher-concurrency must be >= 1 and --shard-mib > 0")


# every name a training stage writes: its key and stamp, the distil journal, hidden-state shards, the
# training state, and those names' atomic-write temporaries
_STAGE_FILES = re.compile(
    r"^\.?(key\.json|done\.json|sequences\.jsonl|state\.pt|shard-\d{5}\.safetensors)(\.tmp-\d+-\d+-[0-9a-f]{8})?$"
)


def _clear(st: Stage) -> None:
    """Remove a stage's files one by one, by the names stages write; anything else stays and stops it
    (a user's file is never deleted, and no directory is removed with what is in it)."""
    if not st.dir.is_dir() or st.dir.is_symlink() or not st.is_ours():
        return
    if left := fsio.remove_listed(st.dir, [p.name for p in st.dir.iterdir() if _STAGE_FILES.match(p.name)]):
        raise InvalidInputError(
            f"{st.dir / left[0]}: not written by medusa-trt; refusing to delete it",
            hint="Move it out of the stage directory and rerun.",
        )
    st.dir.rmdir()


def _stage(root: Path, name: str, key: dict[str, Any], resume: bool) -> Stage:
    st = Stage.at(root, name, key)
    if not resume:
        _clear(st)  # --no-resume starts this stage over
    return st.open()


def _pick_tree(num_heads: int, given: str | None) -> tuple[str, list[list[int]]]:
    from medusa_trt.medusa.trees import load_tree, named_trees, tree_problems
    from medusa_trt.runtime.config import simple_tree

    if given is not None:
        return given, load_tree(given)
    fitting = [(len(t), n, t) for n in named_trees() if not tree_problems(t := load_tree(n), num_heads=num_heads)]
    if fitting:
        _, name, tree = max(fitting)
        return name, tree
    return "simple", simple_tree(num_heads, 63)


def train_heads(
    model: str | Path,
    output: str | Path,
    *,
    data: str | list[Prompt] = "builtin",
    config: TrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train Medusa-1 heads for ``model`` and write them (FasterDecoding format) to ``output``.

    ``model``: a Hugging Face directory or repo id, or a TRT-LLM checkpoint from ``convert``.
    ``output`` follows the output-directory rules (outputs.py): ours or new, locked while training.
    ``on_step(step, loss)`` is called after every optimizer step (progress hooks, tests).
    """
    cfg = config or TrainConfig()
    _check(cfg)
    with outputs.writing(output, kind="heads", inputs={"--model": str(model)}) as owned:
        owned.claim(OUTPUT_FILES)
        result = _train(str(model), owned.root, data, cfg, on_step)
        _write_manifest(owned.root)
        owned.done(OUTPUT_FILES)
    return result


def _write_manifest(out: Path) -> None:
    """Size and xxh3-128 hash of every result file (not the stage cache), for `medusa-trt verify`."""
    from medusa_trt.integrity import HASH_ALGORITHM, record

    records.write(records.HEADS, out, {"hash_algorithm": HASH_ALGORITHM, "files": record(out, HEADS_FILES)})


def save_heads(heads: Any, out: Path, base_model: str = "") -> Path:
    """``medusa_lm_head.safetensors``, then ``config.json`` (its presence marks complete heads), each atomic."""
    from safetensors.torch import save

    # bytes through fsio, not save_file: that writes 0600 whatever the umask, beside its own temporary
    fsio.write_bytes(out / HEADS_FILE, save(heads.fasterdecoding_state_dict(), metadata={"format": "pt"}))
    fsio.write_json(out / "config.json", heads.config_dict(base_model))
    return out


def _train(
    model: str,
    out: Path,
    data: str | list[Prompt],
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None,
) -> TrainResult:
    from medusa_trt.runtime.config import read_checkpoint
    from medusa_trt.train.backbone import load_tokenizer, resolve_backbone
    from medusa_trt.train.distil import DISTIL_VERSION, distil_jobs, local_generator, run_distil, teacher_generator
    from medusa_trt.train.hidden import run_hidden, sequences_per_shard
    from medusa_trt.train.loop import LoopConfig, train_data_parallel
    from medusa_trt.train.progress import TrainProgress

    prompts = load_prompts(data) if isinstance(data, str) else list(data)
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, dict[str, Any]] = {}
    with TrainProgress(enabled=cfg.progress) as prog:
        bb = resolve_backbone(
            str(model), work, tp=cfg.tp, dtype=cfg.dtype, revision=cfg.revision, progress=cfg.progress
        )
        info = read_checkpoint(bb.ckpt_dir)
        tok = load_tokenizer(bb.ckpt_dir)
        encoded = [encode_prompt(tok, p) for p in prompts]
        jobs = distil_jobs(encoded, gen_tokens=cfg.gen_tokens, seq_len=cfg.seq_len, max_pos=info.max_seq_len)

        t0 = time.perf_counter()
        dkey = {
            "version": DISTIL_VERSION,
            "model": bb.identity,
            "prompts": digest(encoded),
            "gen_tokens": cfg.gen_tokens,
            "seq_len": cfg.seq_len,
            "teacher": cfg.teacher_url,
        }
        dstage = _stage(work, "distil", dkey, cfg.resume)
        cached = dstage.is_done()
        gen = (
            teacher_generator(cfg.teacher_url, tok, api_key=cfg.teacher_api_key, concurrency=cfg.teacher_concurrency)
            if cfg.teacher_url
            else local_generator(bb.ckpt_dir, cfg.device, cfg.distil_batch)
        )
        task = prog.add("distil: greedy continuations", len(jobs))
        dist = run_distil(dstage, jobs, gen, lambda: prog.advance(task))
        times["distil"] = {"dir": str(dstage.dir), "cached": cached, "seconds": time.perf_counter() - t0}

        t0 = time.perf_counter()
        itemsize = {"float32": 4}.get(bb.dtype, 2)
        per_shard = sequences_per_shard(cfg.seq_len, info.hidden_size, itemsize, int(cfg.shard_mib * 2**20))
        hroot = Path(cfg.hidden_cache) if cfg.hidden_cache else work
        hkey = {"distil": dstage.hash, "model": bb.identity, "per_shard": per_shard}
        hstage = _stage(hroot, "hidden", hkey, cfg.resume)
        cached = hstage.is_done()
        task = prog.add(f"hidden: backbone states (tp {bb.tp})", len(dist.sequences))
        run_hidden(
            hstage,
            bb.ckpt_dir,
            dist.sequences,
            device=cfg.device,
            per_shard=per_shard,
            advance=lambda: prog.advance(task),
        )
        times["hidden"] = {"dir": str(hstage.dir), "cached": cached, "seconds": time.perf_counter() - t0}

        t0 = time.perf_counter()
        keep = (
            "num_heads",
            "num_layers",
            "steps",
            "lr",
            "batch_size",
            "warmup_frac",
            "weight_decay",
            "eval_frac",
            "seed",
            "share_lm_head",
        )
        tkey = {"hidden": hstage.hash, **{k: getattr(cfg, k) for k in keep}}
        tstage = _stage(work, "train", tkey, cfg.resume)
        loop = LoopConfig(
            stage_dir=tstage.dir, hidden_dir=hstage.dir, per_shard=per_shard, sequences=dist.sequences,
            starts=dist.starts, ckpt_dir=bb.ckpt_dir, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
            share_lm_head=cfg.share_lm_head, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
            warmup_frac=cfg.warmup_frac, weight_decay=cfg.weight_decay, checkpoint_every=cfg.checkpoint_every,
            log_every=cfg.log_every, eval_frac=cfg.eval_frac, seed=cfg.seed, device=cfg.device,
            world=cfg.train_devices, key=tkey,
        )  # fmt: skip
        task = prog.add(f"train: heads ({cfg.train_devices} process(es))", cfg.steps)
        res = train_data_parallel(loop, on_step, prog.log, lambda loss: prog.advance(task, loss=loss))
        tstage.finish({"steps": cfg.steps})
        times["train"] = {"dir": str(tstage.dir), "cached": False, "seconds": time.perf_counter() - t0}

    from medusa_trt.medusa.tree_builder import expected_tokens_per_step, format_accuracy_csv

    tree_name, tree = _pick_tree(cfg.num_heads, cfg.tree)
    expected = expected_tokens_per_step(res.final_eval.table, tree)
    save_heads(res.heads, out, base_model=str(model))
    fsio.write_text(out / "accuracy.csv", format_accuracy_csv(res.final_eval.table))
    fsio.write_json(
        out / "training.json",
        {"config": asdict(cfg), "history": res.history, "tree": tree_name, "expected_tokens_per_step": expected},
    )
    return TrainResult(
        steps=cfg.steps,
        final_loss=res.final_train_loss,
        initial_loss=res.initial_train_loss,
        eval_final_loss=res.final_eval.loss,
        eval_initial_loss=res.initial.loss,
        top1=res.final_eval.top1,
        top5=res.final_eval.top5,
        initial_top1=res.initial.top1,
        sequences=len(dist.sequences),
        resumed_from=res.resumed_from,
        history=res.history,
        accuracy=res.final_eval.table,
        tree=tree_name,
        expected_tokens_per_step=expected,
        stages=times,
        checkpoint=str(bb.ckpt_dir),
    )
