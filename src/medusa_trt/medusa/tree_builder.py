"""Optimal sparse Medusa trees from per-head accuracies (Medusa paper, arXiv 2401.10774 §2.3.3).

The authors' ``explore_graph`` (``medusa/eval/gen_results.py``) does the same greedy growth.

``acc[k][r]`` is how often head k's rank-r token (alone, not cumulative top-r) is the base model's
token k+1 steps later. Assuming independence, node ``[r0, r1, ...]`` is accepted with probability
``acc[0][r0] * acc[1][r1] * ...`` and a tree's expected tokens per step is 1 (the base model's own
token) plus the sum over its nodes. Growing the tree greedily (always add the connected node with
the highest probability) maximises that sum for every node budget, and each tree is a prefix of
the next one, so one growth gives every size at once.

Pure: no files, no torch. Parsing helpers take text.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medusa_trt.errors import InvalidInputError, TreeError
from medusa_trt.medusa.trees import TOPK, Tree, dump_tree

AccuracyTable = list[list[float]]


def node_value(acc: Sequence[Sequence[float]], path: Sequence[int]) -> float:
    """Probability that this node is accepted: the product of its ranks' accuracies."""
    value = 1.0
    for head, rank in enumerate(path):
        value *= acc[head][rank]
    return value


def expected_tokens_per_step(acc: Sequence[Sequence[float]], tree: Tree) -> float:
    """1 (the base token) + the expected accepted draft tokens of ``tree``."""
    return 1.0 + sum(node_value(acc, p) for p in tree)


def validate_accuracy(acc: Sequence[Sequence[float]]) -> AccuracyTable:
    """Check shape and range; return a plain list-of-lists copy."""
    if not acc or not all(acc):
        raise InvalidInputError(
            "accuracy table is empty", hint="One row per head, one column per rank (see `medusa-trt tree accuracy`)."
        )
    width = len(acc[0])
    if any(len(row) != width for row in acc):
        raise InvalidInputError(
            "accuracy table rows have different lengths", hint="Every head needs the same number of rank columns."
        )
    flat = [float(v) for row in acc for v in row]
    if any(not math.isfinite(v) or v < 0.0 or v > 1.0 for v in flat):
        raise InvalidInputError(
            "accuracy values must be in [0, 1]", hint="Each cell is one rank's own hit rate, e.g. 0.56."
        )
    return [[float(v) for v in row] for row in acc]


def tree_growth(
    acc: Sequence[Sequence[float]], max_nodes: int, *, max_depth: int | None = None, max_topk: int | None = None
) -> Tree:
    """Grow the tree greedily to ``max_nodes`` nodes, in insertion order (``explore_graph``).

    Candidates are the next sibling and the first child of every node already in the tree,
    visited in insertion order; strict ``>`` keeps the first of equal candidates, so ties are
    broken deterministically. Fewer nodes come back when the limits allow no more.
    """
    table = validate_accuracy(acc)
    depth_limit = min(len(table), max_depth if max_depth is not None else len(table))
    topk = min(len(table[0]), TOPK, max_topk if max_topk is not None else TOPK)
    if depth_limit < 1 or topk < 1:
        raise InvalidInputError("--max-depth and --max-topk must be at least 1")
    if max_nodes < 1:
        raise InvalidInputError(f"node budget must be at least 1, got {max_nodes}")
    accepted: list[tuple[int, ...]] = [(0,)]
    members: set[tuple[int, ...]] = {(0,)}
    while len(accepted) < max_nodes:
        best: tuple[int, ...] | None = None
        best_value = -1.0
        for node in accepted:
            candidates = []
            if node[-1] < topk - 1:
                candidates.append((*node[:-1], node[-1] + 1))  # next sibling
            if len(node) < depth_limit:
                candidates.append((*node, 0))  # first child
            for cand in candidates:
                if cand in members:
                    continue
                value = node_value(table, cand)
                if value > best_value:  # strict: the first candidate wins ties
                    best, best_value = cand, value
        if best is None:
            break
        accepted.append(best)
        members.add(best)
    return [list(p) for p in accepted]


def build_tree(
    acc: Sequence[Sequence[float]], nodes: int, *, max_depth: int | None = None, max_topk: int | None = None
) -> Tree:
    """The optimal ``nodes``-node tree; TreeError when the limits allow fewer nodes."""
    tree = tree_growth(acc, nodes, max_depth=max_depth, max_topk=max_topk)
    if len(tree) < nodes:
        raise TreeError(
            f"only {len(tree)} nodes fit the depth/top-k limits, {nodes} were asked for",
            hint="Lower --nodes, or raise --max-depth / --max-topk (or add heads/rank columns).",
        )
    return tree


@dataclass(frozen=True)
class TreeChoice:
    """The hardware-aware pick: the node count maximising tokens/step per step time."""

    nodes: int
    tree: Tree
    expected_tokens_per_step: float
    step_ms: float
    tokens_per_ms: float
    curve: list[dict[str, float]]  # every size considered: nodes, expected_tokens_per_step, step_ms, tokens_per_ms


