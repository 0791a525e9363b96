"""The optimal-tree builder on hand-computed accuracy tables, its invariants, and the hardware-aware choice."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_trt.errors import InvalidInputError, TreeError
from medusa_trt.medusa.tree_builder import (
    build_tree,
    choose_tree,
    expected_tokens_per_step,
    format_accuracy_csv,
    format_step_times_csv,
    interpolate_step_ms,
    node_value,
    parse_accuracy_csv,
    parse_step_times,
    tree_growth,
)
from medusa_trt.medusa.trees import tree_problems

# Two heads, three ranks. By hand (value = product of the ranks' accuracies):
#   (0)=.6  (0,0)=.3  (1)=.2  (0,1)=.18  (2)=.1 ties (1,0)=.1  (0,2)=.06 ...
TABLE = [[0.6, 0.2, 0.1], [0.5, 0.3, 0.1]]


def test_hand_computed_growth_and_expectation() -> None:
    tree = build_tree(TABLE, 5)
    assert tree == [[0], [0, 0], [1], [0, 1], [2]]
    assert expected_tokens_per_step(TABLE, tree) == pytest.approx(1 + 0.6 + 0.3 + 0.2 + 0.18 + 0.1)
    # one more node: the tie's loser (1,0)=0.1 comes next
    assert build_tree(TABLE, 6)[-1] == [1, 0]


def test_ties_break_to_the_first_candidate_in_insertion_order() -> None:
    # (1) and (0,0) are both 0.25; (0) is visited first and offers its sibling before its child.
    acc = [[0.5, 0.25], [0.5, 0.1]]
    assert build_tree(acc, 2) == [[0], [1]]
    assert build_tree(acc, 3) == [[0], [1], [0, 0]]
    # deterministic: the same table always gives the same tree
    assert all(build_tree(acc, 4) == build_tree(acc, 4) for _ in range(3))


def test_known_expectation_single_head_chain() -> None:
    acc = [[0.9], [0.8], [0.5]]  # one rank per head: the tree is the chain [0], [0,0], [0,0,0]
    tree = build_tree(acc, 3)
    assert tree == [[0], [0, 0], [0, 0, 0]]
    assert expected_tokens_per_step(acc, tree) == pytest.approx(1 + 0.9 + 0.72 + 0.36)


def test_limits_depth_topk_and_too_many_nodes() -> None:
    tree = build_tree(TABLE, 3, max_depth=1)
    assert tree == [[0], [1], [2]]
    assert max(p[-1] for p in build_tree(TABLE, 4, max_topk=2)) <= 1
    with pytest.raises(TreeError, match="only 3 nodes"):
        build_tree(TABLE, 4, max_depth=1)


@pytest.mark.parametrize("bad", [[], [[]], [[0.5, 0.2], [0.3]], [[1.2]], [[-0.1]], [[float("nan")]]])
def test_bad_tables_are_rejected(bad: list[list[float]]) -> None:
    with pytest.raises(InvalidInputError):
        build_tree(bad, 1)


def _all_nodes(acc: list[list[float]]) -> list[tuple[int, ...]]:
    k, r = len(acc), len(acc[0])
    return [p for d in range(1, k + 1) for p in itertools.product(range(r), repeat=d)]


tables = st.integers(1, 3).flatmap(
    lambda k: st.integers(1, 4).flatmap(
        lambda r: st.lists(
            st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=r, max_size=r), min_size=k, max_size=k
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(acc=tables, n=st.integers(1, 20))
def test_trees_are_valid_prefix_closed_and_rank_monotone(acc: list[list[float]], n: int) -> None:
    tree = tree_growth(acc, n)
    assert len(tree) == min(n, len(_all_nodes(acc)))
    assert tree_problems(tree, num_heads=len(acc)) == []  # prefix-closed, unique, ranks < 10, depth <= heads
    members = {tuple(p) for p in tree}
    for p in members:  # rank-monotone: a rank r > 0 implies its rank r-1 sibling
        if p[-1] > 0:
            assert (*p[:-1], p[-1] - 1) in members


@settings(max_examples=60, deadline=None)
@given(acc=tables, n=st.integers(1, 20))
def test_greedy_is_optimal_when_ranks_are_sorted(acc: list[list[float]], n: int) -> None:
    # With each head's accuracies non-increasing by rank, every node is worth no more than its parent and
    # its previous sibling, so the best n-node tree is worth exactly the n largest node values.
    acc = [sorted(row, reverse=True) for row in acc]
    tree = tree_growth(acc, n)
    best = sorted((node_value(acc, p) for p in _all_nodes(acc)), reverse=True)[: len(tree)]
    assert expected_tokens_per_step(acc, tree) == pytest.approx(1 + sum(best))


def test_growth_is_nested() -> None:
    big = tree_growth(TABLE, 9)
    for n in range(1, 10):
        assert tree_growth(TABLE, n) == big[:n]


# --- hardware-aware choice --------------------------------------------------------------------

ACC4 = [[0.6, 0.15, 0.08, 0.05], [0.45, 0.12, 0.06, 0.04], [0.35, 0.1, 0.05, 0.03]]


def test_flat_step_time_picks_the_largest_tree() -> None:
    choice = choose_tree(ACC4, {0: 10.0, 1: 10.0, 32: 10.0}, max_nodes=32)
    assert choice.nodes == 32
    assert choice.tree == tree_growth(ACC4, 32)


def test_steep_step_time_picks_a_small_tree() -> None:
    # each node costs as much as a whole base step: only node [0] (0.6 tokens for +100%) ... never pays;
    # the best rate is then the 1-node tree
    choice = choose_tree(ACC4, {n: 10.0 * (1 + n) for n in range(0, 33)}, max_nodes=32)
    assert choice.nodes == 1


def test_choice_maximises_tokens_per_ms_by_hand() -> None:
    # sizes 1, 2, 3: E = 1.6, 1.6+0.27=1.87, 1.87+0.15(rank 1)=2.02 ... with steps 10, 10.5, 14
    acc = [[0.6, 0.15], [0.45, 0.1]]
    curve = {1: 10.0, 2: 10.5, 3: 14.0}
    choice = choose_tree(acc, curve)
    rates = {c["nodes"]: c["tokens_per_ms"] for c in choice.curve}
    assert rates[1] == pytest.approx(1.6 / 10.0)
    assert rates[2] == pytest.approx(1.87 / 10.5)
    assert rates[3] == pytest.approx((1.87 + 0.15) / 14.0)
    assert choice.nodes == 2 and choice.tree == [[0], [0, 0]]
    assert choice.expected_tokens_per_step == pytest.approx(1.87)


def test_interpolation_between_measured_sizes() -> None:
    curve = {1: 10.0, 9: 18.0}
    assert interpolate_step_ms(curve, 5) == pytest.approx(14.0)
    choice = choose_tree(ACC4, curve, max_nodes=9)
    assert [c["nodes"] for c in choice.curve] == list(range(1, 10))
    with pytest.raises(InvalidInputError):
        interpolate_step_ms(curve, 10)


def test_bad_step_times() -> None:
    with pytest.raises(InvalidInputError):
        choose_tree(ACC4, {})
    with pytest.raises(InvalidInputError):
        choose_tree(ACC4, {1: -3.0})


# --- text formats -------------------------------------------------------------------------------


def test_accuracy_csv_round_trip_and_errors() -> None:
    text = format_accuracy_csv(TABLE)
    lines = text.splitlines()
    assert lines[0].startswith("# medusa-trt") and len(lines) == 1 + len(TABLE)  # the mark, then a row per head
    assert parse_accuracy_csv(text) == TABLE  # 6 decimals hold these values exactly
    with pytest.raises(InvalidInputError, match=":1: not a number"):
        parse_accuracy_csv("head,rank0\n0.5,0.1\n")


def test_step_times_formats() -> None:
    curve = {0: 9.0, 1: 10.0, 16: 12.5}
    assert parse_step_times(format_step_times_csv(curve)) == curve
    assert parse_step_times('{"1": 10, "16": 12.5}') == {1: 10.0, 16: 12.5}
    assert parse_step_times('{"step_ms": {"4": 11}}') == {4: 11.0}
    assert parse_step_times('[{"nodes": 2, "step_ms": 3.5}]') == {2: 3.5}
    with pytest.raises(InvalidInputError):
        parse_step_times('{"a": "b"}')
    assert math.isclose(parse_step_times("1,2.5\n# c\n")[1], 2.5)
