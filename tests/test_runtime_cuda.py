"""CUDA execution (skipped without an NVIDIA GPU): fp32 logits match transformers; bf16 Medusa is lossless."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medusa_trt.runtime import SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint

pytestmark = pytest.mark.gpu


def test_cuda_fp32_logits_and_bf16_lossless(tmp_path: Path, tiny_llama: Path, tiny_heads: Path) -> None:
    from transformers import LlamaForCausalLM

    ids = torch.randint(0, 320, (120,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = LlamaForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()(ids[None]).logits[0]
    with load_engine(make_checkpoint(tiny_llama, tmp_path / "f32", heads=tiny_heads), device="cuda") as engine:
        engine.reset_cache(128)
        got = engine.forward(ids.cuda(), torch.arange(120, device="cuda")).cpu()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3  # TF32 may be on for CUDA matmuls
    ckpt = make_checkpoint(tiny_llama, tmp_path / "bf16", heads=tiny_heads, dtype="bfloat16")
    with load_engine(ckpt, device="cuda", tree="nvidia_low_latency_15") as engine:
        runs = [
            [t for c in engine.generate([5, 6, 7], SamplingParams(max_tokens=32), medusa=m) for t in c.token_ids]
            for m in (False, True)
        ]
    assert runs[0] == runs[1] and len(runs[0]) > 0


def test_cuda_greedy_batch_equals_one_generate_per_prompt(tmp_path: Path, tiny_llama: Path) -> None:
    """The batched distillation path on CUDA (fp32): left pads masked, rows retired mid-batch."""
    prompts, budgets = [[5, 6, 7], list(range(10, 40)), [9]], [20, 4, 33]
    with load_engine(make_checkpoint(tiny_llama, tmp_path / "f32"), device="cuda") as engine:
        got = engine.greedy_batch(prompts, budgets)
        for p, b, c in zip(prompts, budgets, got, strict=True):
            chunks = list(engine.generate(p, SamplingParams(max_tokens=b), medusa=False))
            assert c.token_ids == [t for ch in chunks for t in ch.token_ids]
            assert c.finish_reason == chunks[-1].finish_reason
