"""Hardware profiles: validated YAML describing the target machine and the engine settings.

A profile is found by name in the profile directories (``$MEDUSA_TRT_PROFILES_DIR``, the repository's
``profiles/`` in an editable install, the copy shipped in the wheel) or given as a YAML file path.
Every problem is reported as ``path:line: key: message`` (lines from the composed YAML nodes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_core import PydanticCustomError

from medusa_trt import engine_facts, yamlread
from medusa_trt.config import yaml_marks
from medusa_trt.config.trtllm_flags import (
    TRTLLM_BUILD_DEPRECATED,
    TRTLLM_BUILD_FLAGS,
    TRTLLM_BUILD_MANAGED,
    TRTLLM_BUILD_PLUGINS,
    closest,
)
from medusa_trt.config.vllm_flags import VLLM_MANAGED
from medusa_trt.config.yaml_marks import Issue
from medusa_trt.errors import ProfileError, TreeError

logger = logging.getLogger(__name__)

PROFILES_ENV = "MEDUSA_TRT_PROFILES_DIR"

Dtype = Literal["float32", "float16", "bfloat16"]
KvDtype = Literal["auto", "float32", "float16", "bfloat16", "fp8"]
Pos = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(ge=1)]
FlagValue = str | bool | int | float

DTYPE_BYTES: dict[str, float] = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


def _engine_name(value: object) -> object:
    """A name in ``engine_facts.FACTS`` (read when validating, so a row added there is accepted), with
    the error pydantic gives for a Literal."""
    if isinstance(value, str) and value in engine_facts.FACTS:
        return value
    raise PydanticCustomError(
        "literal_error", "Input should be {expected}", {"expected": engine_facts.spelled(engine_facts.names())}
    )


EngineName = Annotated[str, BeforeValidator(_engine_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DenseTflops(_Strict):
    """Dense (not 2:4 sparse) tensor-core TFLOPS per datatype."""

    fp8: Pos | None = None
    bf16: Pos | None = None
    fp16: Pos | None = None
    fp32: Pos | None = None


class Hardware(_Strict):
    device: Literal["cuda", "cpu"] = "cuda"
    gpu: str | None = None  # matched (case-insensitively, as a substring) against detected GPU names
    count: PosInt = 1
    memory_gib: Pos  # per device (host RAM budget for cpu profiles)
    hbm_bandwidth_tbps: Pos  # per device memory bandwidth
    interconnect_bandwidth_gbps: Pos  # per device, bidirectional (NVLink 4: 900)
    allreduce_latency_us: Annotated[float, Field(ge=0)]  # small-message (<= 32 KiB) all-reduce
    dense_tflops: DenseTflops = DenseTflops()


class Parallelism(_Strict):
    tp: PosInt = 1
    pp: PosInt = 1


class Precision(_Strict):
    dtype: Dtype = "bfloat16"  # activations and unquantized weights
    quantization: Literal["none", "fp8"] = "none"  # fp8: the linear layers inside the transformer blocks
    kv_cache_dtype: KvDtype = "auto"  # auto: the same as dtype

    @property
    def kv_dtype(self) -> str:
        return self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype


class Limits(_Strict):
    max_batch_size: PosInt
    max_input_len: PosInt
    max_seq_len: PosInt
    max_num_tokens: PosInt


class MedusaSection(_Strict):
    num_heads: Annotated[int, Field(ge=1, le=10)]
    num_layers: PosInt = 1
    max_draft_len: PosInt
    tree: str | list[list[int]]  # a shipped tree name, a tree file path, or the list of paths


class Serve(_Strict):
    """Settings for `trtllm-serve` (flag names from ``tensorrt_llm/commands/serve.py``) and the reference server."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    kv_cache_free_gpu_memory_fraction: Annotated[float, Field(gt=0, le=1)] = 0.9
    num_postprocess_workers: Annotated[int, Field(ge=0)] | None = None
    log_level: Literal["verbose", "info", "warning", "error", "internal_error"] | None = None
    extra_llm_api_options: dict[str, Any] = {}  # merged into the --config YAML (beside speculative_config)


