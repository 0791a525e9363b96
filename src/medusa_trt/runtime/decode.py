"""Decoding loops on rank 0: plain (one token per forward) and Medusa tree decoding (docs/sources.md, Medusa algorithm).

Both keep one *pending* token: picked from the last logits, already emitted, not yet in the KV cache.
A plain step feeds it; a Medusa step feeds the tree rooted at it, accepts L drafts, and emits them plus
the bonus token picked from the last accepted node's logits (L+1 tokens per verification forward).
Stop tokens end the generation and are not emitted (they are counted in completion_tokens); the last
chunk names the one that ended it (``Chunk.stop_token``: Llama 3.1 has several).

Randomness: one uniform per emitted position, drawn in order from the request's own seeded generator,
turned into a token by inverse CDF over the warped distribution (token id order). Exact acceptance
(the default at temperature > 0) consumes the same draws in the same order as plain sampling, so a
seed gives the same text with Medusa on or off, whatever the tree. Typical acceptance (lossy) keeps the
paper's rule: every tree root is the base argmax (Medusa paper arXiv 2401.10774 §2.3.1), temperature only sets how far it reaches.

Rank 0 alone draws: the other tensor-parallel ranks receive the chosen tokens, so they cannot diverge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch

from medusa_trt.medusa.acceptance import exact_accept, typical_accept
from medusa_trt.medusa.buffers import TreeBuffers
from medusa_trt.medusa.trees import TOPK
from medusa_trt.runtime.types import Acceptance, Chunk, GenerationStats, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from medusa_trt.runtime.speculation import Speculation
    from medusa_trt.runtime.tp import Runner


def tokens_per_step(completion_tokens: int, steps: int) -> float:
    """Acceptance length: tokens from decoding steps per step. Prefill makes the first token,
    so plain decoding is exactly 1.0 and a Medusa step counts its accepted drafts + 1."""
    return (completion_tokens - 1) / steps if steps else 1.0


class Sampler:
    """Greedy at temperature 0; else temperature, top-k, top-p and one seeded uniform per token."""

    def __init__(self, params: SamplingParams, device: str) -> None:
        self.p = params
        self.gen = torch.Generator(device=device)
        if params.seed is not None:
            self.gen.manual_seed(params.seed)
        else:
            self.gen.seed()

    @property
    def greedy(self) -> bool:
        return self.p.temperature <= 0

    def _warped(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] as float64 after temperature, then top-k, then top-p (dropped tokens -inf)."""
        x = logits.double() / self.p.temperature
        if self.p.top_k > 0:
            kth = torch.topk(x, min(self.p.top_k, x.shape[-1]), dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, -float("inf"))
        if self.p.top_p < 1.0:
            sorted_x, order = torch.sort(x, dim=-1, descending=True)
            sp = torch.softmax(sorted_x, -1)
            drop = sp.cumsum(-1) - sp > self.p.top_p  # keep the smallest set reaching top_p
            x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -float("inf"))
        return x

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """The target distribution [V] (float64): temperature, then top-k, then top-p."""
        return torch.softmax(self._warped(logits), -1)

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [..., V] (float64) of the distribution tokens are drawn from: vLLM's
        ``processed_logprobs`` (after temperature, top-k and top-p; at temperature 0 the model's own)."""
        if self.greedy:
            return torch.log_softmax(logits.double(), -1)
        return torch.log_softmax(self._warped(logits), -1)

    def pick(self, logits: torch.Tensor) -> int:
        """One token from logits [V], consuming exactly one uniform when sampling."""
        if self.greedy:
            return int(logits.argmax())
        cdf = self.warp(logits).cumsum(-1)  # [V]
        u = torch.rand((), generator=self.gen, device=self.gen.device, dtype=torch.float64)
        # the first token whose cdf exceeds u * total: a zero-probability token can never be it
        tok = torch.searchsorted(cdf, (u * cdf[-1]).reshape(1).to(cdf.device), right=True)
        return min(int(tok), cdf.shape[-1] - 1)


def regime(p: SamplingParams) -> str:
    """What draft acceptance depends on besides the model and the text: greedy, or the rule and the
    temperature band (``runtime.speculation.regime_name``)."""
    from medusa_trt.runtime.speculation import regime_name

    return regime_name(p.temperature, p.acceptance)


class Decoder:
    """One generation. Iterate ``run()`` for chunks; ``stats`` is set when it finishes."""

    def __init__(
        self,
        runner: Runner,
        prompt: list[int],
        params: SamplingParams,
        stop_ids: set[int],
        max_seq_len: int,
        speculation: Speculation | None,
    ) -> None:
        self.r, self.prompt, self.p, self.stop = runner, prompt, params, stop_ids
        self.speculation = speculation
        self.sampler = Sampler(params, runner.device)
        self.typical = speculation is not None and not self.sampler.greedy and params.acceptance is Acceptance.TYPICAL
        self.budget = min(params.max_tokens, max_seq_len - len(prompt))
        self.steps = 0
        self.completion = 0
        self.accepted = [0] * (speculation.depth if speculation is not None else 0)
        self.usage: dict[int, int] = {}  # draft nodes of the tree used -> steps
        self.stop_token: int | None = None  # the stop id that ended the generation
        self.emitted: list[int] = []  # every token picked, in order (the pending one last)
        self.records: list[tuple[int, list[list[int]]]] = []  # (root index in emitted, drafts [D][TOPK])
        self.last_row = 0  # row of the last forward whose hidden state feeds the heads
        self.rows: torch.Tensor | None = None  # [k, V] the logits each token of the last step was picked from
        self._pending: torch.Tensor | None = None  # the pending token on the device [1], when greedy
        self._tokens: list[int] = []  # the last tree's node tokens
        self._slots = torch.arange(0)  # 0..capacity-1 on the device: position ids are views of it
        self.stats: GenerationStats | None = None
        if speculation is not None:
            speculation.select(regime(params))

    def _next(self, logits: torch.Tensor) -> int:
        """The token after a verified position: greedy or sampled; under typical acceptance the argmax."""
        return int(logits.argmax()) if self.typical else self.sampler.pick(logits)

    def _take(self, tokens: list[int]) -> tuple[list[int], str | None]:
        """Cut ``tokens`` at the first stop token and at the max_tokens budget."""
        out: list[int] = []
        for tok in tokens:
            if self.completion >= self.budget:
                return out, "length"
            self.completion += 1
            if tok in self.stop and self.completion > self.p.min_tokens:  # before min_tokens: a plain token
                self.stop_token = tok
                return out, "stop"
            out.append(tok)
        return out, ("length" if self.completion >= self.budget else None)

    def run(self) -> Iterator[Chunk]:
        dev = self.r.device
        t0 = time.perf_counter()
        s = len(self.prompt)
        tree_size = self.speculation.full.size if self.speculation is not None else 1
        self.r.alloc(s + max(self.budget, 1) + tree_size)
        self._slots = torch.arange(s + max(self.budget, 1) + tree_size, device=dev)  # positions, as views
        prompt = torch.tensor(self.prompt, dtype=torch.long, device=dev)
        # only the last row's logits, unless the prompt's log-probabilities are asked for
        last = self.p.prompt_logprobs is None
        every = self.r.forward(prompt, self._slots[:s], pos_bound=s, last=last)  # [S or 1, V]
        self.last_row = 0 if last else s - 1
        pending = self._first(every[-1:])
        self.emitted.append(pending)
        self.rows = every[-1:]
        t1 = time.perf_counter()
        try:
            out, finish = self._take([pending])
            yield self._chunk(out, finish, [pending], prompt_rows=every)
            while finish is None:
                new = self._step(pending)
                pending = new[-1]
                self.emitted += new
                self._learn()
                out, finish = self._take(new)
                yield self._chunk(out, finish, new)
        finally:
            t2 = time.perf_counter()
            self.stats = GenerationStats(
                prompt_tokens=s,
                completion_tokens=self.completion,
                num_steps=self.steps,
                tokens_per_step=tokens_per_step(self.completion, self.steps),
                accepted_per_depth=list(self.accepted),
                prefill_s=t1 - t0,
                decode_s=t2 - t1,
                medusa=self.speculation is not None,
                tree_nodes_used=dict(sorted(self.usage.items())),
            )

    def _chunk(
        self, out: list[int], finish: str | None, new: list[int], prompt_rows: torch.Tensor | None = None
    ) -> Chunk:
        """The chunk of ``out`` (the emitted prefix of ``new``), with log-probabilities if asked."""
        chunk = Chunk(out, finish, self.stop_token)
        if self.p.logprobs is not None and self.rows is not None:
            chunk.logprobs = self._logprobs(self.sampler.logprobs(self.rows[: len(out)]), out, self.p.logprobs)
        if prompt_rows is not None and self.p.prompt_logprobs is not None:
            # the prompt's tokens were not sampled: the model's own distribution, as vLLM's prompt_logprobs
            lp = torch.log_softmax(prompt_rows[:-1].double(), -1)  # [S-1, V]
            chunk.prompt_logprobs = [None, *self._logprobs(lp, self.prompt[1:], self.p.prompt_logprobs)]
        return chunk

    @staticmethod
    def _logprobs(lp: torch.Tensor, tokens: list[int], n: int) -> list[TokenLogprob]:
        """One TokenLogprob per row of ``lp`` [k, V] and token, with the row's ``n`` most likely tokens."""
        if not tokens:
            return []
        ids = torch.tensor(tokens, dtype=torch.long, device=lp.device)
        chosen = lp.gather(-1, ids[:, None])[:, 0].tolist()  # [k]
        top_v, top_i = lp.topk(n, dim=-1) if n else (lp[:, :0], lp[:, :0].long())  # [k, n]
        return [
            TokenLogprob(t, c, tuple(zip(i, v, strict=True)))
            for t, c, i, v in zip(tokens, chosen, top_i.tolist(), top_v.tolist(), strict=True)
        ]

    def _first(self, logits: torch.Tensor) -> int:
        """The token after a one-row forward (logits [1, V]). Greedy keeps it on the device too (``_pending``):
        the next step feeds it without a host-to-device copy."""
        if not self.sampler.greedy:
            self._pending = None
            return self._next(logits[0])
        self._pending = logits[0].argmax(-1, keepdim=True)  # [1]
        return int(self._pending)

    def _root(self, pending: int) -> torch.Tensor:
        """The pending token as a [1] device tensor."""
        if self._pending is not None:
            return self._pending
        return torch.tensor([pending], dtype=torch.long, device=self.r.device)

    def _step(self, pending: int) -> list[int]:
        """One decoding step (plain or tree, as the speculation state says); the tokens it emits."""
        speculation = self.speculation
        if speculation is None:
            return [self._plain(pending)]
        buf = speculation.buffers()
        t = time.perf_counter()  # after building a new subtree's buffers: that is not the step's cost
        if buf is None:
            if heads := speculation.probe_heads(self.usage.get(0, 0)):
                self._record(self._drafts(heads).tolist())  # statistics only: nothing is drafted this step
            new, tokens = [self._plain(pending)], 1
        else:
            new, tokens = self._tree(pending, buf), buf.size
        self.usage[tokens - 1] = self.usage.get(tokens - 1, 0) + 1
        speculation.step_done(tokens, time.perf_counter() - t)
        return new

    def _plain(self, pending: int) -> int:
        n = self.r.length
        logits = self.r.forward(self._root(pending), self._slots[n : n + 1], pos_bound=n + 1)  # [1, V]
        self.steps += 1
        self.last_row = 0
        self.rows = logits
        return self._first(logits)

    def _drafts(self, heads: int) -> torch.Tensor:
        """Top-k draft tokens of the first ``heads`` heads [heads, TOPK], for a step rooted at the pending token."""
        return torch.topk(self.r.heads(self.last_row, heads), TOPK, dim=-1).indices

    def _record(self, top: list[list[int]]) -> None:
        """Keep a step's drafts [D][TOPK] until the tokens they guessed are known (adaptive learning)."""
        if self.speculation is not None and self.speculation.adapt:
            self.records.append((len(self.emitted) - 1, top))

    def _learn(self) -> None:
        """Score every node of the configured tree on the steps whose next D tokens are now known."""
        if self.speculation is None or not self.speculation.adapt:
            return
        while self.records and self.records[0][0] + len(self.records[0][1]) < len(self.emitted):
            root, top = self.records.pop(0)
            self.speculation.acc.observe(top, self.emitted[root + 1 : root + 1 + len(top)])

    def _tree(self, root: int, buf: TreeBuffers) -> list[int]:
        """One verification forward over the tree; returns the accepted drafts + the next token."""
        n = self.r.length
        top = self._drafts(buf.depth)  # [D', TOPK]: only the heads this (sub)tree drafts from
        flat = torch.cat([self._root(root), top.view(-1)])  # [1 + TOPK*D']
        tree_tokens = flat[buf.tree_indices]  # [T]
        pos = buf.position_ids + n  # [T]
        logits = self.r.forward(tree_tokens, pos, buf.attn_mask, pos_bound=n + buf.depth + 1)  # [T, V]
        self.steps += 1
        path, bonus = self._accept(tree_tokens, top, logits, buf)
        for d in range(len(path) - 1):
            self.accepted[d] += 1
        last = path[-1]
        if self.p.logprobs is not None:  # each accepted draft and the bonus, from its parent's logits
            self.rows = logits.index_select(0, buf.node_paths[last])  # [L+1, V]
        # node ids grow along a path, so it is the tree's first len(path) slots exactly when it ends there
        self.r.commit(n, len(path), None if last == len(path) - 1 else buf.node_paths[last])
        self.last_row = last
        return [*(self._tokens[j] for j in path[1:]), bonus]

    def _accept(
        self, tree_tokens: torch.Tensor, top: torch.Tensor, logits: torch.Tensor, buf: TreeBuffers
    ) -> tuple[list[int], int]:
        """(accepted node ids from the root, the token after the last of them). Leaves the tree's tokens
        in ``_tokens`` and records the drafts; greedy needs one device-to-host copy for all of it."""
        t = buf.size
        self._pending = None
        if self.sampler.greedy:
            preds = logits.argmax(-1)  # [T]
            host = torch.cat([tree_tokens, preds, top.view(-1)]).tolist()  # [T + T + D'*TOPK]
            self._tokens = host[:t]
            self._record([host[2 * t + d * TOPK : 2 * t + (d + 1) * TOPK] for d in range(buf.depth)])
            # siblings are distinct top-k tokens, so at most one child matches: the walk finds the
            # longest accepted path, as comparing every root-to-leaf path would
            path, bonus = exact_accept(buf.children, self._tokens, host[t : 2 * t].__getitem__)
            self._pending = preds[path[-1] : path[-1] + 1]  # the bonus token, still on the device
            return path, bonus
        self._tokens = tree_tokens.tolist()
        self._record(top.tolist())
        if self.typical:
            ri = buf.retrieve_indices.clamp(min=0)  # [P, D+1]; pads masked by path_valid
            best, acc = typical_accept(
                tree_tokens[ri],
                logits[ri],
                buf.path_valid,
                temperature=self.p.temperature,
                posterior_threshold=self.p.posterior_threshold,
                posterior_alpha=self.p.posterior_alpha,
            )
            nodes = buf.retrieve_indices[best, : acc + 1].tolist()
            return nodes, self._next(logits[nodes[-1]])
        return exact_accept(buf.children, self._tokens, lambda j: self.sampler.pick(logits[j]))
