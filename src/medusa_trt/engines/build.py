"""`medusa-trt build`: resolve, run the plan checks, then run the steps into an engine directory.

Layout of the output directory::

    checkpoint/        TRT-LLM checkpoint (config.json, rank{r}.safetensors, tokenizer)
    engine/            trtllm-build output (TensorRT-LLM profiles only)
    tokenizer files    copied beside the manifest (trtllm-serve --tokenizer <out>)
    medusa_tree.yaml   the Medusa tree (medusa_choices)
    medusa.yaml        the trtllm-serve --config YAML (speculative_config; TensorRT-LLM profiles only)
    logs/              one log per external tool run
    .steps/            per-step stamps (input hash, output fingerprint) for resuming
    medusa-trt.json    the manifest, written last
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medusa_trt import engines, fsio, integrity, outputs, records
from medusa_trt.engines import recipe
from medusa_trt.engines.base import CHECKPOINT, MANIFEST, TREE_FILE
from medusa_trt.engines.recipe import BuildPlan
from medusa_trt.engines.spec import BuildSpec, resolve
from medusa_trt.engines.versions import tool_versions
from medusa_trt.errors import CheckpointError
from medusa_trt.steps import Step, StepKind, StepRunner, fingerprint

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)
if TYPE_CHECKING:
    from medusa_trt.config.profile import HardwareProfile

ProgressFactory = Callable[[str], contextlib.AbstractContextManager[Callable[[str], None]]]


def prepare(
    profile: HardwareProfile | str | Path,
    model: str,
    *,
    medusa: str | None = None,
    output: str | Path | None = None,
    tree: str | None = None,
    revision: str | None = None,
    checks: bool = True,
) -> BuildPlan:
    """Resolve the spec, run the preflight checks (exit 4 when it does not fit), lay out the steps.

    ``profile`` is a loaded profile, or a shipped name or YAML path to load.
    """
    if isinstance(profile, str | Path):
        from medusa_trt.config.profile import load_profile

        profile = load_profile(profile)
    if output is not None:
        output = outputs.output_path(output)  # "" is a usage error, never the current directory
    spec = resolve(profile, model, medusa=medusa, output=output, tree=tree, revision=revision)
    check_output(spec)
    doc = preflight(spec) if checks else None
    return recipe.make_build_plan(spec, checks=doc)


def preflight(spec: BuildSpec) -> dict[str, Any] | None:
    """`medusa-trt plan`'s checks for this profile and model; None when the model's shape is unknown."""
    model_shape = recipe.known_model(spec)
    if model_shape is None:
        return None
    from medusa_trt.plan import preflight_report

    model_arg = str(spec.model.local) if spec.model.local is not None else model_shape
    report = preflight_report(spec.profile, model_arg, num_medusa_heads=spec.num_medusa_heads, work_dir=spec.output)
    report.raise_if_not_fits()
    doc: dict[str, Any] = report.to_dict()
    return doc


KIND = "engine"  # the ownership kind of a build output (outputs.py)


def execute(plan: BuildPlan, *, force: bool = False, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run every step (skipping finished ones), write the manifest, return it."""
    spec = plan.spec
    engine = engines.get(spec.engine)
    tools = engine.check_tools(spec)
    with outputs.writing(spec.output, kind=KIND, inputs=_inputs(spec)) as owned:
        out = owned.root
        known = {**_previous_hashes(out), **_known_hashes(out)}
        owned.claim([MANIFEST])
        owned.remove(MANIFEST)  # the directory is incomplete until the manifest is rewritten
        runner = StepRunner(out, force=force, progress=progress, owned=owned)
        funcs: dict[str, Callable[[], None]] = {
            "convert": lambda: _convert(spec, out),
            "runtime-files": lambda: _runtime_files(spec, owned),
            "fetch-model": lambda: _fetch(spec.model.given, spec.model.revision, out / "sources" / "model", "model"),
            "fetch-medusa": lambda: _fetch(
                spec.medusa.given if spec.medusa else "",
                spec.medusa.revision if spec.medusa else None,
                out / "sources" / "medusa",
                "heads",
            ),
            **engine.step_funcs(spec, out),
        }
        t0 = time.perf_counter()
        for step in plan.steps:
            if step.kind is StepKind.SERVE or step.name == "manifest":
                continue
            if step.kind is StepKind.PYTHON:
                step.func = funcs[step.name]
            runner.run(step)
        doc = manifest_doc(plan, runner, tools, time.perf_counter() - t0)
        doc.update(engine.manifest_fields(spec, out))  # the engine's own fields, e.g. vLLM's server flags
        doc["hash_algorithm"] = integrity.HASH_ALGORITHM
        doc["files"] = integrity.record(out, _served_files(owned), {**known, **_known_hashes(out)})
        records.write(records.ENGINE, out, doc)
        owned.done([MANIFEST])
    return doc


