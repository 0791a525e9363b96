"""`convert`: every tensor name, shape and dtype of the TRT-LLM rank files, and exact reassembly of the sources.

Expected names and shapes are computed here from the model numbers (docs/sources.md, TensorRT-LLM checkpoint format), not
from the converter's own plan, and the shards are put back together by undoing each split rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from medusa_trt.checkpoint import convert_checkpoint
from tests.helpers.modelopt import make_modelopt_fp8
from tests.helpers.models import make_medusa_heads, make_tiny_llama

V, D, H, KV, HD, INTER, LAYERS = 322, 64, 8, 2, 8, 128, 2  # V % 4 and V % 8 != 0: lm_head padding happens
TINY = {"vocab_size": V, "num_attention_heads": H, "num_key_value_heads": KV}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("convert-src")
    gqa = make_tiny_llama(root / "gqa", seed=1, shards=2, **TINY)  # hub spelling, sharded
    tied = make_tiny_llama(root / "tied", seed=2, rope_style="rope_parameters", tie_word_embeddings=True, **TINY)
    heads_bias = make_medusa_heads(root / "h-bias", hidden_size=D, vocab_size=V, num_heads=3, config_num_heads=2)
    heads_pt = make_medusa_heads(
        root / "h-pt", hidden_size=D, vocab_size=V, num_heads=2, num_layers=2, bias=False, fmt="pt", seed=3
    )
    fp8 = make_modelopt_fp8(gqa, root / "fp8", heads_dir=heads_pt)
    return {
        "gqa": {"model": gqa, "medusa": heads_bias, "K": 3, "L": 1, "bias": True},
        "tied": {"model": tied, "medusa": heads_pt, "K": 2, "L": 2, "bias": False},
        "fp8": {"model": fp8, "medusa": None, "K": 2, "L": 2, "bias": False},
        "plain": {"model": gqa, "medusa": None, "K": 0, "L": 0, "bias": False},
    }


def _source(model: Path, medusa: Path | None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if medusa is not None:
        st = medusa / "medusa_lm_head.safetensors"
        heads = load_file(str(st)) if st.is_file() else torch.load(medusa / "medusa_lm_head.pt", weights_only=True)
        state.update({f"medusa_heads.{k}": v for k, v in heads.items()})
    return state


def _expected(t: int, k: int, layers: int, fp8: bool, dt: torch.dtype) -> dict[str, tuple[tuple[int, ...], Any]]:
    kvr, vp = max(1, KV // t), -(-V // t) * t
    w8 = torch.float8_e4m3fn if fp8 else dt
    exp: dict[str, tuple[tuple[int, ...], Any]] = {
        "transformer.vocab_embedding.weight": ((V, D), dt),
        "transformer.ln_f.weight": ((D,), dt),
        "lm_head.weight": ((vp // t, D), dt),
    }

    def lin(name: str, shape: tuple[int, ...]) -> None:
        exp[f"{name}.weight"] = (shape, w8)
        if fp8:
            exp[f"{name}.weights_scaling_factor"] = ((1,), torch.float32)
            exp[f"{name}.activation_scaling_factor"] = ((1,), torch.float32)

    for i in range(LAYERS):
        p = f"transformer.layers.{i}."
        exp[f"{p}input_layernorm.weight"] = ((D,), dt)
        exp[f"{p}post_layernorm.weight"] = ((D,), dt)
        lin(f"{p}attention.qkv", ((H // t + 2 * kvr) * HD, D))
        lin(f"{p}attention.dense", (D, H * HD // t))
        lin(f"{p}mlp.fc", (INTER // t, D))
        lin(f"{p}mlp.gate", (INTER // t, D))
        lin(f"{p}mlp.proj", (D, INTER // t))
        if fp8:
            exp[f"{p}attention.kv_cache_scaling_factor"] = ((1,), torch.float32)
    for h in range(k):
        for ly in range(layers):
            lin(f"medusa_heads.{h}.medusa_layers.{ly}.linear", (D // t, D))
            exp[f"medusa_heads.{h}.medusa_layers.{ly}.linear.bias"] = ((D // t,), dt)
        lin(f"medusa_heads.{h}.lm_head", (vp // t, D))
    return exp


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (FP8 compared as bytes)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return (
        bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))
        if a.dtype.itemsize == 1
        else bool(torch.equal(a, b))
    )


def _deq(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return w.to(torch.float32) * s.to(torch.float32)


def _check_reassembly(
    ranks: list[dict[str, torch.Tensor]],
    src: dict[str, torch.Tensor],
    t: int,
    k: int,
    layers: int,
    has_bias: bool,
    fp8: bool,
    dt: torch.dtype,
) -> None:
    def s(name: str) -> torch.Tensor:  # a source tensor in the written dtype (FP8 weights stay FP8)
        x = src[name]
        return x if x.dtype == torch.float8_e4m3fn else x.to(dt)

    def cat(name: str, dim: int) -> torch.Tensor:
        return torch.cat([r[name] for r in ranks], dim=dim)

    for name, hf in (
        ("transformer.vocab_embedding.weight", "model.embed_tokens.weight"),
        ("transformer.ln_f.weight", "model.norm.weight"),
    ):
        assert all(_same(r[name], s(hf)) for r in ranks), name  # replicated, full
    lm_src = "lm_head.weight" if "lm_head.weight" in src else "model.embed_tokens.weight"  # tied
    lm = cat("lm_head.weight", 0)
    assert _same(lm[:V], s(lm_src)) and not lm[V:].to(torch.float32).any()  # padding rows are zeros
    kvr, q_rows = max(1, KV // t), H // t * HD
    for i in range(LAYERS):
        p, hp = f"transformer.layers.{i}.", f"model.layers.{i}."
        for name, hf in (("input_layernorm", "input_layernorm"), ("post_layernorm", "post_attention_layernorm")):
            assert all(_same(r[f"{p}{name}.weight"], s(f"{hp}{hf}.weight")) for r in ranks)
        qkv = [r[f"{p}attention.qkv.weight"] for r in ranks]
        q = torch.cat([x[:q_rows] for x in qkv])
        kk = [x[q_rows : q_rows + kvr * HD] for x in qkv]
        vv = [x[q_rows + kvr * HD :] for x in qkv]
        if t > KV:  # replicated: rank r holds head r*KV//t; every replica identical
            for j in range(KV):
                holders = [r for r in range(t) if r * KV // t == j]
                assert len(holders) == t // KV
                assert all(_same(kk[r], kk[holders[0]]) and _same(vv[r], vv[holders[0]]) for r in holders)
            kk = [kk[j * t // KV] for j in range(KV)]
            vv = [vv[j * t // KV] for j in range(KV)]
        parts = {"q_proj": q, "k_proj": torch.cat(kk), "v_proj": torch.cat(vv)}
        if fp8:  # one scale for the fused module: requantized parts agree after dequantization
            scale = ranks[0][f"{p}attention.qkv.weights_scaling_factor"]
            src_scales = {n: src[f"{hp}self_attn.{n}.weight_scale"] for n in parts}
            assert float(scale) == max(float(x) for x in src_scales.values())
            act = max(float(src[f"{hp}self_attn.{n}.input_scale"]) for n in parts)
            assert all(float(r[f"{p}attention.qkv.activation_scaling_factor"]) == act for r in ranks)
            for n, got in parts.items():
                want = src[f"{hp}self_attn.{n}.weight"]
                if float(src_scales[n]) == float(scale):
                    assert _same(got, want), n
                else:
                    a, b = _deq(got, scale), _deq(want, src_scales[n])
                    assert torch.allclose(a, b, rtol=0.07, atol=float(scale) * 2**-6), n
            kv = max(float(src[f"{hp}self_attn.k_proj.k_scale"]), float(src[f"{hp}self_attn.v_proj.v_scale"]))
            assert all(float(r[f"{p}attention.kv_cache_scaling_factor"]) == kv for r in ranks)
        else:
            for n, got in parts.items():
                assert _same(got, s(f"{hp}self_attn.{n}.weight")), n
        for name, hf, dim in (
            ("attention.dense", "self_attn.o_proj", 1),
            ("mlp.fc", "mlp.gate_proj", 0),
            ("mlp.gate", "mlp.up_proj", 0),
            ("mlp.proj", "mlp.down_proj", 1),
        ):
            assert _same(cat(f"{p}{name}.weight", dim), s(f"{hp}{hf}.weight")), name
            if fp8:
                for ours, theirs in (
                    ("weights_scaling_factor", "weight_scale"),
                    ("activation_scaling_factor", "input_scale"),
                ):
                    assert all(float(r[f"{p}{name}.{ours}"]) == float(src[f"{hp}{hf}.{theirs}"]) for r in ranks)
    for h in range(k):
        for ly in range(layers):
            p = f"medusa_heads.{h}.medusa_layers.{ly}.linear"
            assert _same(cat(f"{p}.weight", 0), s(f"medusa_heads.{h}.{ly}.linear.weight"))
            bias = cat(f"{p}.bias", 0)
            assert _same(bias, s(f"medusa_heads.{h}.{ly}.linear.bias")) if has_bias else not bias.float().any()
        head_lm = cat(f"medusa_heads.{h}.lm_head.weight", 0)
        assert _same(head_lm[:V], s(f"medusa_heads.{h}.{layers}.weight"))
        assert not head_lm[V:].to(torch.float32).any()


CASES = [(v, t, None) for v in ("gqa", "tied", "fp8") for t in (1, 2, 4, 8)] + [
    ("plain", 2, None),
    ("gqa", 2, "bfloat16"),
]


@pytest.mark.parametrize(("variant", "tp", "dtype"), CASES, ids=[f"{v}-tp{t}-{d or 'src'}" for v, t, d in CASES])
def test_layout_and_reassembly(
    variants: dict[str, dict[str, Any]], tmp_path: Path, variant: str, tp: int, dtype: str | None
) -> None:
    v = variants[variant]
    res = convert_checkpoint(
        v["model"], tmp_path / "out", medusa=v["medusa"], tp=tp, dtype=dtype, workers=min(tp, 4), progress=False
    )
    fp8 = variant == "fp8"
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if fp8 else torch.float32)  # source dtype kept
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg == res.config and cfg["dtype"] == str(dt).removeprefix("torch.")
    assert cfg["mapping"] == {"world_size": tp, "tp_size": tp, "pp_size": 1}
    ranks = [load_file(str(tmp_path / "out" / f"rank{r}.safetensors")) for r in range(tp)]
    assert not (tmp_path / "out" / f"rank{tp}.safetensors").exists()
    exp = _expected(tp, v["K"], v["L"], fp8, dt)
    if fp8:  # ModelOpt keeps the main lm_head unquantized
        exp = {n: e for n, e in exp.items() if not n.startswith("lm_head.") or n == "lm_head.weight"}
        exp["lm_head.weight"] = (exp["lm_head.weight"][0], dt)
    for r, rank in enumerate(ranks):
        assert set(rank) == set(exp), f"rank {r}: {sorted(set(rank) ^ set(exp))[:5]}"
        for name, (shape, dtype_) in exp.items():
            assert tuple(rank[name].shape) == shape and rank[name].dtype == dtype_, (r, name)
    _check_reassembly(ranks, _source(v["model"], v["medusa"]), tp, v["K"], v["L"], v["bias"], fp8, dt)
    if v["K"]:
        assert cfg["architecture"] == "MedusaForCausalLM"
        assert (cfg["num_medusa_heads"], cfg["num_medusa_layers"], cfg["max_draft_len"]) == (v["K"], v["L"], 63)
    else:
        assert cfg["architecture"] == "LlamaForCausalLM" and "num_medusa_heads" not in cfg
    if fp8:
        q = cfg["quantization"]
        assert q["quant_algo"] == "FP8" and q["kv_cache_quant_algo"] == "FP8"
        assert "lm_head" in q["exclude_modules"] and "*vocab_embedding" in q["exclude_modules"]
        assert not any("medusa" in p for p in q["exclude_modules"])  # the fixture quantizes every head module
    else:
        assert cfg["quantization"] == {"quant_algo": None, "kv_cache_quant_algo": None}


@pytest.mark.parametrize("variant", ["gqa", "tied"])
def test_config_rope_and_head_warnings(variants: dict[str, dict[str, Any]], tmp_path: Path, variant: str) -> None:
    v = variants[variant]
    res = convert_checkpoint(v["model"], tmp_path / "out", medusa=v["medusa"], tp=2, progress=False)
    src = json.loads((v["model"] / "config.json").read_text())
    rope = dict(src.get("rope_scaling") or src["rope_parameters"])
    theta = src.get("rope_theta", rope.get("rope_theta"))
    rope.pop("rope_theta", None)
    assert res.config["rotary_base"] == theta
    assert res.config["rotary_scaling"] == dict(rope, type="llama3", rope_type="llama3")
    assert res.config["norm_epsilon"] == src["rms_norm_eps"]
    assert "head_size" not in res.config and "tie_word_embeddings" not in res.config
    spec_keys = {  # the exact key set of TRT-LLM's examples/medusa/convert_checkpoint.py
        "architecture",
        "dtype",
        "logits_dtype",
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_size",
        "intermediate_size",
        "num_key_value_heads",
        "vocab_size",
        "position_embedding_type",
        "max_position_embeddings",
        "hidden_act",
        "rotary_base",
        "rotary_scaling",
        "norm_epsilon",
        "quantization",
        "mapping",
        "use_parallel_embedding",
        "embedding_sharding_dim",
        "max_draft_len",
        "num_medusa_heads",
        "num_medusa_layers",
        "model_type",
    }
    assert set(res.config) == spec_keys
    fixed = {
        "architecture": "MedusaForCausalLM",
        "logits_dtype": "float32",
        "position_embedding_type": "rope_gpt_neox",
        "hidden_act": "silu",
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "model_type": "llama",
        "num_hidden_layers": LAYERS,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "hidden_size": D,
        "intermediate_size": INTER,
        "vocab_size": V,
        "max_position_embeddings": src["max_position_embeddings"],
    }
    assert {k: res.config[k] for k in fixed} == fixed
    if variant == "gqa":  # heads config.json says 2, tensors hold 3: the tensors win, with a warning
        assert res.config["num_medusa_heads"] == 3
        assert any("says 2 heads" in w and "hold 3" in w for w in res.warnings)
    else:
        assert res.warnings == []


def test_num_medusa_heads_selects_first(variants: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    v = variants["gqa"]
    res = convert_checkpoint(
        v["model"], tmp_path / "out", medusa=v["medusa"], tp=2, num_medusa_heads=2, max_draft_len=15, progress=False
    )
    assert res.config["num_medusa_heads"] == 2 and res.config["max_draft_len"] == 15
    assert any("first 2 of 3" in w for w in res.warnings)
    rank = load_file(str(tmp_path / "out" / "rank1.safetensors"))
    assert {n.split(".")[1] for n in rank if n.startswith("medusa_heads.")} == {"0", "1"}
    src = _source(v["model"], v["medusa"])
    assert torch.equal(rank["medusa_heads.1.lm_head.weight"], src["medusa_heads.1.1.weight"][161:322])


@pytest.mark.parametrize(
    ("k", "v"),
    [("k_proj.k_scale", "v_proj.v_scale"), ("k_scale", "v_scale"), ("k_proj.output_scale", "v_proj.output_scale")],
)
def test_kv_cache_scale_spellings(k: str, v: str) -> None:
    """ModelOpt's HF export (and TRT-LLM's own loader) use k_proj.k_scale; older exports the others."""
    from medusa_trt.checkpoint.layout import kv_scale_names
    from medusa_trt.checkpoint.readers import Store
    from medusa_trt.checkpoint.safetensors_io import TensorInfo

    p = "model.layers.0.self_attn."
    store = Store({f"{p}{n}": TensorInfo(Path("x"), "F32", ()) for n in (k, v)}, "src")
    assert kv_scale_names(store, p) == [f"{p}{k}", f"{p}{v}"]
    assert kv_scale_names(Store({}, "src"), p) is None


@pytest.mark.parametrize("heads", ["fp8-layers-bf16-lm-heads", "fasterdecoding-bf16"])
def test_fp8_exclude_modules_match_exactly_the_unquantized_linears(
    variants: dict[str, dict[str, Any]], tmp_path: Path, heads: str
) -> None:
    """TRT-LLM's quantize() skips a module iff fnmatchcase(name, pattern) for some exclude pattern
    (TRT-LLM's quantize_layers): every linear written in the config dtype must match one, no FP8 linear may."""
    from fnmatch import fnmatchcase

    v = variants["gqa"]
    if heads == "fasterdecoding-bf16":  # FP8 base + separate heads, as quantize.py --medusa_model_dir does
        model, medusa = make_modelopt_fp8(v["model"], tmp_path / "fp8"), v["medusa"]
    else:
        model = make_modelopt_fp8(v["model"], tmp_path / "fp8", heads_dir=v["medusa"], quantize_heads_lm_head=False)
        medusa = None
    res = convert_checkpoint(model, tmp_path / "out", medusa=medusa, tp=2, progress=False)
    exclude = res.config["quantization"]["exclude_modules"]
    rank = load_file(str(tmp_path / "out" / "rank1.safetensors"))
    linears = {
        n.removesuffix(".weight"): w.dtype
        for n, w in rank.items()
        if n.endswith(".weight")
        and "layernorm" not in n
        and n not in ("transformer.vocab_embedding.weight", "transformer.ln_f.weight")
    }
    assert any(d == torch.float8_e4m3fn for d in linears.values())
    assert any(m.startswith("medusa_heads.") and d != torch.float8_e4m3fn for m, d in linears.items())
    for module, dt in linears.items():
        assert any(fnmatchcase(module, p) for p in exclude) == (dt != torch.float8_e4m3fn), (module, exclude)
    if heads == "fasterdecoding-bf16":
        assert "*medusa_heads*" in exclude
