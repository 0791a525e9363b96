"""Exact (lossless) sampling with Medusa tree drafts, checked statistically against the model itself.

The oracle is Hugging Face transformers: one batched forward over every 2-token continuation of the
prompt gives the exact joint law of the first 3 sampled tokens (temperature, top-k, top-p applied).
Thousands of seeded Medusa generations must fit it (chi-square goodness of fit); two samplers known to
be biased (typical acceptance, and plain sampling at a slightly wrong temperature) must fail the same
test. The model has a 16-token vocabulary and a sharpened lm_head, so the law is concentrated enough
for a few thousand draws, and a wide tree (10 children at depth 1 of a 16-token vocabulary), so most
steps accept drafts and the sequential rejection really decides the tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.runtime import ReferenceEngine, SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_medusa_heads, make_tiny_llama

V = 16
PROMPT = [1, 2, 3]
WIDE = [[r] for r in range(10)] + [[r, s] for r in range(4) for s in range(4)] + [[0, 0, r] for r in range(4)]
ALPHA = 1e-3  # goodness-of-fit rejection level (seeds are fixed, so every run is the same run)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Thousands of tiny forwards: one thread avoids waking a pool per matmul (20x faster on a busy machine)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import load_file, save_file

    base = tmp_path_factory.mktemp("exact")
    model = make_tiny_llama(
        base / "model",
        seed=3,
        tokenizer=False,
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=1,
        intermediate_size=128,
    )
    state = load_file(str(model / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"] * 12  # a random init is near-uniform: sharpen it
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def heads(model_dir: Path) -> Path:
    from safetensors.torch import load_file

    lm_head = load_file(str(model_dir / "model.safetensors"))["lm_head.weight"]
    return make_medusa_heads(
        model_dir.parent / "heads", hidden_size=64, vocab_size=V, num_heads=3, scale=0.0, lm_head=lm_head
    )


@pytest.fixture(scope="module")
def engine(model_dir: Path, heads: Path) -> Iterator[ReferenceEngine]:
    eng = load_engine(make_checkpoint(model_dir, model_dir.parent / "ck1", heads=heads), tree=WIDE)
    yield eng
    eng.close()


def warp(logits: Any, temperature: float, top_k: int, top_p: float) -> Any:
    """The oracle's target law [..., V]: written independently of the runtime's Sampler."""
    import torch

    p = torch.softmax(logits.double() / temperature, -1)
    if top_k:
        kth = p.topk(top_k, -1).values[..., -1:]
        p = torch.where(p >= kth, p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    if top_p < 1:
        sp, order = p.sort(-1, descending=True)
        before = sp.cumsum(-1) - sp  # mass strictly before each token
        keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, before <= top_p)
        p = torch.where(keep, p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    return p


@pytest.fixture(scope="module")
def hf_logits(model_dir: Path) -> Any:
    """transformers' logits [V*V, 3, V] after PROMPT, PROMPT a, PROMPT a b, for every pair (a, b)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    a, b = torch.meshgrid(torch.arange(V), torch.arange(V), indexing="ij")
    ids = torch.cat([torch.tensor(PROMPT).expand(V * V, -1), a.reshape(-1, 1), b.reshape(-1, 1)], 1)  # [V*V, s+2]
    with torch.no_grad():
        return model(ids).logits[:, len(PROMPT) - 1 :]  # [V*V, 3, V]


