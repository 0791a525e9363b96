"""Medusa-1 training on a frozen backbone, by self-distillation (Medusa paper, arXiv 2401.10774 §2.2.1).

The authors' code for it is ``medusa/train/train_legacy.py``.

1. The base model greedily continues every prompt: prompt + continuation is a training sequence,
   so the heads learn the model they will serve (its greedy path is what the runtime verifies).
2. The frozen backbone's last hidden states (after the final norm) are computed once, no grad.
3. Head k (0-based) at position t learns token t+k+2, loss weight 0.8^k; only targets inside the
   generated continuation count. AdamW, warmup + cosine. Per-head top-1/top-5 on held-out sequences.
Checkpoints (heads, optimizer, step, RNG, the distilled data) go to ``OUTPUT/.train/`` so an
interrupted run resumes; the final heads are written in FasterDecoding format.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medusa_trt import fsio, outputs
from medusa_trt.errors import CheckpointError, InvalidInputError, MissingDependencyError
from medusa_trt.medusa.heads import HEADS_FILE, MedusaHeads
from medusa_trt.train.data import Prompt, encode_prompt, load_prompts

DECAY = 0.8  # Medusa paper Appendix B.2: lambda_k = 0.8^k
CACHE_LIMIT_BYTES = 2 << 30  # cache hidden states when they fit in 2 GiB; recompute per batch otherwise


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Distilled:
    """Greedy self-distillation data: token sequences and where each continuation starts."""

    sequences: list[list[int]]
    starts: list[int]


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            "--device cuda but no CUDA device is visible to torch",
            hint="Use --device cpu, or install a CUDA build of torch.",
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InvalidInputError(f"unknown device '{name}'", hint="Use cpu or cuda.")
    return torch.device(name)


def load_backbone(model_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """The frozen HF model (eval, no grad) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress goes to stderr; no per-load tqdm bars
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise CheckpointError(
            f"{d}: not a Hugging Face model directory (no config.json)",
            hint="Pass the directory holding config.json, *.safetensors and the tokenizer.",
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # corrupt weights, bad config, no tokenizer
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CheckpointError(
            f"--model {d}: cannot load ({e.__class__.__name__}: {first})",
            hint="Pass a complete Hugging Face Llama directory (config.json, *.safetensors, tokenizer).",
        ) from e
    model = model.to(_device(device)).eval()
    model.requires_grad_(False)
    return model, tok


@torch.inference_mode()
def greedy_continue(model: Any, ids: list[int], n: int, eos: set[int]) -> list[int]:
    """Greedy continuation with the HF KV cache, stopping at an EOS id (kept) or after n tokens."""
    import inspect

    from transformers import DynamicCache

    dev = next(model.parameters()).device
    # transformers 5 renamed past_key_values to cache; the cache object is updated in place.
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kv = {arg: DynamicCache(config=model.config)}
    out = model(torch.tensor([ids], device=dev), use_cache=True, **kv)
    new: list[int] = []
    for _ in range(n):
        tok = int(out.logits[0, -1].argmax())
        new.append(tok)
        if tok in eos or len(new) == n:
            break
        out = model(torch.tensor([[tok]], device=dev), use_cache=True, **kv)
    return new


@torch.inference_mode()
def greedy_continue_batch(model: Any, batch: list[list[int]], n: int, eos: set[int], pad_id: int) -> list[list[int]]:
    """Greedy continuations of several prompts at once (left-padded ``generate``), each cut after its EOS.

    Small models spend a decode step mostly in per-call overhead, so a batch costs about one prompt.
    """
    dev = next(model.parameters()).device
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, W]
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    out = model.generate(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        max_new_tokens=n,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos) or None,
    )  # [B, W + n']
    result = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def distill(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    *,
    gen_tokens: int,
    seq_len: int,
    progress: Any = None,
    batch_size: int = 32,
) -> Distilled:
    """Run the base model greedily on every prompt: its own continuations are the targets."""
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    max_pos = int(getattr(model.config, "max_position_embeddings", seq_len))
    jobs = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt)[: max(1, seq_len - 4)]
        budget = max(0, min(gen_tokens, seq_len - len(ids), max_pos - len(ids)))
        if budget >= 3:
            jobs.append((ids, budget))
        elif progress is not None:
            progress()
    jobs.sort(key=lambda j: len(j[0]))  # similar lengths together: less padding
    seqs, starts = [], []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        conts = greedy_continue_batch(model, [ids for ids, _ in chunk], max(b for _, b in chunk), eos, int(pad))
        for (ids, budget), cont in zip(chunk, conts, strict=True):
            seqs.append(ids + cont[:budget])
            starts.append(len(ids))
            if progress is not None:
                progress()
    if not seqs:
        raise InvalidInputError(
            "no usable training sequences (prompts too long for --seq-len?)",
            hint="Raise --seq-len or use shorter prompts.",
        )
    return Distilled(seqs, starts)