def _inputs(spec: BuildSpec) -> dict[str, str | Path | None]:
    return {"--model": spec.model.local, "--medusa": spec.medusa.local if spec.medusa else None}


def check_output(spec: BuildSpec) -> None:
    """The output rules (outputs.py), checked before any input is read or any step runs."""
    outputs.check_overlap(spec.output.absolute(), _inputs(spec))
    outputs.check_free(spec.output.absolute())
    outputs.check_claim(spec.output.absolute(), KIND)


def _served_files(owned: outputs.OwnedDir) -> list[str]:
    """What `run` and the server read: everything we wrote but the bookkeeping (stamps, logs, lists)."""
    skip = (MANIFEST, records.OWNER.filename)
    return [f for f in owned.files if f not in skip and not f.startswith((".steps/", "logs/", "sources/"))]


def _previous_hashes(out: Path) -> dict[str, dict[str, Any]]:
    """The last manifest's file table (its hashes are reused for files with the same size and mtime)."""
    return records.file_table(records.peek(records.ENGINE, out) or {})


def _known_hashes(out: Path) -> dict[str, dict[str, Any]]:
    """The converter's hashes of the checkpoint files (taken as the bytes went out), keyed by path here."""
    files = records.file_table(records.peek(records.CONVERT, out / CHECKPOINT) or {})
    return {f"{CHECKPOINT}/{k}": v for k, v in files.items()}


def manifest_doc(plan: BuildPlan, runner: StepRunner, tools: dict[str, str | None], seconds: float) -> dict[str, Any]:
    spec, out = plan.spec, plan.spec.output.resolve()
    serve = plan.step("serve")
    inputs: dict[str, Any] = {}
    for role, src in (("model", spec.model), ("medusa", spec.medusa)):
        if src is not None:
            fetched = out / "sources" / role  # a hub source downloaded for quantize.py
            local = src.local or (fetched if fetched.is_dir() else None)
            inputs[role] = {
                **src.to_json(),
                "fingerprint": fingerprint(local) if local else None,
                "fingerprint_kind": "xxh3-128 over (name, size, mtime) of every file",
            }
            if src.local is None and local is not None:
                from medusa_trt.checkpoint.sources import snapshot_commit

                inputs[role]["commit"] = snapshot_commit(local)
    if (convert_manifest := records.peek(records.CONVERT, out / CHECKPOINT)) is not None:
        inputs["checkpoint"] = convert_manifest
    versions = tool_versions()
    versions.update({k: v for k, v in tools.items() if v})  # what the engine's check found, over the metadata
    return {
        **recipe.spec_record(spec),
        "inputs": inputs,
        "tools": versions,
        "notes": plan.notes,
        "commands": [
            {
                "step": r.name,
                "argv": r.argv,
                "status": r.status.value,
                "seconds": round(r.seconds, 3),
                "input_hash": r.input_hash,
                "log": r.log,
            }
            for r in runner.results
        ],
        "serve": {"argv": serve.argv, "env": serve.env},
        "timings": {**{r.name: round(r.seconds, 3) for r in runner.results}, "this_run_s": round(seconds, 3)},
    }


# --- in-process steps ------------------------------------------------------------------------------


def _convert(spec: BuildSpec, out: Path) -> None:
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


def _fetch(repo: str, revision: str | None, local: Path, kind: str) -> None:
    """Download through the converter's hub code (pinned commit, clear errors for gated or missing
    repos, HF_HOME/HF_HUB_OFFLINE) and link the snapshot at ``local`` for quantize.py."""
    from medusa_trt.checkpoint.sources import resolve_source

    snapshot = resolve_source(repo, kind=kind, revision=revision).path
    with fsio.atomic_path(local, kind="other") as tmp:
        tmp.symlink_to(snapshot, target_is_directory=True)


def _runtime_files(spec: BuildSpec, owned: outputs.OwnedDir) -> None:
    from medusa_trt.medusa.trees import dump_tree

    out = owned.root
    # a hub model fetched for quantize.py (FP8 profiles) lives in sources/model: its tokenizer is there
    sources = [out / CHECKPOINT, spec.model.local or out / "sources" / "model"]
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


@contextlib.contextmanager
def rich_status(label: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time and the tool's latest log line, on stderr."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, highlight=False)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[line]}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(label, line="")
        yield lambda line: bar.update(task, line=line[:80])


__all__ = ["Step", "execute", "preflight", "prepare", "rich_status"]
