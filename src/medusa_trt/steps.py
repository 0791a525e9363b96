"""Resumable steps: work is redone only when what it depends on changed (build, demo, heads training).

One rule serves every caller: a finished piece of work leaves a stamp (``records.STAMP``) holding
the hash of its inputs and a fingerprint of its outputs, and it is current while both still match.
It comes in two shapes:

- ``Step`` + ``StepRunner`` (build, demo): a step is a name, an argv (what it runs, or the equivalent
  command for an in-process step), an environment, inputs and outputs at fixed paths. The stamp is
  ``<root>/.steps/<name>.json``. A step that is not current is redone from scratch (its old outputs
  removed first), so an interrupted 405B build resumes at the step that was running; ``force``
  redoes everything.
- ``Stage`` (heads training): a directory ``NAME-HASH`` named by the hash of its inputs, whose work
  continues in place after an interruption (finished shards, journal lines, a checkpoint stay, and
  belong to these inputs by construction). Its stamp is ``done.json``, written last.

Paths are fingerprinted by (relative name, size, mtime) rather than content: hashing a 800 GB
checkpoint would take longer than converting it, and converters write a content manifest anyway.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import xxhash

from medusa_trt import fsio, records
from medusa_trt.errors import ToolFailedError
from medusa_trt.outputs import OwnedDir

TAIL_LINES = 25
logger = logging.getLogger(__name__)


class StepKind(str, Enum):
    PROCESS = "process"  # an external tool, logged to logs/<step>.log
    PYTHON = "python"  # ``func``, in this process
    SERVE = "serve"  # what `run` starts; listed in the plan, never run by build


class StepStatus(str, Enum):
    RAN = "ran"
    SKIPPED = "skipped"  # current: its inputs and outputs are as its stamp recorded


@dataclass
class Step:
    name: str
    description: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # JSON values; keys ending in _dir/_path are fingerprinted
    outputs: list[str] = field(default_factory=list)  # paths relative to the output directory
    needs: dict[str, Any] = field(default_factory=dict)  # disk_gib, memory_gib, gpus, host (as `plan` estimates)
    kind: StepKind = StepKind.PROCESS
    func: Callable[[], None] | None = None  # for StepKind.PYTHON
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind.value,
            "argv": self.argv,
            "env": self.env,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "needs": self.needs,
            "notes": self.notes,
        }


def fingerprint(path: Path) -> str:
    """A cheap identity for a file or a directory tree (names, sizes, mtimes)."""
    h = xxhash.xxh3_128()
    if path.is_file():
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    else:
        return "missing"
    return h.hexdigest()


def digest(doc: Any) -> str:
    """The hash of a JSON-able document (sorted keys): xxh3-128, hex."""
    return xxhash.xxh3_128_hexdigest(json.dumps(doc, sort_keys=True, default=str).encode())


def is_current(stamp: Path, input_hash: str, outputs: dict[str, str]) -> bool:
    """The one rule: the stamp records these inputs and these outputs, and none of them is missing."""
    rec = records.peek_at(records.STAMP, stamp)
    return bool(
        rec is not None
        and rec.get("input_hash") == input_hash
        and rec.get("outputs") == outputs
        and all(v != "missing" for v in outputs.values())
    )


def input_hash(step: Step, root: Path) -> str:
    """Hash of everything that determines a step's result: argv, env, inputs (paths by fingerprint)."""
    doc: dict[str, Any] = {"argv": step.argv, "env": step.env, "inputs": {}}
    for key, value in sorted(step.inputs.items()):
        if isinstance(value, str) and key.endswith(("_dir", "_path")) and value:
            p = Path(value) if Path(value).is_absolute() else root / value
            doc["inputs"][key] = [value, fingerprint(p) if p.exists() else "missing"]
        else:
            doc["inputs"][key] = value
    return digest(doc)


@dataclass
class StepResult:
    name: str
    status: StepStatus
    seconds: float
    argv: list[str]
    input_hash: str
    log: str | None = None


