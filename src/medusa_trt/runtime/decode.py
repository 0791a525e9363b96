"""Decoding loops on rank 0: plain (one token per forward) and Medusa tree decoding (docs/sources.md, Medusa algorithm).

Both keep one *pending* token: sampled from the last logits, already emitted, not yet in the KV cache.
A plain step feeds it; a Medusa step feeds the tree rooted at it, accepts L drafts, and emits them plus
the bonus token picked from the last accepted node's logits (L+1 tokens per verification forward).
Stop tokens end the generation and are not emitted (they are counted in completion_tokens).

With Medusa at temperature > 0 (typical acceptance, Medusa paper arXiv 2401.10774 §2.3.1), the root of every tree (the
first token and each step's bonus token) is the base model's argmax, as in the paper (§2.3.1: "greedy
decoding for the first token") and the authors' default ``fast`` path; temperature only sets how far
typical acceptance reaches. Plain decoding samples every token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

# torch at module level is fine here: runtime modules load only inside commands that compute.
import torch

from medusa_trt.medusa.acceptance import greedy_accept, typical_accept
from medusa_trt.medusa.buffers import TreeBuffers
from medusa_trt.medusa.trees import TOPK
from medusa_trt.runtime.records import Chunk, GenerationStats, SamplingParams

if TYPE_CHECKING:
    from medusa_trt.runtime.tp import Runner


def tokens_per_step(completion_tokens: int, steps: int) -> float:
    """Acceptance length: tokens from decoding steps per step. Prefill makes the first token,
    so plain decoding is exactly 1.0 and a Medusa step counts its accepted drafts + 1."""
    return (completion_tokens - 1) / steps if steps else 1.0


class Sampler:
    """Greedy at temperature 0; else temperature, top-k, top-p and a seeded generator."""

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

    def pick(self, logits: torch.Tensor) -> int:
        """One token from logits [V]."""
        if self.greedy:
            return int(logits.argmax())
        x = logits.float() / self.p.temperature
        if self.p.top_k > 0:
            kth = torch.topk(x, min(self.p.top_k, x.shape[-1])).values[-1]
            x = x.masked_fill(x < kth, -float("inf"))
        if self.p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            cum = torch.softmax(sorted_x, -1).cumsum(-1)
            drop = cum - torch.softmax(sorted_x, -1) > self.p.top_p  # keep the smallest set reaching top_p
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -float("inf"))
        return int(torch.multinomial(torch.softmax(x, -1), 1, generator=self.gen))


class Decoder:
    """One generation. Iterate ``run()`` for chunks; ``stats`` is set when it finishes."""

    def __init__(
        self,
        runner: Runner,
        prompt: list[int],
        params: SamplingParams,
        stop_ids: set[int],
        max_seq_len: int,
        buffers: TreeBuffers | None,
    ) -> None:
        self.r, self.prompt, self.p, self.stop = runner, prompt, params, stop_ids
        self.buf = buffers
        self.sampler = Sampler(params, runner.device)
        self.budget = min(params.max_tokens, max_seq_len - len(prompt))
        self.steps = 0
        self.completion = 0
        depth = buffers.depth if buffers is not None else 0
        self.accepted = [0] * depth
        self.stats: GenerationStats | None = None

    def _pick_root(self, logits: torch.Tensor) -> int:
        """The pending token: a tree root is always greedy under Medusa; plain decoding samples."""
        return int(logits.argmax()) if self.buf is not None else self.sampler.pick(logits)

    def _take(self, tokens: list[int]) -> tuple[list[int], str | None]:
        """Cut ``tokens`` at the first stop token and at the max_tokens budget."""
        out: list[int] = []
        for tok in tokens:
            if self.completion >= self.budget:
                return out, "length"
            self.completion += 1
            if tok in self.stop:
                return out, "stop"
            out.append(tok)
        return out, ("length" if self.completion >= self.budget else None)

    def run(self) -> Iterator[Chunk]:
        dev = self.r.device
        t0 = time.perf_counter()
        s = len(self.prompt)
        tree_size = self.buf.size if self.buf is not None else 1
        self.r.alloc(s + max(self.budget, 1) + tree_size)
        logits = self.r.forward(torch.tensor(self.prompt, dtype=torch.long, device=dev), torch.arange(s, device=dev))[
            -1
        ]  # [V]
        head_logits = self.r.heads(s - 1, self.buf.depth) if self.buf is not None else None
        pending = self._pick_root(logits)
        t1 = time.perf_counter()
        try:
            out, finish = self._take([pending])
            yield Chunk(out, finish)
            while finish is None:
                if self.buf is None or head_logits is None:
                    n = self.r.length
                    logits = self.r.forward(torch.tensor([pending], device=dev), torch.tensor([n], device=dev))[-1]
                    self.steps += 1
                    pending = self.sampler.pick(logits)
                    out, finish = self._take([pending])
                else:
                    new, head_logits = self._medusa_step(pending, head_logits, self.buf)
                    pending = new[-1]
                    out, finish = self._take(new)
                yield Chunk(out, finish)
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
                medusa=self.buf is not None,
            )

    def _medusa_step(self, root: int, head_logits: torch.Tensor, buf: TreeBuffers) -> tuple[list[int], torch.Tensor]:
        """One verification forward over the tree; returns (accepted drafts + bonus, next head logits)."""
        dev = self.r.device
        n = self.r.length
        top = torch.topk(head_logits[: buf.depth], TOPK, dim=-1).indices  # [D, TOPK] top-k by logit
        flat = torch.cat([torch.tensor([root], device=dev), top.reshape(-1)])  # [1 + TOPK*D]
        tree_tokens = flat[buf.tree_indices]  # [T]
        logits = self.r.forward(tree_tokens, buf.position_ids + n, buf.attn_mask)  # [T, V]
        self.steps += 1
        ri = buf.retrieve_indices.clamp(min=0)  # [P, D+1]; pads masked by path_valid
        cand = tree_tokens[ri]  # [P, D+1]
        if self.sampler.greedy:
            best, acc = greedy_accept(cand, logits.argmax(-1)[ri], buf.path_valid)
        else:
            best, acc = typical_accept(
                cand,
                logits[ri],
                buf.path_valid,
                temperature=self.p.temperature,
                posterior_threshold=self.p.posterior_threshold,
                posterior_alpha=self.p.posterior_alpha,
            )
        for d in range(acc):
            self.accepted[d] += 1
        nodes = buf.retrieve_indices[best, : acc + 1]  # [L+1] root and accepted nodes
        last = int(nodes[-1])
        bonus = self._pick_root(logits[last])
        drafts = tree_tokens[nodes[1:]].tolist()
        self.r.commit(n, nodes + n)  # keep root + accepted entries at n..n+L
        return [*drafts, bonus], self.r.heads(last, buf.depth)  # only the heads the tree uses
