"""Lossless Medusa: greedy tree decoding emits exactly the plain greedy tokens.

Heads used: ``random`` (the conftest's random FasterDecoding heads) and ``trained-like`` (the paper's
initialisation: zero ResBlock weights and every head's lm_head = the base lm_head, so a head predicts
the base's own next token and long runs are accepted whenever the continuation repeats). Trees are
random valid trees (hypothesis), in-process at tp 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medusa_trt.medusa.trees import TOPK
from medusa_trt.runtime import ReferenceEngine, SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_medusa_heads

Tokens = list[int]


def trained_like_heads(model_dir: Path, out: Path) -> Path:
    from safetensors.torch import load_file

    lm_head = load_file(str(model_dir / "model.safetensors"))["lm_head.weight"]
    return make_medusa_heads(out, hidden_size=64, vocab_size=320, num_heads=3, scale=0.0, lm_head=lm_head)


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_llama: Path,
    tiny_heads: Path,
) -> Iterator[dict[str, ReferenceEngine]]:
    base = tmp_path_factory.mktemp("lossless")
    trained = trained_like_heads(tiny_llama, base / "trained-heads")
    tree = "nvidia_low_latency_15"  # the hypothesis test swaps in random trees
    out = {
        "random": load_engine(make_checkpoint(tiny_llama, base / "ck-random", heads=tiny_heads), tree=tree),
        "trained": load_engine(make_checkpoint(tiny_llama, base / "ck-trained", heads=trained), tree=tree),
    }
    yield out
    for e in out.values():
        e.close()


def generate(engine: ReferenceEngine, prompt: Tokens, medusa: bool, **kw: object) -> tuple[Tokens, list, object]:
    gen = engine.generate(prompt, SamplingParams(**kw), medusa=medusa)
    chunks = list(gen)
    return [t for c in chunks for t in c.token_ids], chunks, gen.stats


@st.composite
def trees(draw: st.DrawFn, max_depth: int = 3) -> list[list[int]]:
    """A random prefix-closed tree (ranks < 10, depth <= heads, <= 63 nodes)."""
    paths = draw(st.lists(st.lists(st.integers(0, TOPK - 1), min_size=1, max_size=max_depth), min_size=1, max_size=20))
    closed = {tuple(p[:c]) for p in paths for c in range(1, len(p) + 1)}
    return [list(p) for p in sorted(closed)][:63] if len(closed) <= 63 else [[0]]


prompts = st.lists(st.integers(3, 319), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), prompt=prompts, max_tokens=st.integers(1, 32), heads=st.sampled_from(["random", "trained"]))
def test_greedy_medusa_equals_plain_greedy(
    engines: dict[str, ReferenceEngine], tree: list[list[int]], prompt: Tokens, max_tokens: int, heads: str
) -> None:
    engine = engines[heads]
    saved = engine.set_tree(tree)  # one engine for all examples
    try:
        plain, _, _ = generate(engine, prompt, False, max_tokens=max_tokens)
        fast, chunks, stats = generate(engine, prompt, True, max_tokens=max_tokens)
    finally:
        engine.set_tree(saved)
    assert fast == plain
    assert len(fast) <= max_tokens and stats.completion_tokens <= max_tokens  # type: ignore[attr-defined]
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].finish_reason in ("stop", "length")
    assert all(len(c.token_ids) <= len(tree) + 1 for c in chunks)


def test_trained_like_heads_accept_runs_and_stay_exact(engines: dict[str, ReferenceEngine]) -> None:
    engine = engines["trained"]
    total_steps = total_tokens = 0
    for seed in range(3):
        prompt = [(seed * 37 + i * 11) % 300 + 3 for i in range(6)]
        plain, _, _ = generate(engine, prompt, False, max_tokens=40)
        fast, _, stats = generate(engine, prompt, True, max_tokens=40)
        assert fast == plain
        total_steps += stats.num_steps  # type: ignore[attr-defined]
        total_tokens += stats.completion_tokens  # type: ignore[attr-defined]
        # every emitted token past the first is an accepted draft or a step's bonus (the last step may be cut)
        assert sum(stats.accepted_per_depth) >= stats.completion_tokens - 1 - stats.num_steps  # type: ignore[attr-defined]
    assert total_tokens / total_steps > 1.3  # the accepted-run path (KV compaction) really ran


@pytest.mark.parametrize("heads", ["random", "trained"])
def test_eos_inside_an_accepted_run(engines: dict[str, ReferenceEngine], heads: str) -> None:
    """Pick a stop token that first appears inside a multi-token Medusa step: both stop right there."""
    engine = engines[heads]
    for seed in range(20):
        prompt = [(seed * 53 + i * 7) % 300 + 3 for i in range(5)]
        plain, _, _ = generate(engine, prompt, False, max_tokens=32)
        _, chunks, _ = generate(engine, prompt, True, max_tokens=32)
        pos = 0
        for c in chunks:
            for j, tok in enumerate(c.token_ids):
                if j > 0 and plain.index(tok) == pos + j:
                    fast, fchunks, stats = generate(engine, prompt, True, max_tokens=32, stop_token_ids=(tok,))
                    slow, _, _ = generate(engine, prompt, False, max_tokens=32, stop_token_ids=(tok,))
                    assert fast == slow == plain[: pos + j]
                    assert fchunks[-1].finish_reason == "stop"
                    assert stats.completion_tokens == pos + j + 1  # type: ignore[attr-defined]
                    return
            pos += len(c.token_ids)
    pytest.fail("no multi-token step found to place a stop token in")


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13])
def test_max_tokens_boundary(engines: dict[str, ReferenceEngine], max_tokens: int) -> None:
    engine = engines["trained"]
    prompt = [40, 41, 42]
    plain, _, _ = generate(engine, prompt, False, max_tokens=max_tokens)
    fast, chunks, stats = generate(engine, prompt, True, max_tokens=max_tokens)
    assert fast == plain and len(fast) == max_tokens == stats.completion_tokens  # type: ignore[attr-defined]
    assert chunks[-1].finish_reason == "length"


def test_sampling_is_seeded_and_top_k_1_is_greedy(engines: dict[str, ReferenceEngine]) -> None:
    engine = engines["random"]
    prompt = [10, 20, 30]
    a, _, _ = generate(engine, prompt, True, max_tokens=24, temperature=0.9, top_p=0.9, seed=5)
    b, _, _ = generate(engine, prompt, True, max_tokens=24, temperature=0.9, top_p=0.9, seed=5)
    assert a == b and 0 < len(a) <= 24
    greedy, _, _ = generate(engine, prompt, False, max_tokens=24)
    top1, _, _ = generate(engine, prompt, False, max_tokens=24, temperature=1.3, top_k=1, seed=1)
    assert top1 == greedy
    draws = {tuple(generate(engine, prompt, False, max_tokens=8, temperature=2.0, seed=s)[0]) for s in range(4)}
    assert len(draws) > 1


def test_typical_acceptance_roots_are_greedy(engines: dict[str, ReferenceEngine]) -> None:
    """Medusa paper (arXiv 2401.10774) §2.3.1: the first token of every step is the base argmax; typical
    acceptance only adds drafts.

    With a threshold no probability can pass (p > 1), every step emits just its root, so the output
    must be the plain greedy output whatever the temperature and seed.
    """
    engine = engines["random"]
    prompt = [10, 20, 30]
    greedy, _, _ = generate(engine, prompt, False, max_tokens=16)
    for seed in range(3):
        out, _, stats = generate(
            engine,
            prompt,
            True,
            max_tokens=16,
            temperature=2.0,
            seed=seed,
            acceptance="typical",
            posterior_threshold=1.0,
            posterior_alpha=1e9,
        )
        assert out == greedy and sum(stats.accepted_per_depth) == 0  # type: ignore[attr-defined]


def test_close_early_frees_the_engine(engines: dict[str, ReferenceEngine]) -> None:
    engine = engines["random"]
    gen = engine.generate([5, 6, 7], SamplingParams(max_tokens=30))
    first = next(iter(gen))
    gen.close()
    assert gen.stats is not None and gen.stats.completion_tokens == len(first.token_ids)
    again, _, _ = generate(engine, [5, 6, 7], True, max_tokens=30)
    assert again[: len(first.token_ids)] == first.token_ids


def test_set_tree_validates_swaps_and_waits_for_the_generation(engines: dict[str, ReferenceEngine]) -> None:
    import torch

    from medusa_trt.errors import InvalidInputError, TreeError

    engine = engines["trained"]
    before = engine.tree
    with pytest.raises(TreeError):
        engine.set_tree([[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]])  # depth 4 > the checkpoint's 3 heads
    assert engine.tree == before  # a rejected tree changes nothing
    gen = engine.generate([3, 4, 5], SamplingParams(max_tokens=8))
    next(gen)
    for call in (lambda: engine.set_tree([[0]]), lambda: engine.forward(torch.tensor([3]), torch.tensor([0]))):
        with pytest.raises(InvalidInputError, match="while a generation runs"):
            call()
    gen.close()
    assert engine.set_tree([[0]]) == before and engine.tree == [[0]]
    try:
        prompt = [3 + i * 11 for i in range(6)]  # one of the prompts on which these heads accept runs
        fast, chunks, stats = generate(engine, prompt, True, max_tokens=40)
        assert fast == generate(engine, prompt, False, max_tokens=40)[0]
        assert max(len(c.token_ids) for c in chunks) == 2  # a depth-1 tree: one draft and the bonus token
        assert len(stats.accepted_per_depth) == 1  # type: ignore[attr-defined]
    finally:
        engine.set_tree(before)
    assert engine.tree == before