class StepRunner:
    """Runs steps in order under ``root``; ``progress(label)`` yields a callback for live status lines."""

    def __init__(
        self,
        root: Path,
        *,
        force: bool = False,
        progress: Callable[[str], contextlib.AbstractContextManager[Callable[[str], None]]] | None = None,
        owned: OwnedDir | None = None,
    ) -> None:
        self.root = root
        self.force = force
        self.progress = progress
        self.owned = owned or OwnedDir(root, "steps")  # what this runner may remove and replace
        self.results: list[StepResult] = []

    def _stamp_path(self, step: Step) -> Path:
        return records.stamp_path(self.root, step.name)

    def _outputs_fp(self, step: Step) -> dict[str, str]:
        return {o: fingerprint(self.root / o) for o in step.outputs}

    def is_done(self, step: Step, digest: str) -> bool:
        return not self.force and is_current(self._stamp_path(step), digest, self._outputs_fp(step))

    def run(self, step: Step) -> StepResult:
        digest = input_hash(step, self.root)
        if self.is_done(step, digest):
            rec = records.read_at(records.STAMP, self._stamp_path(step))
            seconds = float(rec.get("seconds", 0.0))
            res = StepResult(step.name, StepStatus.SKIPPED, seconds, step.argv, digest, rec.get("log"))
            logger.debug("step %s: up to date (input hash %s), skipped", step.name, digest)
            self.results.append(res)
            return res
        logger.debug(
            "step %s: running (input hash %s%s): %s", step.name, digest, ", forced" if self.force else "", step.argv
        )
        stamp_rel = self._stamp_path(step).relative_to(self.root).as_posix()
        log_rel = f"logs/{step.name}.log"
        mine = [stamp_rel, *step.outputs, *([log_rel] if step.kind is StepKind.PROCESS else [])]
        self.owned.claim(mine)  # refuses a path that exists and is not ours, before anything goes
        for rel in mine:  # a step redoes its outputs from scratch: converters refuse non-empty dirs
            self.owned.remove(rel)
        t0 = time.perf_counter()
        log: str | None = None
        if step.kind is StepKind.PYTHON:
            assert step.func is not None
            step.func()
        elif step.kind is StepKind.PROCESS:
            log = self._run_process(step)
        seconds = time.perf_counter() - t0
        self._write_stamp(step, digest, seconds, log)
        self.owned.done(mine)
        res = StepResult(step.name, StepStatus.RAN, seconds, step.argv, digest, log)
        self.results.append(res)
        return res

    def _write_stamp(self, step: Step, digest: str, seconds: float, log: str | None) -> None:
        stamp = self._stamp_path(step)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "name": step.name,
            "input_hash": digest,
            "outputs": self._outputs_fp(step),
            "seconds": seconds,
            "argv": step.argv,
            "log": log,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        records.write_at(records.STAMP, stamp, doc)

    def _run_process(self, step: Step) -> str:
        """Run the tool with its output streamed to <out>/logs/<step>.log; raise with its tail on failure."""
        log_path = self.root / "logs" / f"{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        env = {**os.environ, **step.env}
        # created new (the step's outputs were removed first): never a file or link put at that name
        with (
            fsio.open_new(log_path) as raw,
            io.TextIOWrapper(raw, errors="replace") as log,
            self._status(step) as update,
        ):
            log.write(f"$ {' '.join(step.argv)}\n")
            try:
                proc = subprocess.Popen(
                    step.argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.root,
                    text=True,
                    errors="replace",
                    bufsize=1,
                )
            except OSError as e:
                raise ToolFailedError(
                    f"{step.name}: could not start {step.argv[0]} ({e.strerror})",
                    hint="Check that TensorRT-LLM is installed on this host.",
                ) from e
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    tail.append(line.rstrip("\n"))
                    if line.strip():
                        update(line.strip()[:120])
                rc = proc.wait()
            except BaseException:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
                if proc.poll() is None:
                    proc.kill()
                raise
        rel = str(log_path.relative_to(self.root))
        if rc != 0:
            raise ToolFailedError(
                f"{step.name} failed (exit {rc}); last lines:\n" + "\n".join(f"  | {t}" for t in tail),
                hint=f"The full log is {log_path}.",
            )
        return rel

    @contextlib.contextmanager
    def _status(self, step: Step) -> Iterator[Callable[[str], None]]:
        if self.progress is None:
            yield lambda _line: None
            return
        with self.progress(f"{step.name}: {step.description}") as update:
            yield update


@dataclass(frozen=True)
class Stage:
    """Work continued in place: ``ROOT/NAME-HASH``, with ``key.json`` (its inputs) and ``done.json`` (its stamp).

    A rerun with the same inputs finds the same directory: ``is_done`` when its stamp is current,
    else whatever an interrupted run finished there is continued. Other inputs get another directory,
    so nothing from one run is mixed into another.
    """

    name: str
    key: dict[str, Any]
    dir: Path

    KEY = records.STAGE_KEY
    DONE = records.STAGE_DONE

    @classmethod
    def at(cls, root: Path, name: str, key: dict[str, Any]) -> Stage:
        return cls(name, key, Path(root) / f"{name}-{digest(key)[:16]}")

    @property
    def hash(self) -> str:
        return digest(self.key)

    def open(self) -> Stage:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.is_ours():
            records.write_at(records.STAMP, self.dir / self.KEY, {"name": self.name, "input_hash": self.hash,
                                                                  "key": self.key})  # fmt: skip
        return self

    def is_ours(self) -> bool:
        """The directory was opened by a stage (so ``--no-resume`` may remove it)."""
        return records.peek_at(records.STAMP, self.dir / self.KEY) is not None

    def _outputs(self) -> dict[str, str]:
        names = (
            sorted(p.name for p in self.dir.iterdir() if p.name not in (self.KEY, self.DONE))
            if self.dir.is_dir()
            else []
        )
        return {n: fingerprint(self.dir / n) for n in names}

    def is_done(self) -> bool:
        return is_current(self.dir / self.DONE, self.hash, self._outputs())

    def finish(self, info: dict[str, Any]) -> None:
        """Stamp the stage done, over the files it holds now (a later change to them undoes it)."""
        doc = {"name": self.name, "input_hash": self.hash, "outputs": self._outputs(), **info}
        records.write_at(records.STAMP, self.dir / self.DONE, doc)
