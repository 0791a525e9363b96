"""FP8 (ModelOpt) checkpoints run by dequantizing with weights_scaling_factor: the logits equal
transformers on the dequantized weights, at tp 1 and with 2 real ranks; greedy Medusa stays lossless."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medusa_trt.runtime import SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint


def dequantized_hf(fp8_dir: Path) -> torch.nn.Module:
    import json

    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    state = load_file(str(next(fp8_dir.glob("*.safetensors"))))
    # TRT-LLM's fused qkv has one scale: the parts below the max are requantized to it, as convert does.
    for name in [n for n in state if n.endswith("q_proj.weight_scale")]:
        parts = [name.replace("q_proj", p) for p in ("q_proj", "k_proj", "v_proj")]
        top = max(float(state[p]) for p in parts)
        for p in parts:
            w = p.removesuffix("_scale")
            state[w] = (state[w].float() * (float(state[p]) / top)).to(torch.float8_e4m3fn)
            state[p] = torch.tensor(top)
    weights = {}
    for name, w in state.items():
        if name.endswith(".weight") and name.removesuffix("weight") + "weight_scale" in state:
            w = w.float() * state[name.removesuffix("weight") + "weight_scale"].float()
        if name.startswith("model.") or name.startswith("lm_head."):
            weights[name] = w.float()
    cfg = json.loads((fp8_dir / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("quantization_config", "medusa")}
    model = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
    model.load_state_dict(weights, strict=False)
    return model


@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_logits_match_dequantized_reference(tmp_path: Path, tiny_llama: Path, tiny_heads: Path, tp: int) -> None:
    from tests.helpers.modelopt import make_modelopt_fp8

    fp8 = make_modelopt_fp8(tiny_llama, tmp_path / "fp8", heads_dir=tiny_heads, dtype="float32")
    ckpt = make_checkpoint(fp8, tmp_path / "ckpt", tp=tp)
    ids = torch.randint(0, 320, (40,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = dequantized_hf(fp8)(ids[None]).logits[0]
    with load_engine(ckpt, tree="nvidia_low_latency_15") as engine:
        assert engine.info.quant_algo == "FP8" and engine.has_medusa
        engine.reset_cache(64)
        got = engine.forward(ids, torch.arange(40))
        assert float((got - want).abs().max() / want.abs().max()) < 1e-4
        runs = [
            [t for c in engine.generate([7, 8, 9], SamplingParams(max_tokens=24), medusa=m) for t in c.token_ids]
            for m in (False, True)
        ]
        assert runs[0] == runs[1]
