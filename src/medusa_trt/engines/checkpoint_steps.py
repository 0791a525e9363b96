"""The steps of the engines that serve a TRT-LLM checkpoint (TensorRT-LLM, the reference runtime):
convert, and the runtime files beside it. Each step is here twice over, its ``Step`` (what
`build --dry-run` shows) and the function ``build`` runs for it, so that an engine lists both
(``build_steps``, ``step_funcs``) without reaching back into the build.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.engines.base import CHECKPOINT, INTERNAL, SOURCES, TREE_FILE, PlanContext
from medusa_trt.engines.spec import BuildSpec
from medusa_trt.errors import CheckpointError
from medusa_trt.outputs import OwnedDir
from medusa_trt.steps import Step, StepKind

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)


def convert_argv(spec: BuildSpec, out: Path, *, with_heads: bool) -> list[str]:
    argv = [
        "medusa-trt",
        "convert",
        "--model",
        str(spec.model.local or spec.model.given),
        "--output",
        str(out / CHECKPOINT),
    ]
    if with_heads and spec.medusa is not None:
        argv += ["--medusa", str(spec.medusa.local or spec.medusa.given)]
    argv += [
        "--tp",
        str(spec.tp),
        "--pp",
        str(spec.pp),
        "--dtype",
        spec.dtype,
        "--num-medusa-heads",
        str(spec.num_medusa_heads),
        "--max-draft-len",
        str(spec.max_draft_len),
        "--workers",
        str(spec.convert_workers),
    ]
    if spec.model.local is None and spec.model.revision:
        argv += ["--revision", spec.model.revision]
    return argv


def source_inputs(spec: BuildSpec) -> dict[str, Any]:
    inputs: dict[str, Any] = {"model": spec.model.given, "model_revision": spec.model.revision}
    if spec.model.local is not None:
        inputs["model_dir"] = str(spec.model.local)
    if spec.medusa is not None:
        inputs["medusa"] = spec.medusa.given
        inputs["medusa_revision"] = spec.medusa.revision
        if spec.medusa.local is not None:
            inputs["medusa_dir"] = str(spec.medusa.local)
    return inputs


def convert_step(ctx: PlanContext) -> Step:
    """The TRT-LLM checkpoint (run in process by ``build``: ``checkpoint.convert_checkpoint``)."""
    spec = ctx.spec
    return Step(
        "convert",
        "TRT-LLM checkpoint (config.json + rank{r}.safetensors) from the HF model and heads",
        convert_argv(spec, ctx.out, with_heads=spec.model.format not in ("modelopt-fp8", "modelopt")),
        inputs={
            **source_inputs(spec),
            "tp": spec.tp,
            "pp": spec.pp,
            "dtype": spec.dtype,
            "num_medusa_heads": spec.num_medusa_heads,
            "max_draft_len": spec.max_draft_len,
        },
        outputs=[CHECKPOINT],
        needs=_convert_needs(ctx),
        kind=StepKind.PYTHON,
    )


def _convert_needs(ctx: PlanContext) -> dict[str, Any]:
    if not ctx.sizes:
        return {"host": "any"}
    return {
        "disk_gib": ctx.checkpoint_gib(),
        "host_memory_gib": 2.0,
        "gpus": 0,
        "host": "any (streams one tensor at a time)",
    }


def runtime_files_step(spec: BuildSpec) -> Step:
    """What every server of the checkpoint reads beside it: the tokenizer and the tree."""
    return Step(
        "runtime-files",
        "tokenizer and medusa_tree.yaml",
        [INTERNAL, "write", "tokenizer files", TREE_FILE],
        inputs={"checkpoint_dir": CHECKPOINT, "tree": spec.tree},
        outputs=[TREE_FILE],
        needs={"gpus": 0, "host": "any"},
        kind=StepKind.PYTHON,
    )


def convert(spec: BuildSpec, out: Path) -> None:
    """The convert step: our converter, in this process (``checkpoint.convert_checkpoint``)."""
    from medusa_trt.checkpoint.convert import convert_checkpoint

    heads = None
    if spec.medusa is not None and spec.model.format not in ("modelopt-fp8", "modelopt"):
        heads = str(spec.medusa.local or spec.medusa.given)
    convert_checkpoint(
        str(spec.model.local or spec.model.given),
        out / CHECKPOINT,
        medusa=heads,
        tp=spec.tp,
        pp=spec.pp,
        dtype=spec.dtype,
        num_medusa_heads=spec.num_medusa_heads,
        max_draft_len=spec.max_draft_len,
        revision=spec.model.revision if not spec.model.local else None,
        workers=spec.convert_workers,
        progress=True,
    )


def runtime_files(spec: BuildSpec, owned: OwnedDir) -> None:
    """The runtime-files step: the tokenizer files copied beside the manifest, and the tree."""
    from medusa_trt.medusa.trees import dump_tree

    out = owned.root
    # a hub model fetched for quantize.py (FP8 profiles) lives in sources/model: its tokenizer is there
    sources = [out / CHECKPOINT, spec.model.local or out / SOURCES / "model"]
    found = {name: next((d / name for d in sources if (d / name).is_file()), None) for name in TOKENIZER_FILES}
    copies = {name: src for name, src in found.items() if src is not None}
    owned.claim(copies)
    for name, src in copies.items():
        fsio.copy_file(src, out / name)
    owned.done(copies)
    if not (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").is_file():
        raise CheckpointError(
            f"no tokenizer files in {out / CHECKPOINT} or {sources[1]}",
            hint="The model source must include tokenizer.json (or tokenizer.model).",
        )
    fsio.write_text(out / TREE_FILE, dump_tree(spec.tree))


def funcs(spec: BuildSpec, owned: OwnedDir) -> dict[str, Callable[[], None]]:
    """The functions of the steps above, by step name, for an engine's ``step_funcs``."""
    return {"convert": lambda: convert(spec, owned.root), "runtime-files": lambda: runtime_files(spec, owned)}
