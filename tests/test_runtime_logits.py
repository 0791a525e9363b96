"""The reference runtime's logits equal transformers' LlamaForCausalLM on the converted checkpoint.

Real rank processes for tp 2 and 4 (gloo); GQA with KV-head replication (2 KV heads at tp 4),
llama3 RoPE past the original context (positions up to 200, original context 64), tied embeddings.
Both a long prefill and step-by-step decode through the KV cache are compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medusa_trt.runtime import ReferenceEngine, load_engine
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_tiny_llama

SEQ, PREFILL = 200, 150  # tiny_llama's llama3 original context is 256 // 4 = 64


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tied"), seed=3, tie_word_embeddings=True)


def hf_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids[None]).logits[0]  # [S, V]


@pytest.fixture(
    scope="module",
    params=[("tiny", 1), ("tied", 1), ("tiny", 2), ("tied", 4)],
    ids=["tp1", "tp1-tied", "tp2", "tp4-tied-kv-replicated"],
)
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tied_llama: Path
) -> Iterator[tuple[Path, ReferenceEngine]]:
    name, tp = request.param
    model = tiny_llama if name == "tiny" else tied_llama
    ckpt = make_checkpoint(model, tmp_path_factory.mktemp(f"ckpt-{name}-{tp}") / "ckpt", tp=tp)
    engine = load_engine(ckpt)
    assert engine.tp == tp
    yield model, engine
    engine.close()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_prefill_and_cached_decode_match_transformers(case: tuple[Path, ReferenceEngine]) -> None:
    model_dir, engine = case
    ids = torch.randint(0, 320, (SEQ,), generator=torch.Generator().manual_seed(7))
    want = hf_logits(model_dir, ids)
    engine.reset_cache(SEQ)
    got = [engine.forward(ids[:PREFILL], torch.arange(PREFILL))]
    for i in range(PREFILL, SEQ):  # one token at a time through the KV cache
        got.append(engine.forward(ids[i : i + 1], torch.tensor([i])))
    logits = torch.cat(got)
    assert logits.shape == want.shape
    assert rel_err(logits[:PREFILL], want[:PREFILL]) < 1e-4
    assert rel_err(logits[PREFILL:], want[PREFILL:]) < 1e-4


def test_generate_prefill_logprobs_match_transformers(case: tuple[Path, ReferenceEngine]) -> None:
    """``generate``'s prefill computes only the last row past the top layer's keys and values: the first
    token's log-probabilities still match transformers' last row, on every rank count."""
    from medusa_trt.runtime import SamplingParams

    model_dir, engine = case
    ids = torch.randint(0, 320, (PREFILL,), generator=torch.Generator().manual_seed(11))
    want = torch.log_softmax(hf_logits(model_dir, ids)[-1].double(), -1)  # [V]
    gen = engine.generate(ids.tolist(), SamplingParams(max_tokens=1, ignore_eos=True, logprobs=5), medusa=False)
    (got,) = next(gen).logprobs or []
    gen.close()
    assert got.token_id == int(want.argmax())
    assert [t for t, _ in got.top] == want.topk(5).indices.tolist()
    assert max(abs(lp - float(want[t])) for t, lp in got.top) < 1e-4


def test_rope_scaling_matters_past_original_context(tiny_llama: Path) -> None:
    """A guard on the test itself: without llama3 scaling the long-context logits would differ."""
    from medusa_trt.runtime.model import llama3_inv_freq

    scaled = llama3_inv_freq(
        16,
        500000.0,
        {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    assert not torch.allclose(scaled, llama3_inv_freq(16, 500000.0, None))