def _labels(seq: list[int], start: int) -> list[int]:
    """Unshifted labels (authors' convention): the token itself where it is a generated target, else -100."""
    return [t if i >= start else -100 for i, t in enumerate(seq)]


@torch.no_grad()
def hidden_states(model: Any, seqs: list[list[int]]) -> list[torch.Tensor]:
    """The backbone's final-norm hidden states, one [S, D] tensor per sequence (float32)."""
    dev = next(model.parameters()).device
    return [model.model(torch.tensor([s], device=dev)).last_hidden_state[0].float() for s in seqs]


def head_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """logits [K, B, S, V], labels [B, S] unshifted. Head k at t predicts labels[t+k+2], weight 0.8^k."""
    import torch.nn.functional as F

    total = logits.new_zeros(())
    per_head = []
    for k in range(logits.shape[0]):
        shift = k + 2
        lg = logits[k, :, : logits.shape[2] - shift]  # [B, S-shift, V]
        lb = labels[:, shift:]  # [B, S-shift]
        if lb.numel() == 0 or bool((lb == -100).all()):
            per_head.append(logits.new_zeros(()))
            continue
        loss_k = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100)
        per_head.append(loss_k.detach())
        total = total + (DECAY**k) * loss_k
    return total, per_head


def head_topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Hits [K, len(ks)] and the count of valid targets per head [K] (last column)."""
    num_heads = logits.shape[0]
    out = torch.zeros(num_heads, len(ks) + 1)
    for k in range(num_heads):
        shift = k + 2
        lg = logits[k, :, : logits.shape[2] - shift]  # [B, S-shift, V]
        lb = labels[:, shift:]  # [B, S-shift]
        valid = lb != -100
        if not bool(valid.any()):
            continue
        top = lg.topk(max(ks), dim=-1).indices  # [B, S-shift, maxk]
        for j, kk in enumerate(ks):
            out[k, j] = (top[..., :kk] == lb.unsqueeze(-1)).any(-1)[valid].sum()
        out[k, -1] = valid.sum()
    return out


def _batch(
    hiddens: list[torch.Tensor], labels: list[list[int]], idx: list[int], dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch: hidden [B, S, D], labels [B, S] with -100 on padding."""
    s = max(hiddens[i].shape[0] for i in idx)
    d = hiddens[idx[0]].shape[1]
    h = torch.zeros(len(idx), s, d, device=dev)
    y = torch.full((len(idx), s), -100, dtype=torch.long, device=dev)
    for b, i in enumerate(idx):
        n = hiddens[i].shape[0]
        h[b, :n] = hiddens[i]
        y[b, :n] = torch.tensor(labels[i], device=dev)
    return h, y