def interpolate_step_ms(step_times: Mapping[int, float], nodes: int) -> float:
    """Piecewise-linear step time at ``nodes`` inside the measured range (no extrapolation)."""
    keys = sorted(step_times)
    if nodes in step_times:
        return float(step_times[nodes])
    if not keys or nodes < keys[0] or nodes > keys[-1]:
        raise InvalidInputError(f"no step time for {nodes} nodes (measured {keys[0]}..{keys[-1]})")
    hi = next(k for k in keys if k > nodes)
    lo = max(k for k in keys if k < nodes)
    frac = (nodes - lo) / (hi - lo)
    return float(step_times[lo]) + frac * (float(step_times[hi]) - float(step_times[lo]))


def choose_tree(
    acc: Sequence[Sequence[float]],
    step_times: Mapping[int, float],
    *,
    max_nodes: int | None = None,
    max_depth: int | None = None,
    max_topk: int | None = None,
) -> TreeChoice:
    """Pick the node count n (1..max_nodes, inside the step-time curve) maximising E[tokens](n) / step(n).

    TensorRT-LLM verifies max_draft_len + 1 tokens every step, so the step time depends on the tree
    size; a bigger tree only pays when its extra expected tokens outgrow its extra step time.
    Ties keep the smaller tree.
    """
    if not step_times or any(k < 0 or not (v > 0) for k, v in step_times.items()):
        raise InvalidInputError(
            "step times must map node counts (>= 0) to positive milliseconds",
            hint='CSV "nodes,step_ms" lines or JSON {"1": 10.2, "8": 11.0}.',
        )
    hi = max(step_times)
    if max_nodes is not None:
        hi = min(hi, max_nodes)
    lo = max(1, min(step_times))
    if hi < lo:
        raise InvalidInputError(
            f"the step-time curve covers no tree size in 1..{hi}",
            hint="Measure more sizes (`medusa-trt tree sweep`) or raise --nodes.",
        )
    growth = tree_growth(acc, hi, max_depth=max_depth, max_topk=max_topk)
    curve: list[dict[str, float]] = []
    best: TreeChoice | None = None
    running = 1.0
    for n in range(1, len(growth) + 1):
        running += node_value(acc, growth[n - 1])  # growth is nested: size n is the first n nodes
        if n < lo:
            continue
        ms = interpolate_step_ms(step_times, n)
        rate = running / ms
        curve.append({"nodes": n, "expected_tokens_per_step": running, "step_ms": ms, "tokens_per_ms": rate})
        if best is None or rate > best.tokens_per_ms:
            best = TreeChoice(n, growth[:n], running, ms, rate, curve)
    if best is None:
        raise InvalidInputError("no tree size could be evaluated", hint="Check the step-time file and limits.")
    return TreeChoice(best.nodes, best.tree, best.expected_tokens_per_step, best.step_ms, best.tokens_per_ms, curve)


# --- text formats ----------------------------------------------------------------------------


ACCURACY_MARK = "# medusa-trt accuracy: one row per head, one column per rank\n"  # lets us overwrite our own
STEP_TIMES_HEADER = "nodes,step_ms\n"
TREE_MARK = "# expected_tokens_per_step: "


def parse_accuracy_csv(text: str, source: str = "accuracy table") -> AccuracyTable:
    """One row per head (head 0 first), one column per rank (rank 0 first), no header; ``#`` lines are comments."""
    rows: AccuracyTable = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row if c.strip()]
        if not cells or cells[0].startswith("#"):
            continue
        try:
            rows.append([float(c) for c in cells])
        except ValueError as e:
            raise InvalidInputError(
                f"{source}:{lineno}: not a number ({e})",
                hint="The CSV has no header: one row per head, one column per rank.",
            ) from e
    return validate_accuracy(rows)


def format_accuracy_csv(acc: Sequence[Sequence[float]]) -> str:
    return ACCURACY_MARK + "".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in acc)


def parse_step_times(text: str, source: str = "step times") -> dict[int, float]:
    """JSON ``{"nodes": ms}`` (or ``{"step_ms": {...}}``, or a list of {nodes, step_ms}) or CSV ``nodes,ms``."""
    stripped = text.strip()
    try:
        if stripped.startswith(("{", "[")):
            data = json.loads(stripped)
            if isinstance(data, dict) and isinstance(data.get("step_ms"), dict):
                data = data["step_ms"]
            if isinstance(data, list):
                return {int(d["nodes"]): float(d["step_ms"]) for d in data}
            return {int(k): float(v) for k, v in data.items()}
        out: dict[int, float] = {}
        for row in csv.reader(io.StringIO(stripped)):
            cells = [c.strip() for c in row]
            if len(cells) < 2 or not cells[0] or cells[0].startswith("#"):
                continue
            if not cells[0].lstrip("-").isdigit():  # a header line such as "nodes,step_ms"
                continue
            out[int(cells[0])] = float(cells[1])
        return out
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise InvalidInputError(
            f"{source}: cannot read step times ({e.__class__.__name__}: {e})".splitlines()[0],
            hint='CSV "nodes,step_ms" lines or JSON {"1": 10.2, "8": 11.0}.',
        ) from e


def format_step_times_csv(step_times: Mapping[int, float]) -> str:
    return STEP_TIMES_HEADER + "".join(f"{n},{step_times[n]:.4f}\n" for n in sorted(step_times))


def tree_yaml(tree: Tree, expected: float) -> str:
    """The shipped-tree YAML (one path per line) with the expectation as a comment."""
    return f"{TREE_MARK}{expected:.4f}\n# nodes: {len(tree)}\n" + dump_tree(tree)