def joint_law(logits: Any, temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict[tuple[int, ...], float]:
    """P(first three tokens) under the warped law, from ``hf_logits``."""
    p = warp(logits, temperature, top_k, top_p)
    law: dict[tuple[int, ...], float] = {}
    for i in range(V * V):
        x, y = divmod(i, V)
        pxy = float(p[0, 0, x] * p[i, 1, y])
        for z in range(V):
            if pxy * float(p[i, 2, z]) > 0:
                law[(x, y, z)] = pxy * float(p[i, 2, z])
    return law


def chi_square_p(counts: Counter[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    """p-value of Pearson's goodness of fit. Cells expecting < 5 draws are pooled into one; a draw the
    law gives zero probability fails outright. Wilson-Hilferty's normal approximation of the tail."""
    n = sum(counts.values())
    if any(k not in law for k in counts):
        return 0.0
    big = {k for k, q in law.items() if q * n >= 5}
    cells = [(counts.get(k, 0), law[k] * n) for k in big]
    rest_obs = sum(c for k, c in counts.items() if k not in big)
    rest_exp = n - sum(e for _, e in cells)
    if rest_exp >= 5:
        cells.append((rest_obs, rest_exp))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def draws(engine: ReferenceEngine, n: int, medusa: bool, **kw: Any) -> tuple[Counter[tuple[int, ...]], int]:
    """First-three-token counts over seeds 0..n-1, and the drafts accepted meanwhile."""
    counts: Counter[tuple[int, ...]] = Counter()
    accepted = 0
    for seed in range(n):
        gen = engine.generate(PROMPT, SamplingParams(max_tokens=3, seed=seed, **kw), medusa=medusa)
        counts[tuple(t for c in gen for t in c.token_ids)] += 1
        assert gen.stats is not None
        accepted += sum(gen.stats.accepted_per_depth)
    return counts, accepted


def test_exact_medusa_samples_the_models_joint_law(engine: ReferenceEngine, hf_logits: Any) -> None:
    law = joint_law(hf_logits, 1.0)
    exact, accepted = draws(engine, 2000, True, temperature=1.0)
    assert accepted > 1000  # most of the 2000 generations accepted drafts: rejection sampling was exercised
    assert chi_square_p(exact, law) > ALPHA
    # negative controls: the same test rejects two biased samplers
    typical, _ = draws(engine, 1000, True, temperature=1.0, acceptance="typical")
    assert chi_square_p(typical, law) < ALPHA
    hot, _ = draws(engine, 2000, False, temperature=1.15)  # plain sampling, 15 % too hot
    assert chi_square_p(hot, law) < ALPHA


def test_exact_medusa_with_top_k_and_top_p(engine: ReferenceEngine, hf_logits: Any) -> None:
    law = joint_law(hf_logits, 0.8, top_k=6, top_p=0.9)
    counts, accepted = draws(engine, 1000, True, temperature=0.8, top_k=6, top_p=0.9)
    assert accepted > 500
    assert chi_square_p(counts, law) > ALPHA


def test_same_seed_same_text_with_medusa_on_or_off(engine: ReferenceEngine) -> None:
    """One uniform per emitted position: the draft tree changes nothing but the number of forwards."""
    texts = set()
    for seed in range(6):
        kw: dict[str, Any] = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": seed}
        plain = [t for c in engine.generate([5, 6, 7], SamplingParams(**kw), medusa=False) for t in c.token_ids]
        gen = engine.generate([5, 6, 7], SamplingParams(**kw), medusa=True)
        fast = [t for c in gen for t in c.token_ids]
        assert fast == plain
        assert gen.stats is not None and gen.stats.num_steps < len(plain) - 1  # drafts were accepted
        texts.add(tuple(plain))
    assert len(texts) == 6  # different seeds, different texts


def test_unseeded_requests_differ(engine: ReferenceEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0)
    outs = {tuple(t for c in engine.generate([5, 6, 7], params) for t in c.token_ids) for _ in range(4)}
    assert len(outs) > 1


def test_unknown_acceptance_is_refused(engine: ReferenceEngine) -> None:
    from medusa_trt.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="acceptance"):
        engine.generate([5], SamplingParams(temperature=1.0, acceptance="fast"))


@pytest.fixture(scope="module")
def engine_tp2(model_dir: Path, heads: Path) -> Iterator[ReferenceEngine]:
    eng = load_engine(make_checkpoint(model_dir, model_dir.parent / "ck2", heads=heads, tp=2), tree=WIDE)
    yield eng
    eng.close()


def test_tp2_exact_sampling_matches_tp1_and_the_law(
    engine: ReferenceEngine, engine_tp2: ReferenceEngine, hf_logits: Any
) -> None:
    """Only rank 0 draws; the other rank receives tokens. Same seeds, same tokens as tp 1, and the law holds."""
    kw: dict[str, Any] = {"temperature": 0.8, "top_k": 6, "top_p": 0.9}
    for seed in range(3):
        p = SamplingParams(max_tokens=20, seed=seed, **kw)
        one = [t for c in engine.generate([4, 9], p) for t in c.token_ids]
        two = [t for c in engine_tp2.generate([4, 9], p) for t in c.token_ids]
        assert one == two
    counts, _ = draws(engine_tp2, 300, True, **kw)
    assert chi_square_p(counts, joint_law(hf_logits, 0.8, top_k=6, top_p=0.9)) > ALPHA
