"""`medusa-trt build`: resolve, run the plan checks, then run the steps into an engine directory.

Layout of the output directory::

    checkpoint/        TRT-LLM checkpoint (config.json, rank{r}.safetensors, tokenizer)
    engine/            trtllm-build output (TensorRT-LLM profiles only)
    tokenizer files    copied beside the manifest (trtllm-serve --tokenizer <out>)
    medusa_tree.yaml   the Medusa tree (medusa_choices)
    medusa.yaml        the trtllm-serve --config YAML (speculative_config; TensorRT-LLM profiles only)
    sources/           hub sources fetched for quantize.py (FP8 TensorRT-LLM profiles from a hub id)
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

from medusa_trt import engines, integrity, outputs, records
from medusa_trt.engines import recipe
from medusa_trt.engines.base import CHECKPOINT, MANIFEST, SOURCES
from medusa_trt.engines.recipe import BuildPlan
from medusa_trt.engines.spec import BuildSpec, resolve
from medusa_trt.engines.versions import tool_versions
from medusa_trt.steps import Step, StepKind, StepRunner, fingerprint

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
        funcs = engine.step_funcs(spec, owned)
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
    return [f for f in owned.files if f not in skip and not f.startswith((".steps/", "logs/", f"{SOURCES}/"))]


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
            fetched = out / SOURCES / role  # a hub source downloaded for quantize.py
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
