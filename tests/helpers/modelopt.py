"""A ModelOpt-style FP8 combined checkpoint made from a tiny HF Llama and FasterDecoding heads.

It mirrors what NVIDIA Model Optimizer's Hugging Face export writes for ``nvidia/Llama-3.1-*-Medusa-FP8``:
per-tensor FP8 (e4m3) linear weights with float32 ``weight_scale`` / ``input_scale`` scalars, KV-cache
``self_attn.k_proj.k_scale`` / ``self_attn.v_proj.v_scale``, bf16 embedding, norms and lm_head,
``medusa_heads.{k}.{l}.linear.*`` and ``medusa_heads.{k}.{L}.weight`` tensors, ``config.json`` with a ``medusa`` section, and
``hf_quant_config.json`` with producer ``modelopt``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def quantize_fp8(w: Any) -> tuple[Any, Any]:
    """Per-tensor FP8: (weight in float8_e4m3fn, float32 scalar scale) with w ~= weight * scale."""
    import torch

    scale = (w.detach().float().abs().max() / FP8_MAX).clamp(min=1e-12)  # []
    q = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.reshape(())


def _load(path: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".pt":
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    return load_file(str(path))


def make_modelopt_fp8(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    heads_dir: str | Path | None = None,
    kv_cache: bool = True,
    quantize_heads_lm_head: bool = True,
    dtype: str = "bfloat16",
) -> Path:
    """Write the FP8 combined checkpoint of ``model_dir`` (+ heads) into ``out_dir``."""
    import torch
    from safetensors.torch import save_file

    src, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    files = sorted(src.glob("*.safetensors"))
    state: dict[str, Any] = {}
    for f in files:
        state.update(_load(f))
    half = getattr(torch, dtype)
    tensors: dict[str, Any] = {}
    for i, (name, w) in enumerate(sorted(state.items())):
        if _LINEAR.match(name):
            q, s = quantize_fp8(w)
            base = name.removesuffix(".weight")
            tensors[name] = q
            tensors[f"{base}.weight_scale"] = s
            tensors[f"{base}.input_scale"] = torch.tensor(
                0.01 * (1 + i % 7), dtype=torch.float32
            )  # calibrated amax/448
        else:
            tensors[name] = w.to(half)
    if kv_cache:
        for layer in range(int(cfg["num_hidden_layers"])):
            p = f"model.layers.{layer}.self_attn."
            tensors[f"{p}k_proj.k_scale"] = torch.tensor(0.02 + 0.001 * layer, dtype=torch.float32)
            tensors[f"{p}v_proj.v_scale"] = torch.tensor(0.03 + 0.001 * layer, dtype=torch.float32)
    if heads_dir is not None:
        hdir = Path(heads_dir)
        hfile = hdir / "medusa_lm_head.safetensors"
        heads = _load(hfile if hfile.is_file() else hdir / "medusa_lm_head.pt")
        hcfg = json.loads((hdir / "config.json").read_text())
        n_layers = int(hcfg["medusa_num_layers"])
        for name, w in heads.items():
            k, idx = name.split(".")[:2]
            is_linear = name.endswith(".linear.weight")
            is_lm = int(idx) == n_layers and name.endswith(".weight")
            if is_linear or (is_lm and quantize_heads_lm_head):
                q, s = quantize_fp8(w)
                tensors[f"medusa_heads.{name}"] = q
                base = f"medusa_heads.{name.removesuffix('.weight')}"
                tensors[f"{base}.weight_scale"] = s
                tensors[f"{base}.input_scale"] = torch.tensor(0.015 + 0.001 * int(k), dtype=torch.float32)
            else:
                tensors[f"medusa_heads.{name}"] = w.to(half)
        k_count = len({n.split(".")[0] for n in heads})
        cfg["medusa"] = {"num_medusa_heads": k_count, "num_medusa_layers": n_layers}
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    cfg["torch_dtype"] = dtype
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "FP8"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    exclude = ["lm_head"] + ([] if quantize_heads_lm_head else ["medusa_heads*lm_head"])
    quant = {
        "producer": {"name": "modelopt", "version": "0.19.0"},
        "quantization": {
            "quant_algo": "FP8",
            "kv_cache_quant_algo": "FP8" if kv_cache else None,
            "exclude_modules": exclude,
        },
    }
    (out / "hf_quant_config.json").write_text(json.dumps(quant, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return out
