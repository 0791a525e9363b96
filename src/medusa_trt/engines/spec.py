"""Resolve a build: profile + command-line flags + environment into one validated BuildSpec.

Every value carries its source (flag, env, profile, heads, default) so `build --dry-run` can say
where each number came from. Precedence: flag > environment > model/heads files > profile > default.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import engine_facts, fsio
from medusa_trt.errors import CheckpointError, InvalidInputError

if TYPE_CHECKING:
    from medusa_trt.config.profile import HardwareProfile

OUTPUT_ENV = "MEDUSA_TRT_OUTPUT"
TREE_ENV = "MEDUSA_TRT_TREE"
WORKERS_ENV = "MEDUSA_TRT_CONVERT_WORKERS"

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """A model or heads source: a local directory or a Hugging Face repo id (with revision)."""

    given: str  # what the user gave: a directory or a repo id
    local: Path | None
    revision: str | None = None
    format: str = "hf"  # hf | modelopt-fp8 | modelopt | faster-decoding | unknown
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.given,  # the key manifests and `build --dry-run --json` have always had
            "local": str(self.local) if self.local else None,
            "revision": self.revision,
            "format": self.format,
            "notes": self.notes,
        }


@dataclass
class BuildSpec:
    profile: HardwareProfile
    engine: str  # a row of engine_facts (the profile's engine:)
    model: Source
    medusa: Source | None
    output: Path
    tp: int
    pp: int
    dtype: str
    quantization: str  # none | fp8
    kv_cache_dtype: str
    num_medusa_heads: int
    num_medusa_layers: int
    max_draft_len: int
    tree: list[list[int]]
    limits: dict[str, int]
    runtime_env: dict[str, str]
    convert_workers: int
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def model_name(self) -> str:
        return self.model.given.rstrip("/").split("/")[-1] if self.model.local is None else self.model.local.name

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": {"name": self.profile.name, "id": self.profile.id},
            "engine": self.engine,
            "model": self.model.to_json(),
            "medusa": self.medusa.to_json() if self.medusa else None,
            "output": str(self.output),
            "tp": self.tp,
            "pp": self.pp,
            "world_size": self.world_size,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "num_medusa_heads": self.num_medusa_heads,
            "num_medusa_layers": self.num_medusa_layers,
            "max_draft_len": self.max_draft_len,
            "tree": self.tree,
            "limits": self.limits,
            "runtime_env": self.runtime_env,
            "convert_workers": self.convert_workers,
            "sources": self.sources,
        }


def _is_repo_id(given: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", given)) and not Path(given).exists()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = fsio.read_json(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from e
    return data if isinstance(data, dict) else {}


def detect_model(given: str, revision: str | None = None) -> Source:
    """Classify a base-model source; a ModelOpt FP8 checkpoint converts directly (no quantize step)."""
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: no config.json (not a Hugging Face model directory)",
                hint="Give a directory holding config.json and *.safetensors, or a hub repo id.",
            )
        src = Source(given, path.resolve(), revision)
        quant = path / "hf_quant_config.json"
        if quant.is_file():
            q = _read_json(quant)
            producer = str((q.get("producer") or {}).get("name", "")).lower()
            algo = str((q.get("quantization") or {}).get("quant_algo", "")).upper()
            if producer == "modelopt":
                src.format = "modelopt-fp8" if algo == "FP8" else "modelopt"
                src.notes.append(f"ModelOpt checkpoint (quant_algo {algo or 'none'}): converted directly")
        return src
    if _is_repo_id(given):
        return Source(
            given,
            None,
            revision or "main",
            "unknown",
            [
                "hub repo: its format is known once fetched; this plan assumes a BF16/FP16 "
                "Hugging Face checkpoint (a ModelOpt FP8 repo would convert directly)"
            ],
        )
    raise InvalidInputError(
        f"model '{given}' is neither a local directory nor a Hugging Face repo id",
        hint="Give a directory with config.json, or an id such as meta-llama/Llama-3.1-70B-Instruct.",
    )


def detect_heads(given: str, revision: str | None = None) -> tuple[Source, int | None, int | None]:
    """A Medusa-heads source and, for local FasterDecoding heads, (num_heads, num_layers) from the files."""
    path = Path(given).expanduser()
    if path.is_dir():
        src = Source(given, path.resolve(), revision, "faster-decoding")
        heads, layers = _count_heads(path)
        return src, heads, layers
    if _is_repo_id(given):
        return Source(given, None, revision or "main", "unknown"), None, None
    raise InvalidInputError(
        f"Medusa heads '{given}' are neither a local directory nor a Hugging Face repo id",
        hint="Give a directory with config.json + medusa_lm_head.safetensors, or a repo id.",
    )


def _safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte little-endian length, then JSON): no torch needed."""
    from medusa_trt.checkpoint.safetensors_io import read_header

    return list(read_header(path))


