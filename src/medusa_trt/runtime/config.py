"""Reading a TRT-LLM checkpoint directory (or an engine dir pointing at one) without loading weights.

Everything here is cheap (JSON and safetensors headers), so bad input is refused before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medusa_trt import fsio, integrity, records
from medusa_trt.errors import CheckpointError
from medusa_trt.medusa.trees import Tree, load_tree, tree_problems

# TRT-LLM's llama3 defaults, used when the checkpoint kept only {"type": "llama3"} (docs/sources.md, checkpoint format).
LLAMA3_DEFAULTS = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass
class CheckpointInfo:
    ckpt_dir: Path
    config: dict[str, Any]
    tp: int
    dtype: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    max_seq_len: int
    num_medusa_heads: int
    num_medusa_layers: int
    max_draft_len: int
    quant_algo: str | None
    manifest: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""

    @property
    def rope_scaling(self) -> dict[str, Any] | None:
        scaling = self.config.get("rotary_scaling")
        if not scaling:
            return None
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default", "none"):
            return None
        if kind != "llama3":
            raise CheckpointError(
                f"{self.ckpt_dir}: rotary_scaling type '{kind}' is not supported",
                hint="The reference runtime implements Llama 3.x (llama3) RoPE scaling.",
            )
        return {**LLAMA3_DEFAULTS, **{k: v for k, v in scaling.items() if k in LLAMA3_DEFAULTS}}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = fsio.read_json(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Resolve an engine dir or checkpoint dir and parse its config.json (no weights are read)."""
    root = Path(path)
    ckpt, manifest = _locate(root)
    info = _parse_config(ckpt, _read_json(ckpt / "config.json"), manifest, root)
    _check_runnable(info)
    return info


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory of an engine dir or checkpoint dir, without the start-up check of its
    files (``read_checkpoint`` makes it; a copy's files may take minutes to hash): where its tokenizer is."""
    return _locate(Path(path), verify=False)[0]


def _locate(root: Path, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory under ``root`` and the engine manifest ({} for a bare checkpoint), after
    the start-up check that the recorded files are unchanged (``verify``)."""
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: not a directory",
            hint="Pass a checkpoint from `medusa-trt convert` or an engine dir from `build`.",
        )
    manifest: dict[str, Any] = {}
    ckpt = root
    if records.ENGINE.path(root).is_file():
        manifest = records.read(records.ENGINE, root)
        if verify:
            integrity.check_unchanged(root, records.file_table(manifest))
        ckpt = (root / str(manifest["checkpoint_dir"])).resolve()
    elif verify and records.CONVERT.path(root).is_file():  # a converted checkpoint: sizes only (no mtimes)
        integrity.check_unchanged(root, records.file_table(records.read(records.CONVERT, root)))
    if not (ckpt / "config.json").is_file():
        raise CheckpointError(
            f"{ckpt}: no config.json (not a TRT-LLM checkpoint)",
            hint="Create one with `medusa-trt convert MODEL --output DIR`.",
        )
    return ckpt, manifest


def _parse_config(ckpt: Path, cfg: dict[str, Any], manifest: dict[str, Any], root: Path) -> CheckpointInfo:
    """TRT-LLM's config.json fields (the manifest's max_seq_len and model name win where present)."""
    try:
        mapping = cfg.get("mapping") or {}
        tp = int(mapping.get("tp_size", 1))
        if int(mapping.get("pp_size", 1)) != 1:
            raise CheckpointError(
                f"{ckpt}: pipeline parallelism (pp_size > 1) is not supported", hint="Convert with --tp only."
            )
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return CheckpointInfo(
            ckpt_dir=ckpt,
            config=cfg,
            tp=tp,
            dtype=str(cfg.get("dtype", "float32")),
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_size=int(cfg.get("head_size") or hidden // heads),
            intermediate_size=int(cfg["intermediate_size"]),
            max_seq_len=int(manifest.get("max_seq_len") or cfg.get("max_position_embeddings", 2048)),
            num_medusa_heads=int(cfg.get("num_medusa_heads") or 0),
            num_medusa_layers=int(cfg.get("num_medusa_layers") or 0),
            max_draft_len=int(cfg.get("max_draft_len") or 0),
            quant_algo=(cfg.get("quantization") or {}).get("quant_algo"),
            manifest=manifest,
            model_name=str(manifest.get("model_name") or cfg.get("model_name") or root.resolve().name),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{ckpt}/config.json: missing or bad field ({e})", hint="Re-run `medusa-trt convert`."
        ) from e


def _check_runnable(info: CheckpointInfo) -> None:
    """What the reference runtime can run: unquantized or FP8, an even tp split, every rank file present."""
    ckpt, tp = info.ckpt_dir, info.tp
    if info.quant_algo not in (None, "FP8"):
        raise CheckpointError(
            f"{ckpt}: quant_algo '{info.quant_algo}' is not supported by the reference runtime",
            hint="Use an unquantized or FP8 checkpoint.",
        )
    if info.num_heads % tp or info.intermediate_size % tp or info.hidden_size % tp:
        raise CheckpointError(f"{ckpt}: tp_size {tp} does not divide heads/intermediate/hidden")
    missing = [f"rank{r}.safetensors" for r in range(tp) if not (ckpt / f"rank{r}.safetensors").is_file()]
    if missing:
        raise CheckpointError(
            f"{ckpt}: missing {', '.join(missing)} for tp_size {tp}",
            hint="The conversion was interrupted or files were removed; convert again.",
        )


def simple_tree(num_heads: int, max_nodes: int) -> Tree:
    """A small tree for checkpoints with too few heads for the shipped trees: top-4 at depth 1, then
    the top-2 children of the top-1 chain at every deeper level."""
    tree: Tree = [[r] for r in range(4)]
    for d in range(2, num_heads + 1):
        tree += [[0] * (d - 1) + [r] for r in range(2)]
    return tree[: max(1, max_nodes)]


DEFAULT_TREE = "nvidia_low_latency_15"  # small: each extra node costs compute in every verification


def default_tree(info: CheckpointInfo) -> Tree:
    """The manifest's tree; else the small shipped low-latency tree if it fits; else ``simple_tree``.

    Not the largest shipped tree: with heads that were never tuned for this model, a 60-node tree
    costs ~60 tokens of compute per step for little gain (adaptive speculation then shrinks it, but
    it has to measure first).
    """
    if info.manifest.get("tree"):
        return load_tree(info.manifest["tree"])
    limit = info.max_draft_len or None
    tree = load_tree(DEFAULT_TREE)
    if not tree_problems(tree, num_heads=info.num_medusa_heads, max_draft_len=limit):
        return tree
    return simple_tree(info.num_medusa_heads, info.max_draft_len or 63)
