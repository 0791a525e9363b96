"""The engine's speculation state: the configured tree, and (adaptive) which nested subtree to use now.

Shared by the engine's generations (one at a time), so what one request learnt about acceptance and
step times serves the next. The choice never changes the output: greedy and exact sampling emit the
same tokens whatever the tree; it only changes how many tokens each verification forward yields.

Statistics are kept per decoding regime (greedy; sampled, by acceptance rule and temperature band):
drafts that greedy accepts, sampling at temperature 1 often rejects, and a sampled verification costs
more. They age, so the choice follows the traffic of now: a request starts with its regime's history
counting as PRIOR observations of acceptance (each request's own text soon outweighs it), and a
request that starts with no drafts runs every head on its first plain steps (EARLY) to see whether
drafts would pay for this text, then every PROBE-th step. A burst of sampled requests, or hundreds of
requests whose drafts were never accepted, therefore no longer make later requests decode plain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medusa_trt.medusa.adaptive import NodeAcceptance, StepTimes, choose
from medusa_trt.medusa.buffers import TreeBuffers, build_buffers

EVERY = 8  # steps between two choices
EXPLORE = 16  # every EXPLORE-th choice takes the runner-up, so its step time stays measured
PROBE = 32  # with no drafts, run the heads every PROBE-th plain step (to notice when drafts pay again);
# a probe costs about a trunk lm_head on a small model, so probing every 8th step alone cost ~5%
EARLY = (0, 1, 3)  # ... and on these plain steps of every request: a new text may accept what the last did not
PRIOR = 4  # a request starts with its regime's acceptance history weighing this many observations
CACHE = 32  # subtree buffers kept
BANDS = (0.5, 1.0, 1.5)  # temperature bands of the sampled regimes (upper bounds; above the last: one more)


def regime_name(temperature: float, acceptance: str) -> str:
    """``greedy``, or the acceptance rule and the temperature band: ``exact T<=1``, ``typical T>1.5``."""
    if temperature <= 0:
        return "greedy"
    band = next((f"T<={b:g}" for b in BANDS if temperature <= b), f"T>{BANDS[-1]:g}")
    return f"{acceptance} {band}"


@dataclass
class Regime:
    """What one decoding regime learnt: acceptance per node, step time per tree size, the choice."""

    acc: NodeAcceptance
    nodes: int  # draft nodes in use (the configured tree until measured)
    times: StepTimes = field(default_factory=StepTimes)
    choices: int = 0


class Speculation:
    """The configured tree's buffers and one :class:`Regime` per decoding regime met so far."""

    def __init__(self, full: TreeBuffers, *, adapt: bool = True) -> None:
        self.full, self.adapt = full, adapt
        self.device = str(full.attn_mask.device)
        self.steps = 0
        self._cache: dict[tuple[tuple[int, ...], ...], TreeBuffers] = {_key(full.tree): full}
        self._regimes: dict[str, Regime] = {}
        self._current: TreeBuffers | None = full
        self.select("greedy")

    def select(self, regime: str) -> None:
        """Use (and learn) the statistics of ``regime`` from now on: the generation about to run."""
        if regime not in self._regimes:
            self._regimes[regime] = Regime(NodeAcceptance(self.full.tree), len(self.full.tree))
        self.name, self.state = regime, self._regimes[regime]
        self.state.acc.refresh(PRIOR)
        self._current = self._subtree()

    @property
    def acc(self) -> NodeAcceptance:
        return self.state.acc

    @property
    def times(self) -> StepTimes:
        return self.state.times

    @property
    def nodes(self) -> int:
        """Draft nodes in use for the selected regime (the configured tree until it has been measured)."""
        return self.state.nodes

    def choices(self) -> dict[str, int]:
        """The current choice (draft nodes) of every regime met so far."""
        regimes = dict(self._regimes)  # a copy first: the server reads this while a generation may add one
        return {name: r.nodes for name, r in sorted(regimes.items())}

    @property
    def depth(self) -> int:
        return self.full.depth

    def buffers(self) -> TreeBuffers | None:
        """The tree for the next step; None means a plain step (no drafts). Chosen with the subtree size
        (at most every EVERY steps), so a step only looks it up."""
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

    def probe_heads(self, plain_steps: int) -> int:
        """Before the ``plain_steps``-th plain step of a request: how many heads to run for statistics
        only (0: none). Every head, so that a regime whose drafts paid nothing can find they pay again."""
        if not self.adapt or self.nodes > 0:
            return 0
        return self.depth if plain_steps in EARLY or plain_steps % PROBE == 0 else 0

    def step_done(self, tree_tokens: int, seconds: float) -> None:
        """Record one step's wall time; every EVERY steps, choose the subtree again."""
        if not self.adapt:
            return
        self.state.times.observe(tree_tokens, seconds)
        self.steps += 1
        if self.steps % EVERY == 0:
            self.state.choices += 1
            self.state.nodes = choose(self.acc, self.times, explore=self.state.choices % EXPLORE == 0)
            self._current = self._subtree()


def _key(tree: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted(tuple(p) for p in tree))