def _heads_from_names(names: list[str]) -> tuple[int | None, int | None]:
    heads = {int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()}
    # FasterDecoding: "{h}.{l}.linear.weight" for the ResBlocks, "{h}.{L}.weight" for the head's lm_head
    layers = {int(n.split(".")[1]) for n in names if n.endswith(".linear.weight")}
    return (max(heads) + 1 if heads else None), (max(layers) + 1 if layers else None)


def _count_embedded_heads(path: Path) -> tuple[int | None, int | None]:
    """Heads inside a ModelOpt combined checkpoint (``medusa_heads.{h}.{l}.linear.*``), from its tensor names."""
    prefix = "medusa_heads."
    names = [
        n[len(prefix) :]
        for st in sorted(path.glob("*.safetensors"))
        for n in _safetensors_names(st)
        if n.startswith(prefix)
    ]
    return _heads_from_names(names)


def _count_heads(path: Path) -> tuple[int | None, int | None]:
    """Heads and layers from the tensor names (published configs state wrong head counts)."""
    st = path / "medusa_lm_head.safetensors"
    if st.is_file():
        return _heads_from_names(_safetensors_names(st))
    embedded = _count_embedded_heads(path)  # a ModelOpt combined checkpoint given as the heads
    if embedded[0] is not None:
        return embedded
    cfg = path / "config.json"
    if cfg.is_file():
        c = _read_json(cfg)
        return c.get("medusa_num_heads"), c.get("medusa_num_layers")
    return None, None


def resolve(
    profile: HardwareProfile,
    model: str,
    *,
    medusa: str | None = None,
    output: str | Path | None = None,
    tree: str | None = None,
    revision: str | None = None,
    medusa_revision: str | None = None,
    env: dict[str, str] | None = None,
) -> BuildSpec:
    """One BuildSpec from the profile, the flags and the environment, with each value's source."""
    from medusa_trt.medusa.trees import load_tree, tree_name, validate_tree

    env = dict(os.environ if env is None else env)
    sources: dict[str, str] = {}
    src = detect_model(model, revision)
    heads_src, file_heads, file_layers = _heads_source(src, medusa, medusa_revision)
    out, sources["output"] = _output_dir(output, env, src, model, profile.name)
    heads, sources["num_medusa_heads"] = _file_or_profile(file_heads, profile.medusa.num_heads, "num_heads")
    layers, sources["num_medusa_layers"] = _file_or_profile(file_layers, profile.medusa.num_layers, "num_layers")
    facts = engine_facts.get(profile.engine)
    if facts.chain:  # a top-1 chain, one token per head: as long as the heads allow
        paths, max_draft_len = _top1_chain(facts, tree, int(heads), profile.medusa.max_draft_len)
        sources["tree"] = sources["max_draft_len"] = (
            f"min(heads, profile medusa.max_draft_len): {facts.title}'s top-1 chain"
        )
        validate_tree(paths, num_heads=heads, max_draft_len=max_draft_len)
    else:
        tree_given, sources["tree"] = _tree_given(tree, env, profile)
        paths = load_tree(tree_given)
        max_draft_len, sources["max_draft_len"] = profile.medusa.max_draft_len, "profile medusa.max_draft_len"
        # the heads' tensors decide; the tree must not need a head they lack (NVIDIA's 8B Medusa has 3)
        validate_tree(paths, num_heads=heads, max_draft_len=max_draft_len, name=tree_name(tree_given))
        if heads != profile.medusa.num_heads:
            logger.info(
                "profile %s says medusa.num_heads: %d; the heads hold %d, and tree %s (depth %d) fits them: using %d",
                profile.name,
                profile.medusa.num_heads,
                heads,
                tree_name(tree_given),
                max(len(p) for p in paths),
                heads,
            )
    workers, sources["convert_workers"] = _convert_workers(env, profile.parallelism.tp * profile.parallelism.pp)
    sources.update(_PROFILE_SOURCES)
    spec = BuildSpec(
        profile=profile,
        engine=profile.engine,
        model=src,
        medusa=heads_src,
        output=out,
        tp=profile.parallelism.tp,
        pp=profile.parallelism.pp,
        dtype=profile.precision.dtype,
        quantization=profile.precision.quantization,
        kv_cache_dtype=profile.precision.kv_dtype,
        num_medusa_heads=int(heads),
        num_medusa_layers=int(layers),
        max_draft_len=int(max_draft_len),
        tree=paths,
        limits=profile.limits.model_dump(),
        runtime_env=profile.env,
        convert_workers=workers,
        sources=sources,
    )
    if logger.isEnabledFor(logging.DEBUG):
        doc = spec.to_json()
        for key, where in sources.items():
            logger.debug("build %s = %s (from %s)", key, json.dumps(doc[key], default=str), where)
    return spec


