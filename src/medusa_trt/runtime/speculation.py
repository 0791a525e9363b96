"""The engine's speculation state: the configured tree, and (adaptive) which nested subtree to use now.

Shared by the engine's generations (one at a time), so what one request learnt about acceptance and
step times serves the next. The choice never changes the output: greedy and exact sampling emit the
same tokens whatever the tree; it only changes how many tokens each verification forward yields.
"""

from __future__ import annotations

from medusa_trt.medusa.adaptive import NodeAcceptance, StepTimes, choose
from medusa_trt.medusa.buffers import TreeBuffers, build_buffers

EVERY = 8  # steps between two choices
EXPLORE = 16  # every EXPLORE-th choice takes the runner-up, so its step time stays measured
PROBE = 32  # with no drafts, run the first head every PROBE-th step (to notice when drafts pay again);
# a probe costs about a trunk lm_head on a small model, so probing every 8th step alone cost ~5%
CACHE = 32  # subtree buffers kept


REGIMES = 16  # sampling regimes whose acceptance statistics are kept


class Speculation:
    """Acceptance is learnt per sampling regime (greedy, or acceptance rule + temperature + top-k/p:
    drafts that greedy accepts, sampling at temperature 1 may not); step times are shared."""

    def __init__(self, full: TreeBuffers, *, adapt: bool = True) -> None:
        self.full, self.adapt = full, adapt
        self.device = str(full.attn_mask.device)
        self.times = StepTimes()
        self.steps = 0
        self._choices = 0
        self._cache: dict[tuple[tuple[int, ...], ...], TreeBuffers] = {_key(full.tree): full}
        self._regimes: dict[str, tuple[NodeAcceptance, list[int]]] = {}
        self._current: TreeBuffers | None = full
        self.select("greedy")

    def select(self, regime: str) -> None:
        """Use (and learn) the statistics of ``regime`` from now on: the generation about to run."""
        if regime not in self._regimes:
            if len(self._regimes) >= REGIMES:
                self._regimes.pop(next(iter(self._regimes)))
            self._regimes[regime] = (NodeAcceptance(self.full.tree), [len(self.full.tree)])
        self.acc, self._nodes = self._regimes[regime]
        self._current = self._subtree()

    @property
    def nodes(self) -> int:
        """Draft nodes in use for the selected regime (the configured tree until it has been measured)."""
        return self._nodes[0]

    @property
    def depth(self) -> int:
        return self.full.depth

    def buffers(self) -> TreeBuffers | None:
        """The tree for the next step; None means a plain step (no drafts). Chosen with the subtree size,
        so a step only looks it up."""
        return self._current

    def _subtree(self) -> TreeBuffers | None:
        """The best ``nodes``-node subtree by the acceptance measured so far, its buffers built once (cached)."""
        if self.nodes == len(self.full.tree):
            return self.full
        if self.nodes == 0:
            return None
        tree = self.acc.subtree(self.nodes)
        key = _key(tree)
        buf = self._cache.get(key)
        if buf is None:
            if len(self._cache) >= CACHE:
                self._cache.pop(next(k for k in self._cache if k != _key(self.full.tree)))
            buf = self._cache[key] = build_buffers(tree, device=self.device)
        return buf

    def wants_heads(self, plain_steps: int) -> bool:
        """After a plain step: whether to run the heads (needed for drafts, else only to keep learning)."""
        return self.nodes > 0 or not self.adapt or plain_steps % PROBE == 0

    def step_done(self, tree_tokens: int, seconds: float) -> None:
        """Record one step's wall time; every EVERY steps, choose the subtree again."""
        if not self.adapt:
            return
        self.times.observe(tree_tokens, seconds)
        self.steps += 1
        if self.steps % EVERY == 0:
            self._choices += 1
            self._nodes[0] = choose(self.acc, self.times, explore=self._choices % EXPLORE == 0)
            self._current = self._subtree()


def _key(tree: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted(tuple(p) for p in tree))
