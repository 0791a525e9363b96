"""Adaptive speculation: pick the nested subtree of the configured tree with the best expected tokens/s.

Two online estimates, both pure Python:

- ``NodeAcceptance``: for every node of the configured tree, how often its path would have been
  accepted. This is counterfactual and needs no exploration: greedy and exact sampling emit the same
  tokens whatever the tree (that is what lossless means), so once the D tokens after a step's root are
  known, every node's path of drafts either matches them or not. Smoothed with an exponential average.
- ``StepTimes``: seconds per decoding step by tree tokens T (root included), measured, with
  piecewise-linear interpolation between measured sizes and a mild prior slope beyond them.

A child is accepted only if its parent is, so ordering nodes by match rate (ties: parent first) makes
every prefix of the order prefix-closed: the candidates are nested subtrees, down to none at all.
Expected tokens per step of a prefix of k nodes is 1 + the sum of its match rates.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from medusa_trt.medusa.trees import Tree, sort_tree

SIZES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # draft-node counts tried (the full tree too)
MIN_GAIN = 0.05  # expected accepted drafts per step below which a subtree is not worth exploring
EXPLORE_WITHIN = 0.8  # explore the runner-up only if its predicted tokens/s is at least this share of the best
PRIOR_SLOPE = 0.03  # step-time growth per extra tree token, relative, used only beyond measured sizes
WINDOW = 16  # step times kept per tree size (their lower quartile is the estimate)
STALE = 512  # steps after which a size's measured time is no longer trusted


class NodeAcceptance:
    """Per-node match rate of the configured tree (sorted node order), exponentially smoothed."""

    def __init__(self, tree: Tree, horizon: int = 64) -> None:
        self.nodes = sort_tree(tree)
        self.depth = max(len(p) for p in self.nodes)
        self.rate = [0.0] * len(self.nodes)
        self.seen = [0] * (self.depth + 1)  # observations per depth
        self.horizon = horizon  # the average spans about this many recent observations

    def observe(self, topk: Sequence[Sequence[int]], emitted: Sequence[int]) -> None:
        """topk[j]: head j's draft tokens by rank; emitted[j]: the token that followed at depth j+1.

        Only nodes down to ``len(topk)`` are scored: a step that ran fewer heads says nothing deeper.
        """
        hit = [row.index(tok) if tok in row else -1 for row, tok in zip(topk, emitted, strict=False)]
        for d in range(1, len(hit) + 1):
            self.seen[d] += 1
        for i, path in enumerate(self.nodes):
            if len(path) > len(hit):
                continue
            match = all(hit[j] == r for j, r in enumerate(path))
            w = 1.0 / min(self.seen[len(path)], self.horizon)  # a plain mean at first, then exponential
            self.rate[i] += w * (float(match) - self.rate[i])

    def refresh(self, weight: int) -> None:
        """Let the history count as at most ``weight`` observations: what the next request shows soon
        outweighs it (acceptance follows the text being written more than anything the server saw before)."""
        self.seen = [min(n, weight) for n in self.seen]

    def _low(self) -> list[float]:
        """The lowest rate on each node's path: a child is never worth more than its parent."""
        index = {tuple(p): i for i, p in enumerate(self.nodes)}
        return [min(self.rate[index[tuple(p[:c])]] for c in range(1, len(p) + 1)) for p in self.nodes]

    def order(self) -> list[int]:
        """Node indices, most often accepted first; a parent precedes its children."""
        low = self._low()
        return sorted(range(len(self.nodes)), key=lambda i: (-low[i], len(self.nodes[i]), self.nodes[i]))

    def subtree(self, k: int) -> Tree:
        return sort_tree([self.nodes[i] for i in self.order()[:k]])

    def expected_tokens(self) -> list[float]:
        """Expected tokens per step with the first k nodes of ``order()``, for k = 0..N."""
        low = self._low()
        out = [1.0]
        for i in self.order():
            out.append(out[-1] + low[i])
        return out