class HardwareProfile(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    description: str = ""
    engine: EngineName  # a row of engine_facts.FACTS
    hardware: Hardware
    parallelism: Parallelism = Parallelism()
    precision: Precision = Precision()
    limits: Limits
    medusa: MedusaSection
    trtllm_build: dict[str, FlagValue] = {}
    vllm: dict[str, FlagValue] = {}  # vLLM's server flags (names without dashes, as trtllm_build)
    runtime_env: dict[str, str | int | float | bool] = {}
    serve: Serve = Serve()

    _source: Path | None = PrivateAttr(default=None)
    _tree: tuple[str, list[list[int]]] | None = PrivateAttr(default=None)  # (medusa.tree as JSON, its paths)

    @property
    def source(self) -> Path | None:
        """The YAML file this profile came from (None when built in code)."""
        return self._source

    @property
    def tree(self) -> list[list[int]]:
        """The Medusa tree (named trees resolved to their paths)."""
        key = json.dumps(self.medusa.tree)  # model_copy keeps private attrs: re-resolve when medusa.tree changed
        if self._tree is None or self._tree[0] != key:
            from medusa_trt.medusa.trees import load_tree

            self._tree = (key, load_tree(self.medusa.tree))
        return [list(p) for p in self._tree[1]]

    @property
    def id(self) -> str:
        """Short content hash of the normalised profile (name and description excluded)."""
        doc = self.model_dump(mode="json", exclude={"name", "description"})
        doc["medusa"]["tree"] = self.tree
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def env(self) -> dict[str, str]:
        """runtime_env as strings (booleans as 1/0), ready for a subprocess environment."""
        return {k: ("1" if v else "0") if isinstance(v, bool) else str(v) for k, v in self.runtime_env.items()}

    def trtllm_build_args(self) -> list[str]:
        """``trtllm-build`` argv from the ``trtllm_build`` mapping (limits and Medusa flags excluded).

        Plugin/feature flags take a value (true -> enable, false -> disable); the other flags are
        switches (true -> present, false -> absent) or take their value verbatim.
        """
        argv: list[str] = []
        for key, value in self.trtllm_build.items():
            if key in TRTLLM_BUILD_DEPRECATED:  # the current spelling of an old flag (validated on load)
                key, values = TRTLLM_BUILD_DEPRECATED[key]
                value = values[_switch(value)]
            if isinstance(value, bool) and key not in TRTLLM_BUILD_PLUGINS:
                argv += [f"--{key}"] if value else []
            elif isinstance(value, bool):
                argv += [f"--{key}", "enable" if value else "disable"]
            else:
                argv += [f"--{key}", str(value)]
        return argv


# --- checks beyond the field types ---------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _switch(value: object) -> str:
    """A YAML enable/disable value (true/false included) as the word, else the value as text."""
    return ("enable" if value else "disable") if isinstance(value, bool) else str(value)


def _deprecated_issue(p: HardwareProfile, key: str) -> Issue | None:
    new, values = TRTLLM_BUILD_DEPRECATED[key]
    if new in p.trtllm_build:
        return Issue(("trtllm_build", key), f"'{key}' and '{new}' both set", hint=f"Keep '{new}' only.", on_key=True)
    if _switch(p.trtllm_build[key]) not in values:
        return Issue(("trtllm_build", key), f"'{key}' takes {' or '.join(values)}", hint=f"Use '{new}' instead.")
    return None


def _cross_issues(p: HardwareProfile) -> list[Issue]:
    return (
        _build_flag_issues(p)
        + _runtime_env_issues(p)
        + _engine_issues(p)
        + _section_issues(p)
        + _fp8_device_issues(p)
        + _limit_issues(p)
        + _tree_issues(p)
    )


def _build_flag_issues(p: HardwareProfile) -> list[Issue]:
    """trtllm_build keys: trtllm-build flags that medusa-trt does not set itself."""
    issues: list[Issue] = []
    for key in p.trtllm_build:
        if key in TRTLLM_BUILD_DEPRECATED:
            issue = _deprecated_issue(p, key)
            issues += [issue] if issue else []
        elif key in TRTLLM_BUILD_MANAGED:
            issues.append(
                Issue(
                    ("trtllm_build", key),
                    f"'{key}' is set by medusa-trt",
                    hint=f"Set it through {TRTLLM_BUILD_MANAGED[key]}.",
                    on_key=True,
                )
            )
        elif key not in TRTLLM_BUILD_FLAGS:
            guess = closest(key, TRTLLM_BUILD_FLAGS)
            issues.append(
                Issue(
                    ("trtllm_build", key),
                    f"'{key}' is not a trtllm-build flag",
                    hint=(f"Did you mean '{guess}'? " if guess else "")
                    + "Keys are trtllm-build flag names without dashes (see `trtllm-build --help`).",
                    on_key=True,
                )
            )
    return issues


def _runtime_env_issues(p: HardwareProfile) -> list[Issue]:
    issues: list[Issue] = []
    for key in p.runtime_env:
        if not _ENV_NAME.match(key):
            issues.append(Issue(("runtime_env", key), f"'{key}' is not a valid environment variable name", on_key=True))
    ub_tp = p.runtime_env.get("UB_TP_SIZE")
    if ub_tp is not None and str(ub_tp) != str(p.parallelism.tp):
        issues.append(
            Issue(
                ("runtime_env", "UB_TP_SIZE"),
                f"UB_TP_SIZE {ub_tp} differs from parallelism.tp {p.parallelism.tp}",
                hint="The userbuffer all-reduce spans the TP group: set them equal.",
            )
        )
    return issues


def _alternatives(fits: Callable[[engine_facts.EngineFacts], bool], like: engine_facts.EngineFacts) -> str:
    """The engines that draft as ``like`` does and pass ``fits``, for a hint: ``reference``."""
    return " or ".join(f.name for f in engine_facts.FACTS.values() if f.drafting is like.drafting and fits(f))


def _engine_issues(p: HardwareProfile) -> list[Issue]:
    """What the engine needs of the device and precision (its row in engine_facts)."""
    f, device = engine_facts.get(p.engine), p.hardware.device
    issues: list[Issue] = []
    if device not in f.devices:
        others = _alternatives(lambda o: device in o.devices, f)
        issues.append(
            Issue(
                ("hardware", "device"),
                f"engine {f.name} needs device {' or '.join(f.devices)}",
                hint=f"Use engine: {others} for {device.upper()} profiles." if others else None,
            )
        )
    if device == "cuda" and not p.hardware.gpu:
        issues.append(
            Issue(
                ("hardware",),
                "missing required key 'gpu' for a cuda device",
                hint="e.g. gpu: H200 (matched against the names nvidia-smi reports).",
            )
        )
    if not f.fp8_devices and p.precision.quantization != "none":
        others = _alternatives(lambda o: bool(o.fp8_devices), f)
        issues.append(
            Issue(
                ("precision", "quantization"),
                f"the {f.name} engine runs unquantized checkpoints",
                hint="Use quantization: none" + (f", or engine: {others} for FP8." if others else "."),
            )
        )
    if not f.fp8_devices and p.precision.kv_cache_dtype == "fp8":
        issues.append(
            Issue(
                ("precision", "kv_cache_dtype"),
                f"the {f.name} engine has no FP8 KV cache",
                hint="Use auto, float32, float16 or bfloat16.",
            )
        )
    return issues


def _section_issues(p: HardwareProfile) -> list[Issue]:
    """The sections only some engines read (engine_facts): set only for those; vLLM's flags not ours."""
    f = engine_facts.get(p.engine)
    if p.vllm and engine_facts.VLLM_FLAGS not in f.sections:
        readers = " or ".join(o.name for o in engine_facts.FACTS.values() if engine_facts.VLLM_FLAGS in o.sections)
        return [Issue(("vllm",), f"a vllm section needs engine: {readers}, not {f.name}", on_key=True)]
    issues = [
        Issue(("vllm", key), f"'{key}' is set by medusa-trt", hint=f"Set it through {VLLM_MANAGED[key]}.", on_key=True)
        for key in p.vllm
        if key in VLLM_MANAGED
    ]
    if p.trtllm_build and engine_facts.TRTLLM_BUILD not in f.sections:
        hint = f"Use the {f.flags_section} section." if f.flags_section else None
        issues.append(Issue(("trtllm_build",), f"engine {f.name} takes no trtllm-build flags", hint=hint))
    if p.serve.extra_llm_api_options and engine_facts.LLM_API_OPTIONS not in f.sections:
        takes = f"takes the {f.flags_section} section" if f.flags_section else "does not read it"
        issues.append(Issue(("serve", "extra_llm_api_options"), f"a TensorRT-LLM option; engine {f.name} {takes}"))
    return issues


def _fp8_device_issues(p: HardwareProfile) -> list[Issue]:
    """An engine with FP8 on some devices only (vLLM's fp8 kernels: GPUs), on a device it otherwise runs on."""
    f, device = engine_facts.get(p.engine), p.hardware.device
    fp8 = p.precision.quantization == "fp8" or p.precision.kv_cache_dtype == "fp8"
    if not fp8 or not f.fp8_devices or device in f.fp8_devices or device not in f.devices:
        return []
    need = " or ".join("a GPU" if d == "cuda" else f"a {d.upper()}" for d in f.fp8_devices)
    return [
        Issue(
            ("precision",),
            f"{f.title}'s FP8 weights and KV cache need {need}",
            hint=f"Use float32 on {device.upper()}.",
        )
    ]


def _limit_issues(p: HardwareProfile) -> list[Issue]:
    if p.limits.max_input_len > p.limits.max_seq_len:
        return [
            Issue(
                ("limits", "max_input_len"),
                f"max_input_len {p.limits.max_input_len} exceeds max_seq_len {p.limits.max_seq_len}",
            )
        ]
    return []


def _tree_issues(p: HardwareProfile) -> list[Issue]:
    from medusa_trt.medusa.trees import load_tree, tree_problems

    try:
        tree = load_tree(p.medusa.tree)
    except TreeError as e:
        return [Issue(("medusa", "tree"), e.message, hint=e.hint)]
    if engine_facts.get(p.engine).chain:
        return _chain_issues(p, tree)
    problems = tree_problems(tree, num_heads=p.medusa.num_heads, max_draft_len=p.medusa.max_draft_len)
    if problems:
        return [
            Issue(
                ("medusa", "tree"),
                "; ".join(problems),
                hint="Fix the tree, or raise medusa.num_heads / medusa.max_draft_len to match it.",
            )
        ]
    p._tree = (json.dumps(p.medusa.tree), tree)
    return []


def _chain_issues(p: HardwareProfile, tree: list[list[int]]) -> list[Issue]:
    """A top-1 chain (vLLM's drafting): max_draft_len caps its length (the heads' count may be lower)."""
    from medusa_trt.medusa.trees import chain, is_chain

    if not is_chain(tree) or len(tree) != p.medusa.max_draft_len:
        return [
            Issue(
                ("medusa", "tree"),
                f"engine {p.engine} drafts a top-1 chain: the tree must be the chain of max_draft_len nodes",
                hint=f"tree: {chain(p.medusa.max_draft_len)}",
            )
        ]
    p._tree = (json.dumps(p.medusa.tree), tree)
    return []


def _union_errors(errors: list[Any]) -> list[Any]:
    """One error per union-typed field: pydantic reports a failure for every member of ``str | int | ...``.

    When a member failed deeper inside the value (``tree[1][1]`` of ``list[list[int]]``), that one is the
    real problem; when every member failed on the value itself, one error names all the types accepted.
    """
    out: list[Any] = []
    groups: dict[yaml_marks.Loc, list[Any]] = {}
    for e in errors:
        raw = tuple(e["loc"])
        tag = next((i for i, p in enumerate(raw) if isinstance(p, str) and yaml_marks.clean_loc((p,)) == ()), None)
        if tag is None:
            out.append(e)
        else:
            groups.setdefault(yaml_marks.clean_loc(raw[:tag]), []).append(e)
    for field, errs in groups.items():
        deeper = [e for e in errs if len(yaml_marks.clean_loc(tuple(e["loc"]))) > len(field)]
        if deeper:
            out.append(deeper[0])
            continue
        kinds = [
            next(str(p) for p in e["loc"] if isinstance(p, str) and yaml_marks.clean_loc((p,)) == ()) for e in errs
        ]
        out.append(dict(errs[0], loc=field, msg=f"Input should be one of: {', '.join(dict.fromkeys(kinds))}"))
    return out


def _pydantic_issues(err: ValidationError) -> list[Issue]:
    issues = []
    for e in _union_errors(list(err.errors())):
        loc = yaml_marks.clean_loc(tuple(e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            issues.append(Issue(loc, "unknown key", hint=_allowed_keys_hint(loc), on_key=True))
        elif kind == "missing":
            issues.append(Issue(loc, "missing required key", hint=f"Add '{loc[-1]}' here." if loc else None))
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            issues.append(Issue(loc, f"{e['msg']}{shown}"))
    # An unknown key is usually the cause of a 'missing' one (a typo): report it first.
    return sorted(issues, key=lambda i: not i.on_key)


def _allowed_keys_hint(loc: yaml_marks.Loc) -> str | None:
    model: type[BaseModel] = HardwareProfile
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    keys = ", ".join(model.model_fields)
    guess = closest(str(loc[-1]), set(model.model_fields)) if loc else None
    return (f"Did you mean '{guess}'? " if guess else "") + f"Allowed keys here: {keys}."


# --- loading ----------------------------------------------------------------------------------------


def parse_profile(text: str, source: str, path: Path | None = None) -> HardwareProfile:
    """Validate YAML text; every error names ``source:line`` and the key."""
    return _validate(*yaml_marks.parse_yaml(text, source), source, path)


def _validate(data: Any, root: Any, source: str, path: Path | None) -> HardwareProfile:
    if not isinstance(data, dict):
        raise ProfileError(
            f"{source}:1: a profile is a YAML mapping of sections",
            hint="Start from a shipped profile: medusa-trt profiles show cpu",
        )
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as e:
        yaml_marks.raise_issues(_pydantic_issues(e), root, source)
        raise  # unreachable: raise_issues raises for a non-empty list
    yaml_marks.raise_issues(_cross_issues(profile), root, source)
    profile._source = path
    return profile


def profile_dirs() -> list[Path]:
    """Where named profiles are looked up, first match wins."""
    dirs: list[Path] = []
    if os.environ.get(PROFILES_ENV):
        dirs.append(Path(os.environ[PROFILES_ENV]).expanduser())
    here = Path(__file__).resolve()
    root = here.parents[3]  # <repo>/src/medusa_trt/config/profile.py in a source checkout (editable install)
    if here.parents[2].name == "src" and (root / "pyproject.toml").is_file() and (root / "profiles").is_dir():
        dirs.append(root / "profiles")
    shipped = here.parents[1] / "_profiles"  # the wheel's copy (pyproject force-include)
    if shipped.is_dir():
        dirs.append(shipped)
    return dirs


def profile_paths() -> dict[str, Path]:
    """Profile name -> YAML file, over all profile directories."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for f in sorted(d.glob("*.y*ml")):
            if f.suffix in (".yaml", ".yml"):
                found.setdefault(f.stem, f)
    return found


def _looks_like_path(given: str) -> bool:
    return given.endswith((".yaml", ".yml")) or os.sep in given or "/" in given


def load_profile_file(path: Path, *, expect_name: str | None = None) -> HardwareProfile:
    try:
        text = yamlread.read_capped(path)
    except FileNotFoundError as e:
        raise ProfileError(
            f"{path}: no such profile file",
            hint="Give a profile name (medusa-trt profiles list) or an existing YAML file.",
        ) from e
    except yamlread.YamlRefused as e:
        yamlread.raise_as(e, str(path), ProfileError, hint="A profile is a small YAML mapping; see the shipped ones.")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read the profile ({e.__class__.__name__})") from e
    data, root = yaml_marks.parse_yaml(text, str(path))
    profile = _validate(data, root, str(path), path)
    if expect_name is not None and profile.name != expect_name:
        yaml_marks.raise_issues(
            [
                Issue(
                    ("name",),
                    f"'{profile.name}' differs from the file name '{path.name}'",
                    hint=f"Rename the file or set name: {expect_name}",
                )
            ],
            root,
            str(path),
        )
    return profile


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (see :func:`profile_paths`) or from a YAML file path."""
    given = str(name_or_path)
    path = Path(given).expanduser()
    if isinstance(name_or_path, Path) or path.is_file() or _looks_like_path(given):
        logger.debug("profile %r: the file %s", given, path)
        return load_profile_file(path)
    paths = profile_paths()
    if given in paths:
        logger.debug("profile %r: %s (searched %s)", given, paths[given], ", ".join(map(str, profile_dirs())))
        return load_profile_file(paths[given], expect_name=given)
    guess = closest(given, set(paths))
    raise ProfileError(
        f"unknown profile '{given}'",
        hint=(f"Did you mean '{guess}'? " if guess else "")
        + f"Profiles: {', '.join(sorted(paths)) or '(none found)'}; or give a YAML file path.",
    )


def list_profiles() -> list[HardwareProfile]:
    """Every named profile, sorted by name (a broken file raises its ProfileError)."""
    return [load_profile_file(p, expect_name=n) for n, p in sorted(profile_paths().items())]