@torch.no_grad()
def evaluate(
    heads: MedusaHeads,
    hiddens: list[torch.Tensor],
    labels: list[list[int]],
    idx: list[int],
    dev: torch.device,
    batch: int = 16,
) -> tuple[float, list[float], list[float]]:
    """Weighted loss, per-head top-1 and top-5 accuracy over ``idx``."""
    hits = torch.zeros(heads.num_heads, 3)
    losses = []
    for i in range(0, len(idx), batch):
        h, y = _batch(hiddens, labels, idx[i : i + batch], dev)
        logits = heads(h)  # [K, B, S, V]
        losses.append(float(head_loss(logits, y)[0]))
        hits += head_topk_hits(logits, y).cpu()
    n = hits[:, 2].clamp(min=1)
    return (sum(losses) / max(1, len(losses)), (hits[:, 0] / n).tolist(), (hits[:, 1] / n).tolist())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine to zero (the authors' schedule)."""
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _ckpt_dir(output: Path) -> Path:
    return output / ".train"


def _save_checkpoint(
    output: Path,
    step: int,
    heads: MedusaHeads,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    cfg_key: dict[str, Any],
) -> None:
    state = {
        "step": step,
        "heads": heads.state_dict(),
        "opt": opt.state_dict(),
        "rng": gen.get_state(),
        "history": history,
        "config": cfg_key,
    }
    with fsio.atomic_path(_ckpt_dir(output) / "state.pt") as tmp:
        torch.save(state, tmp)


def save_heads(heads: MedusaHeads, out: Path, base_model: str = "") -> Path:
    """``medusa_lm_head.safetensors``, then ``config.json`` (its presence marks complete heads), each atomic."""
    from safetensors.torch import save_file

    with fsio.atomic_path(out / HEADS_FILE) as tmp:
        save_file(heads.fasterdecoding_state_dict(), str(tmp), metadata={"format": "pt"})
    fsio.write_json(out / "config.json", heads.config_dict(base_model))
    return out


def _config_key(cfg: TrainConfig, model_dir: Path, data: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (steps may grow)."""
    keep = ("num_heads", "num_layers", "lr", "batch_size", "seq_len", "gen_tokens", "seed")
    return {"model": str(model_dir.resolve()), "data": data, **{k: getattr(cfg, k) for k in keep}}


OUTPUT_FILES = (".train", HEADS_FILE, "config.json", "training.json")  # what `heads train` writes


def train_heads(
    model_dir: str | Path,
    output: str | Path,
    *,
    data: str | list[Prompt] = "builtin",
    config: TrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train Medusa-1 heads for ``model_dir`` and write them (FasterDecoding format) to ``output``.

    ``output`` follows the output-directory rules (outputs.py): ours or new, locked while training.
    ``on_step(step, loss)`` is called after every optimizer step (progress hooks, tests).
    """
    cfg = config or TrainConfig()
    _check_config(cfg)
    with outputs.writing(output, kind="heads", inputs={"--model": str(model_dir)}) as owned:
        owned.claim(OUTPUT_FILES)
        result = _train(Path(model_dir), owned.root, data, cfg, on_step)
        owned.done(OUTPUT_FILES)
    return result


def _check_config(cfg: TrainConfig) -> None:
    if cfg.num_heads < 1 or cfg.num_layers < 1 or cfg.steps < 0 or cfg.batch_size < 1:
        raise InvalidInputError("--num-heads, --num-layers and --batch-size must be >= 1, --steps >= 0")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise InvalidInputError(f"--lr {cfg.lr}: must be a finite number > 0", hint="e.g. --lr 1e-3")


def _train(
    model_dir: Path,
    out: Path,
    data: str | list[Prompt],
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None,
) -> TrainResult:
    from medusa_trt.train.progress import TrainProgress

    data_name = data if isinstance(data, str) else "inline"
    prompts = load_prompts(data) if isinstance(data, str) else list(data)
    dev = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tok = load_backbone(model_dir, cfg.device)
    key = _config_key(cfg, model_dir, data_name)
    ckpt = _ckpt_dir(out)
    state, dd = None, None
    if cfg.resume and (ckpt / "state.pt").is_file() and (ckpt / "data.json").is_file():
        try:
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
            dd = json.loads((ckpt / "data.json").read_text())
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
            state, dd = None, None  # unreadable (another torch version?): start over
        # a different run (or data distilled for another one): start over rather than mix
        if (
            not isinstance(state, dict)
            or state.get("config") != key
            or not isinstance(dd, dict)
            or dd.get("config") != key
        ):
            state, dd = None, None
    with TrainProgress(enabled=cfg.progress) as prog:
        if state is not None and dd is not None:
            dist = Distilled(dd["sequences"], dd["starts"])
        else:
            task = prog.add("self-distillation (greedy generations)", len(prompts))
            dist = distill(
                model, tok, prompts, gen_tokens=cfg.gen_tokens, seq_len=cfg.seq_len, progress=lambda: prog.advance(task)
            )
            doc = {"config": key, "sequences": dist.sequences, "starts": dist.starts}
            fsio.write_text(ckpt / "data.json", json.dumps(doc))
        hiddens = hidden_states(model, dist.sequences)
        # positions before start-K-1 predict no generated token for any head: drop them (less compute)
        crops = [max(0, st - cfg.num_heads - 1) for st in dist.starts]
        hiddens = [h[c:] for h, c in zip(hiddens, crops, strict=True)]
        labels = [_labels(s, st)[c:] for s, st, c in zip(dist.sequences, dist.starts, crops, strict=True)]
        n_eval = max(1, int(len(hiddens) * cfg.eval_frac)) if len(hiddens) > 1 else 0
        eval_idx = list(range(len(hiddens) - n_eval, len(hiddens))) or [0]
        train_idx = list(range(len(hiddens) - n_eval)) or [0]

        lm_head = model.get_output_embeddings().weight.detach().float()  # [V, D]
        heads = MedusaHeads(
            lm_head.shape[1], lm_head.shape[0], cfg.num_heads, cfg.num_layers, lm_head_weight=lm_head
        ).to(dev)
        opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        start, history = 0, []
        init_loss, init_top1, _ = evaluate(heads, hiddens, labels, eval_idx, dev)
        init_train = evaluate(heads, hiddens, labels, train_idx, dev)[0]
        if state is not None:
            heads.load_state_dict(state["heads"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["rng"])
            start, history = int(state["step"]), list(state["history"])
            init_loss = history[0]["eval_loss"] if history else init_loss
            init_top1 = history[0]["eval_top1"] if history else init_top1
            init_train = history[0]["train_loss"] if history else init_train
        else:
            history.append({"step": 0, "train_loss": init_train, "eval_loss": init_loss, "eval_top1": init_top1})
        task = prog.add("training heads", cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            pick = torch.randint(len(train_idx), (cfg.batch_size,), generator=gen).tolist()
            h, y = _batch(hiddens, labels, [train_idx[i] for i in pick], dev)
            logits = heads(h)  # [K, B, S, V]
            loss, _ = head_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            prog.advance(task, loss=loss.item())
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                ev_loss, top1, top5 = evaluate(heads, hiddens, labels, eval_idx, dev)
                history.append(
                    {
                        "step": done,
                        "train_loss": loss.item(),
                        "eval_loss": ev_loss,
                        "eval_top1": top1,
                        "eval_top5": top5,
                        "lr": lr_at(step, cfg),
                    }
                )
                prog.log(
                    f"step {done}: loss {loss.item():.3f} eval {ev_loss:.3f} top1 "
                    + " ".join(f"{a:.2f}" for a in top1)
                    + " top5 "
                    + " ".join(f"{a:.2f}" for a in top5)
                )
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(out, done, heads, opt, gen, history, key)
            if on_step is not None:
                on_step(done, loss.item())
    final_loss, top1, top5 = evaluate(heads, hiddens, labels, eval_idx, dev)
    final_train = evaluate(heads, hiddens, labels, train_idx, dev)[0]
    _save_checkpoint(out, cfg.steps, heads, opt, gen, history, key)
    save_heads(heads, out, base_model=str(model_dir))
    fsio.write_json(out / "training.json", {"config": asdict(cfg), "history": history})
    return TrainResult(
        steps=cfg.steps,
        final_loss=final_train,
        initial_loss=init_train,
        eval_final_loss=final_loss,
        eval_initial_loss=init_loss,
        top1=top1,
        top5=top5,
        initial_top1=init_top1,
        sequences=len(dist.sequences),
        resumed_from=int(state["step"]) if state is not None else 0,
        history=history,
    )