class StepTimes:
    """Seconds per step by tree tokens T (1 = a plain step): the lower quartile of the last WINDOW steps
    at each size, forgetting sizes not measured lately.

    A low quantile, not a mean: on a shared machine a step preempted by another process takes ten
    times longer, and those (or the first step at a size, which pays one-off costs) must not make a
    tree look dear; the quickest steps are the cost of the tree itself, comparable between sizes timed
    at different moments. A size not measured in the last STALE steps is left out of the estimates
    (interpolated, or from the prior slope), so a tree timed slow long ago, under other load, gets
    tried again instead of never.
    """

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.count = 0  # steps observed so far, every size
        self._obs: dict[int, deque[float]] = {}
        self._when: dict[int, int] = {}  # size -> count at its last observation

    def observe(self, tokens: int, seconds: float) -> None:
        self.count += 1
        if tokens not in self._obs or self.count - self._when[tokens] > STALE:
            self._obs[tokens] = deque(maxlen=self.window)
        self._obs[tokens].append(seconds)
        self._when[tokens] = self.count

    @property
    def t(self) -> dict[int, float]:
        """The current estimate of every size measured lately (all sizes when none is)."""
        fresh = {k: v for k, v in self._obs.items() if self.count - self._when[k] <= STALE} or self._obs
        return {k: sorted(v)[len(v) // 4] for k, v in sorted(fresh.items())}

    def estimate(self, tokens: int) -> float | None:
        known = self.t
        if tokens in known:
            return known[tokens]
        pts = sorted(known.items())
        if not pts:
            return None
        if len(pts) == 1:
            t0, s0 = pts[0]
            return s0 * (1 + PRIOR_SLOPE * (tokens - 1)) / (1 + PRIOR_SLOPE * (t0 - 1))
        lo = max((p for p in pts if p[0] < tokens), default=None)
        hi = min((p for p in pts if p[0] > tokens), default=None)
        if lo is None:  # below every measured size: extend the first segment, never below a fifth
            (t0, s0), (t1, s1) = pts[0], pts[1]
            slope = max(0.0, (s1 - s0) / (t1 - t0))
            return max(s0 - slope * (t0 - tokens), s0 / 5)
        if hi is None:  # above: the last segment's slope, at least the prior's
            (t0, s0), (t1, s1) = pts[-2], pts[-1]
            slope = max((s1 - s0) / (t1 - t0), PRIOR_SLOPE * s1 / (1 + PRIOR_SLOPE * (t1 - 1)))
            return s1 + slope * (tokens - t1)
        (t0, s0), (t1, s1) = lo, hi
        return s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)


def candidates(n_nodes: int) -> list[int]:
    return sorted({k for k in SIZES if k < n_nodes} | {n_nodes})


def choose(acc: NodeAcceptance, times: StepTimes, *, explore: bool = False) -> int:
    """Draft nodes k (0..N) with the best expected tokens per second; ``explore`` takes the runner-up
    (if its drafts are accepted at all)."""
    expected = acc.expected_tokens()
    scored = []
    floor = 0.0
    for k in candidates(len(acc.nodes)):
        t = times.estimate(k + 1)
        if t is None:  # nothing measured yet: keep the configured tree
            return len(acc.nodes)
        # verifying more tokens never costs less: a big tree timed in a quiet moment must not look
        # cheaper than a plain step timed under load
        floor = max(floor, t)
        scored.append((expected[k] / floor, -k))  # ties go to the smaller tree
    scored.sort(reverse=True)
    # Exploring only refreshes the runner-up's step time (acceptance needs no exploration): not worth a
    # window of slower steps when its drafts are hardly ever accepted.
    # Nor when it is predicted far slower: each exploration window costs its full step time, and on a
    # small model (heads as dear as the trunk) that alone held heads that accept little below plain decoding.
    if (
        explore
        and len(scored) > 1
        and expected[-scored[1][1]] >= 1 + MIN_GAIN
        and scored[1][0] >= EXPLORE_WITHIN * scored[0][0]
    ):
        return -scored[1][1]
    return -scored[0][1]