# Values taken from the profile as they stand, and where `build --dry-run` says they came from.
_PROFILE_SOURCES = {
    "tp": "profile parallelism.tp",
    "pp": "profile parallelism.pp",
    "dtype": "profile precision.dtype",
    "quantization": "profile precision.quantization",
    "kv_cache_dtype": "profile precision.kv_cache_dtype",
    "limits": "profile limits",
    "runtime_env": "profile runtime_env",
}


def _heads_source(
    model: Source, medusa: str | None, medusa_revision: str | None
) -> tuple[Source | None, int | None, int | None]:
    """The heads' source and, when the files say, (num_heads, num_layers); a ModelOpt checkpoint carries its own."""
    if medusa:
        return detect_heads(medusa, medusa_revision)
    if model.local is not None and model.format in ("modelopt-fp8", "modelopt"):
        return (None, *_count_embedded_heads(model.local))
    if model.local is not None:
        raise InvalidInputError(
            "no Medusa heads given",
            hint="Pass --medusa DIR|REPO (FasterDecoding heads), or a ModelOpt combined checkpoint as --model.",
        )
    return None, None, None


def _output_dir(
    output: str | Path | None, env: dict[str, str], model: Source, given: str, profile_name: str
) -> tuple[Path, str]:
    if output is not None:
        return Path(output), "flag --output"
    if env.get(OUTPUT_ENV):
        return Path(env[OUTPUT_ENV]), f"env {OUTPUT_ENV}"
    slug = (model.local.name if model.local else given.split("/")[-1]).lower()
    return Path("engines") / f"{slug}-{profile_name}", "default engines/<model>-<profile>"


def _file_or_profile(from_files: int | None, from_profile: int, key: str) -> tuple[int, str]:
    """The heads' own tensors win over the profile's medusa section."""
    if from_files is not None:
        return from_files, "heads tensors"
    return from_profile, f"profile medusa.{key}"


def _tree_given(tree: str | None, env: dict[str, str], profile: HardwareProfile) -> tuple[str | list[list[int]], str]:
    if tree is not None:
        return tree, "flag --tree"
    if env.get(TREE_ENV):
        return env[TREE_ENV], f"env {TREE_ENV}"
    return profile.medusa.tree, "profile medusa.tree"


def _top1_chain(facts: engine_facts.EngineFacts, tree: str | None, heads: int, cap: int) -> tuple[list[list[int]], int]:
    """A chain engine (vLLM) drafts the top-1 chain of min(heads, cap) tokens; a --tree is refused."""
    from medusa_trt.medusa.trees import top1_chain

    if tree is not None:
        raise InvalidInputError(
            f"--tree: {facts.title} drafts a top-1 chain, not a tree",
            hint="Drop --tree; the chain is min(heads, the profile's medusa.max_draft_len) tokens long.",
        )
    path = top1_chain(heads, cap)
    return path, len(path)


def _convert_workers(env: dict[str, str], world_size: int) -> tuple[int, str]:
    workers_env = env.get(WORKERS_ENV)
    if workers_env:
        if not workers_env.isdigit() or int(workers_env) < 1:
            raise InvalidInputError(f"{WORKERS_ENV}={workers_env!r} is not a positive integer")
        return int(workers_env), f"env {WORKERS_ENV}"
    from medusa_trt.checkpoint.writer import default_workers

    return default_workers(world_size), "default: one per CPU (at least 8), at most the world size"
