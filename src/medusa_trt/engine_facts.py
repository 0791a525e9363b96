"""What medusa-trt knows of each engine without importing it: one row per engine in ``FACTS``.

The profile's ``engine:`` values and the rules profile validation applies per engine
(``config.profile``), what ``plan`` models (verify width, engine files on disk, the step-time
constants, the toolkit to look for), how ``build`` and ``bench`` describe its drafting, and the
capabilities each engine package under ``medusa_trt/engines/`` declares, all read these rows. Modules
below ``engines/`` never compare an engine's name: adding an engine is a row here and its package
there (``tests/test_layers.py`` checks that nothing else names one). Standard library only: every
layer may import this module.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Drafting(str, enum.Enum):
    """How the engine drafts with the Medusa heads."""

    TREE = "tree"  # a tree of candidates (medusa_choices), verified in one forward
    CHAIN = "chain"  # the top-1 token of each of K heads, one chain


@dataclass(frozen=True)
class Capabilities:
    drafting: Drafting
    sampling: bool  # temperature > 0 with the heads on
    logprobs: bool  # logprobs in the OpenAI responses
    hardware: str  # what serving needs, in words: "any machine", "NVIDIA GPUs (CUDA)"
    api_key: bool  # the server checks `run --api-key` itself

    def to_json(self) -> dict[str, Any]:
        return {
            "drafting": self.drafting.value,
            "sampling": self.sampling,
            "logprobs": self.logprobs,
            "hardware": self.hardware,
            "api_key": self.api_key,
        }


@dataclass(frozen=True)
class StepConstants:
    """An engine's constants in `plan`'s step-time model; sources in docs/perf-model.md."""

    hbm_efficiency: float  # eta: achieved fraction of the HBM bandwidth for small-M GEMMs
    gemm_efficiency: float  # fraction of dense TFLOPS reached when a step turns compute-bound
    layer_fixed_us: float  # latency-bound kernels per layer (norms, RoPE/KV append, attention, activation)
    host_ms: float  # host / launch / sampling overhead per step
    ar_bw_efficiency: float  # fraction of per-direction link bandwidth a one-shot all-reduce reaches
    verify_token_us: float  # logits + sampling/acceptance cost per extra verified token
    head_us: float  # fixed kernel cost per Medusa head (ResBlock GEMM, lm_head GEMM, top-k)
    medusa_fixed_us: float  # tree acceptance and draft-buffer packing per step


# TensorRT-LLM's compiled engines, calibrated on NVIDIA's published H200 figures (docs/perf-model.md)
TENSORRT_STEP = StepConstants(
    hbm_efficiency=0.8,
    gemm_efficiency=0.5,
    layer_fixed_us=20.0,
    host_ms=0.1,
    ar_bw_efficiency=0.535,
    verify_token_us=1.0,
    head_us=10.0,
    medusa_fixed_us=30.0,
)
# PyTorch eager on CPU: rough assumptions, not calibrated (the CPU path is for correctness; `bench` measures).
EAGER_STEP = StepConstants(
    hbm_efficiency=0.5,
    gemm_efficiency=0.3,
    layer_fixed_us=150.0,
    host_ms=2.0,
    ar_bw_efficiency=0.5,
    verify_token_us=20.0,
    head_us=100.0,
    medusa_fixed_us=500.0,
)

VLLM_PYTHON_ENV = "MEDUSA_TRT_VLLM_PYTHON"  # the interpreter of a separate vLLM environment


@dataclass(frozen=True)
class Toolkit:
    """The third-party package an engine runs, found without importing it."""

    module: str  # its import name
    extra: str  # the medusa-trt extra that installs it: pip install 'medusa-trt[EXTRA]'
    python_env: str | None = None  # a variable naming another interpreter that has it (its own environment)

    def interpreter(self, env: Mapping[str, str] | None = None) -> str | None:
        """The interpreter that runs it: ``$python_env``, else ours when the module is importable here."""
        env = os.environ if env is None else env
        if self.python_env and env.get(self.python_env):
            return env[self.python_env]
        return sys.executable if importlib.util.find_spec(self.module) is not None else None

    def install_hint(self) -> str:
        return f"pip install 'medusa-trt[{self.extra}]'" + (f", or set {self.python_env}" if self.python_env else "")


VLLM_TOOLKIT = Toolkit("vllm", "vllm", VLLM_PYTHON_ENV)

# The profile sections that only some engines read (each row's `sections`); the others are every engine's.
TRTLLM_BUILD = "trtllm_build"  # trtllm-build flags
VLLM_FLAGS = "vllm"  # vLLM server flags
LLM_API_OPTIONS = "serve.extra_llm_api_options"  # TensorRT-LLM's LLM API options (trtllm-serve --config)


@dataclass(frozen=True)
class EngineFacts:
    name: str  # the profile's `engine:`, the manifest's "engine"; its package is medusa_trt.engines.<name>
    title: str  # the name shown to people
    capabilities: Capabilities
    devices: tuple[str, ...]  # the profile `hardware.device` values it runs on
    fp8_devices: tuple[str, ...]  # where its FP8 weights and KV cache work; () for none
    sections: frozenset[str]  # which of the sections above a profile for it may set
    flags_section: str | None  # the section holding its own tool's flags
    engine_subdir: str | None  # the sub-directory of engine files its build writes (manifest engine_dir)
    compiles: bool  # the build writes engine files about the size of the checkpoint (TensorRT engines)
    pads_to_max_draft_len: bool  # a step verifies max_draft_len + 1 tokens per sequence, whatever the tree
    medusa_per_request: bool  # its server turns the heads off per request (plain decoding beside Medusa)
    step: StepConstants  # `plan`'s step-time model
    toolkit: Toolkit | None = None  # what `plan` looks for on this machine; None: medusa-trt's own dependencies

    @property
    def drafting(self) -> Drafting:
        return self.capabilities.drafting

    @property
    def chain(self) -> bool:
        """It drafts a top-1 chain (its tree is the chain of max_draft_len nodes), not a tree."""
        return self.drafting is Drafting.CHAIN


_ROWS = (
    EngineFacts(
        name="trtllm",
        title="TensorRT-LLM",
        # Medusa on TensorRT-LLM decodes greedily only (examples/medusa/README.md: "Medusa decoding only
        # supporting greedy decoding"); logprobs are not claimed.
        capabilities=Capabilities(
            drafting=Drafting.TREE, sampling=False, logprobs=False, hardware="NVIDIA GPUs (CUDA)", api_key=False
        ),
        devices=("cuda",),
        fp8_devices=("cuda",),
        sections=frozenset({TRTLLM_BUILD, LLM_API_OPTIONS}),
        flags_section=TRTLLM_BUILD,
        engine_subdir="engine",
        compiles=True,
        pads_to_max_draft_len=True,  # the engine's draft buffers are max_draft_len long
        medusa_per_request=False,
        step=TENSORRT_STEP,
        toolkit=Toolkit("tensorrt_llm", "trtllm"),
    ),
    EngineFacts(
        name="reference",
        title="reference runtime",
        capabilities=Capabilities(
            drafting=Drafting.TREE, sampling=True, logprobs=True, hardware="any machine (CPU or CUDA)", api_key=True
        ),
        devices=("cuda", "cpu"),
        fp8_devices=(),
        # accepted and unused, so that a profile moves between trtllm and reference by its engine: line
        sections=frozenset({TRTLLM_BUILD, LLM_API_OPTIONS}),
        flags_section=None,
        engine_subdir=None,  # it runs the TRT-LLM checkpoint itself
        compiles=False,
        pads_to_max_draft_len=False,
        medusa_per_request=True,
        step=EAGER_STEP,
    ),
    EngineFacts(
        name="vllm",
        title="vLLM",
        capabilities=Capabilities(
            drafting=Drafting.CHAIN,
            sampling=True,
            logprobs=True,
            hardware="NVIDIA GPUs, or a CPU with vLLM's CPU build",
            api_key=True,
        ),
        devices=("cuda", "cpu"),
        fp8_devices=("cuda",),  # vLLM's fp8 kernels
        sections=frozenset({VLLM_FLAGS}),
        flags_section=VLLM_FLAGS,
        engine_subdir=None,  # the heads are in the manifest's vllm.heads_dir; the model is served from where it is
        compiles=False,
        pads_to_max_draft_len=False,
        medusa_per_request=False,
        step=EAGER_STEP,  # not calibrated for vLLM: `bench` measures it
        toolkit=VLLM_TOOLKIT,
    ),
)

# name -> row, in the order error messages list them
FACTS: dict[str, EngineFacts] = {row.name: row for row in _ROWS}
CHECKPOINT_ENGINE = "reference"  # the engine that serves a converted checkpoint (no manifest) as it is


def get(name: str) -> EngineFacts:
    """The row of a name the profile or manifest validation accepted (KeyError otherwise)."""
    return FACTS[name]


def find(name: object) -> EngineFacts | None:
    """The row of ``name`` when it is an engine's, else None (a manifest from elsewhere, a server URL)."""
    return FACTS.get(name) if isinstance(name, str) else None


def names() -> tuple[str, ...]:
    return tuple(FACTS)


def spelled(values: tuple[str, ...] | list[str], last: str = "or") -> str:
    """``'a', 'b' or 'c'``: the values as pydantic lists a Literal's."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"
