"""Adaptive speculation: the subtree choice (pure) and the runtime using it without changing the output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medusa_trt.medusa.adaptive import NodeAcceptance, StepTimes, candidates, choose
from medusa_trt.medusa.trees import load_tree, tree_problems
from medusa_trt.runtime import ReferenceEngine, SamplingParams, load_engine
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_medusa_heads

TREE = load_tree("nvidia_low_latency_15")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Many tiny forwards: one thread avoids waking a pool per matmul on a busy machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_counterfactual_acceptance_scores_every_node() -> None:
    acc = NodeAcceptance([[0], [1], [0, 0], [0, 1], [1, 0]])
    # head 0 ranked tokens 7, 8; head 1 ranked 5, 6. The tokens that followed were 8 then 5.
    acc.observe([[7, 8], [5, 6]], [8, 5])
    rate = dict(zip(map(tuple, acc.nodes), acc.rate, strict=True))
    assert rate == {(0,): 0.0, (1,): 1.0, (0, 0): 0.0, (0, 1): 0.0, (1, 0): 1.0}
    acc.observe([[7, 8], [5, 6]], [7, 6])
    rate = dict(zip(map(tuple, acc.nodes), acc.rate, strict=True))
    assert rate[(0,)] == rate[(1,)] == rate[(0, 1)] == rate[(1, 0)] == 0.5 and rate[(0, 0)] == 0.0
    assert acc.expected_tokens()[2] == pytest.approx(2.0)  # the best two nodes: 1 + 0.5 + 0.5


@pytest.mark.parametrize("seed", range(5))
def test_every_prefix_of_the_order_is_a_valid_subtree(seed: int) -> None:
    import random

    rng = random.Random(seed)
    acc = NodeAcceptance(load_tree("mc_sim_7b_63"))
    for _ in range(50):
        emitted = [rng.randrange(4) for _ in range(acc.depth)]
        acc.observe([[rng.randrange(4) for _ in range(10)] for _ in range(acc.depth)], emitted)
    for k in range(1, len(acc.nodes) + 1):
        assert tree_problems(acc.subtree(k)) == []


def test_step_times_interpolate_between_measured_sizes() -> None:
    t = StepTimes()
    assert t.estimate(4) is None
    t.observe(16, 2.0)
    assert t.estimate(1) is not None and t.estimate(1) < 2.0 < t.estimate(32)  # type: ignore[operator]
    t.observe(1, 1.0)
    assert t.estimate(16) == 2.0 and t.estimate(1) == 1.0
    assert t.estimate(6) == pytest.approx(1.0 + 5 / 15)
    assert t.estimate(31) == pytest.approx(3.0)  # the last segment's slope


def _acc_with(rate: float, tree: list[list[int]]) -> NodeAcceptance:
    acc = NodeAcceptance(tree)
    acc.rate = [rate ** len(p) / (1 + p[-1]) for p in acc.nodes]
    return acc


def test_choice_drops_useless_drafts_and_keeps_good_ones() -> None:
    times = StepTimes()
    for tokens in (1, 16):
        times.observe(tokens, 1.0 + 0.05 * (tokens - 1))  # a verification of 16 tokens costs 1.75 plain steps
    assert choose(_acc_with(0.0, TREE), times) == 0
    assert choose(_acc_with(0.95, TREE), times) > 4
    assert candidates(15) == [0, 1, 2, 3, 4, 6, 8, 12, 15]
    assert choose(_acc_with(0.0, TREE), StepTimes()) == 15  # nothing measured: the configured tree


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Iterator[dict]:
    from safetensors.torch import load_file

    base = tmp_path_factory.mktemp("adaptive")
    lm_head = load_file(str(tiny_llama / "model.safetensors"))["lm_head.weight"]
    trained = make_medusa_heads(base / "th", hidden_size=64, vocab_size=320, num_heads=3, scale=0.0, lm_head=lm_head)
    out = {
        "random": load_engine(make_checkpoint(tiny_llama, base / "ck-r", heads=tiny_heads)),
        "trained": load_engine(make_checkpoint(tiny_llama, base / "ck-t", heads=trained)),
        "fixed": load_engine(make_checkpoint(tiny_llama, base / "ck-f", heads=trained), tree="nvidia_low_latency_15"),
    }
    yield out
    for e in out.values():
        e.close()


def run(engine: ReferenceEngine, prompt: list[int], medusa: bool = True, **kw: object) -> tuple[list[int], object]:
    gen = engine.generate(prompt, SamplingParams(**kw), medusa=medusa)
    return [t for c in gen for t in c.token_ids], gen.stats


@pytest.mark.parametrize("heads", ["random", "trained"])
def test_adaptive_output_is_unchanged(engines: dict, heads: str) -> None:
    """Greedy bit-identical and seeded sampling identical to plain decoding while the subtree changes."""
    engine = engines[heads]
    assert engine.adapt and engine.tree == TREE  # no tuned tree: the small default, adapted
    used: set[int] = set()
    for i in range(4):
        prompt = [(i * 41 + j * 13) % 300 + 3 for j in range(5)]
        plain, _ = run(engine, prompt, False, max_tokens=48)
        fast, stats = run(engine, prompt, max_tokens=48)
        assert fast == plain
        kw: dict = {"max_tokens": 32, "temperature": 0.9, "top_k": 40, "seed": i}
        assert run(engine, prompt, **kw)[0] == run(engine, prompt, False, **kw)[0]
        used |= set(stats.tree_nodes_used)  # type: ignore[attr-defined]
        assert sum(stats.tree_nodes_used.values()) == stats.num_steps  # type: ignore[attr-defined]
    assert len(used) > 1  # the subtree did change during these generations
    if heads == "random":  # heads that accept nothing end up drafting nothing
        assert engine.tree_nodes <= 1 and 0 in used


def test_explicit_tree_or_no_adapt_verifies_the_whole_tree(engines: dict) -> None:
    engine = engines["fixed"]
    assert not engine.adapt
    for i in range(3):
        _, stats = run(engine, [i + 5, 9, 11], max_tokens=40)
        assert set(stats.tree_nodes_used) == {len(TREE)}  # type: ignore[attr-defined]


def test_exploration_skips_subtrees_that_accept_nothing() -> None:
    times = StepTimes()
    for tokens in (1, 16):
        times.observe(tokens, 1.0 + 0.05 * (tokens - 1))
    assert choose(_acc_with(0.0, TREE), times, explore=True) == 0  # nothing to gain: stay on plain steps
    best = choose(_acc_with(0.9, TREE), times)
    assert choose(_acc_with(0.9, TREE), times, explore=True) not in (best,)  # the runner-up gets measured


def test_a_big_tree_timed_in_a_quiet_moment_never_looks_cheaper_than_a_plain_step() -> None:
    times = StepTimes()
    times.observe(1, 5.0)  # plain steps timed under load
    times.observe(16, 1.0)  # the whole tree timed when the machine was idle
    assert choose(_acc_with(0.0, TREE), times) == 0


def test_exploration_skips_a_runner_up_predicted_far_slower() -> None:
    # heads whose first draft is accepted one step in five, on a model where a 2-token step costs 1.8x a
    # plain one (small models: the heads cost as much as the trunk): 1.2 / 1.8 tokens per unit time
    times = StepTimes()
    for tokens, seconds in ((1, 1.0), (2, 1.8), (16, 3.0)):
        times.observe(tokens, seconds)
    acc = _acc_with(0.2, TREE)
    assert choose(acc, times) == 0
    assert choose(acc, times, explore=True) == 0
