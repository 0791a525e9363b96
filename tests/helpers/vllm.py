"""vLLM for the tests: its interpreter (or a skip that CI turns into a failure), its own argument parser,
and a tiny float32 Llama whose head size vLLM's CPU attention supports, with trained Medusa heads.

vLLM may live in another environment (its pins can differ from ours): ``MEDUSA_TRT_VLLM_PYTHON`` names
that interpreter; otherwise vLLM must be importable here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.config.vllm_flags import VLLM_PYTHON_ENV, vllm_python

# vLLM's CPU attention takes head sizes 32, 64, 80, ... (vllm/v1/attention/backends/cpu_attn.py, v0.32.0):
# the tests' usual tiny Llama (hidden 64, 4 heads: 16) is too small for it.
VLLM_TINY = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}

# vLLM's parser, exactly as `python -m vllm.entrypoints.openai.api_server` builds it (its main(), v0.32.0),
# then (local model) the engine arguments it derives: an unknown flag or a bad value fails here.
_PARSE = """
import json, os, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.engine.arg_utils import AsyncEngineArgs
out = []
for argv in json.load(sys.stdin):
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(args)
    # the engine arguments too where the model is local (a hub id would be looked up on the hub)
    ea = AsyncEngineArgs.from_cli_args(args) if os.path.isdir(args.model) else args
    out.append({k: getattr(ea, k) for k in (
        "model", "revision", "served_model_name", "dtype", "tensor_parallel_size", "quantization",
        "kv_cache_dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "speculative_config",
        "enforce_eager", "gpu_memory_utilization")} | {"host": args.host, "port": args.port})
print("RESULT " + json.dumps(out, default=str))
"""


def require_vllm() -> str:
    """vLLM's interpreter; skip with the reason where it is not installed, fail under CI (CI=true)."""
    found = vllm_python()
    if found is None:
        reason = f"vLLM is not installed (pip install -e '.[vllm]', or set {VLLM_PYTHON_ENV})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: CI runs the vLLM tests, they may not be skipped there")
        pytest.skip(reason)
    return found


def parse_with_vllm(python: str, argvs: list[list[str]]) -> list[dict[str, Any]]:
    """Each argv (flags after ``-m vllm.entrypoints.openai.api_server``) through vLLM's own parser."""
    proc = subprocess.run([python, "-c", _PARSE], input=json.dumps(argvs), capture_output=True, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line is not None, proc.stderr[-3000:]
    return list(json.loads(line.removeprefix("RESULT ")))


def make_vllm_model(root: Path, *, num_heads: int = 4, steps: int = 120, head_steps: int = 150) -> tuple[Path, Path]:
    """A tiny float32 Llama 3 (head size 32) pre-trained on a small repetitive corpus, and Medusa heads
    trained on its own greedy output by `heads train`'s code: its drafts get accepted, as on a real model."""
    import torch

    from medusa_trt.demo.pretrain import ModelRecipe, pretrain
    from tests.helpers.models import DEFAULT_CORPUS

    torch.set_num_threads(1)
    recipe = ModelRecipe(
        vocab_size=320,
        intermediate_size=256,
        num_hidden_layers=2,
        max_position_embeddings=512,
        steps=steps,
        batch_size=8,
        seq_len=64,
        warmup=10,
        **{k: v for k, v in VLLM_TINY.items() if k != "intermediate_size"},
    )
    pretrain(root / "model", DEFAULT_CORPUS, recipe)
    return root / "model", train_vllm_heads(root / "model", root / "heads", num_heads=num_heads, steps=head_steps)


def train_vllm_heads(model: Path, out: Path, *, num_heads: int, steps: int = 150, share_lm_head: bool = False) -> Path:
    """Heads for ``make_vllm_model``'s model, trained by `heads train`'s code on its own greedy output
    (with ``share_lm_head`` the base lm_head frozen: every head's lm_head is a copy of it)."""
    import torch

    from medusa_trt.train.trainer import TrainConfig, train_heads

    torch.set_num_threads(1)
    cfg = TrainConfig(
        num_heads=num_heads,
        steps=steps,
        lr=1e-2 if share_lm_head else 3e-3,  # the ResBlocks alone take a higher rate
        batch_size=8,
        seq_len=64,
        gen_tokens=48,
        progress=False,
        share_lm_head=share_lm_head,
    )
    train_heads(model, out, data=PROMPTS, config=cfg)
    return out


PROMPTS = [
    "def main():\n",
    "The quick brown fox",
    "class Model:\n",
    "    def __init__(self, name):\n",
    "Speculative decoding",
    "return 0\n",
    "The lazy dog",
    "self.name = name\n",
    "drafts tokens and",
    "jumps over the",
]
