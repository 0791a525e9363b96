"""The runtime's data types: what a caller asks for (SamplingParams) and gets back (Chunk, GenerationStats,
Continuation).

Plain data, shared by the public API (``runtime.api``) and the decoding loops (``runtime.decode``).
SamplingParams checks itself when it is made: every boundary (the CLI's flags, the server's JSON, a
library caller) builds one and reports a ``SamplingError`` in its own spelling of ``field``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from medusa_trt.errors import InvalidInputError

MAX_LOGPROBS = 20  # top alternatives per token, at most (vLLM's default max_logprobs)


class Acceptance(str, Enum):
    """How Medusa drafts are accepted at temperature > 0."""

    EXACT = "exact"  # lossless: sequential rejection against the warped target distribution
    TYPICAL = "typical"  # lossy: the Medusa paper's typical acceptance (arXiv 2401.10774 §2.3.1)

    def __str__(self) -> str:
        return self.value


class SamplingError(InvalidInputError):
    """An invalid sampling parameter; ``field`` names it (as SamplingParams spells it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128  # 0 only with prompt_logprobs (the prompt's log-probabilities alone)
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's eos ids
    ignore_eos: bool = False  # the eos ids do not stop (stop_token_ids still do), as vLLM's and TRT-LLM's
    min_tokens: int = 0  # no stop token ends the generation before this many completion tokens
    acceptance: Acceptance = Acceptance.EXACT  # Medusa at temperature > 0 (a str is converted)
    posterior_threshold: float = 0.09  # typical acceptance only
    posterior_alpha: float = 0.3
    logprobs: int | None = None  # each emitted token's log-probability and this many top alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (the first has none)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "acceptance", Acceptance(self.acceptance))
        except ValueError:
            raise SamplingError(
                "acceptance", f"unknown acceptance '{self.acceptance}': use exact (lossless) or typical (lossy)"
            ) from None
        for name, ok, rule in self._rules():
            if not ok:
                raise SamplingError(name, f"{name} {getattr(self, name)!r}: {rule}")

    def _rules(self) -> list[tuple[str, bool, str]]:
        least = 0 if self.prompt_logprobs is not None else 1
        return [
            (
                "max_tokens",
                self.max_tokens >= least,
                "must be >= 1 (0 only with prompt_logprobs)" if least else "must be >= 0",
            ),
            (
                "temperature",
                math.isfinite(self.temperature) and self.temperature >= 0,
                "must be a finite number >= 0 (0: greedy)",
            ),
            ("top_p", math.isfinite(self.top_p) and 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0: off)"),
            ("min_tokens", 0 <= self.min_tokens <= self.max_tokens, "must be in [0, max_tokens]"),
            ("posterior_threshold", 0 < self.posterior_threshold <= 1, "must be in (0, 1]"),
            ("posterior_alpha", 0 < self.posterior_alpha < math.inf, "must be a finite number > 0"),
            (
                "logprobs",
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
            (
                "prompt_logprobs",
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                f"must be in [0, {MAX_LOGPROBS}]",
            ),
        ]


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the distribution it was drawn from, and the most likely tokens
    there (``top``: (id, log-probability), most likely first, as many as the request asked)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Chunk:
    token_ids: list[int]  # tokens emitted by one decoding step (>= 1 with Medusa)
    finish_reason: str | None = None  # None, or "stop" / "length" on the last chunk
    stop_token: int | None = None  # with finish_reason "stop": the stop id that ended it (counted, not emitted)
    logprobs: list[TokenLogprob] | None = None  # with SamplingParams.logprobs: one per token_ids entry
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first chunk, with prompt_logprobs: one per prompt token


@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    num_steps: int  # decoding steps (verification forwards), prefill excluded
    tokens_per_step: float  # (completion_tokens - 1) / num_steps: prefill makes the first token
    accepted_per_depth: list[int] = field(default_factory=list)  # accepted drafts at depth 1..D
    prefill_s: float = 0.0
    decode_s: float = 0.0
    medusa: bool = False
    tree_nodes_used: dict[int, int] = field(default_factory=dict)  # draft nodes of the tree -> steps


@dataclass
class Continuation:
    """One finished greedy continuation of a batch (``ReferenceEngine.greedy_batch``)."""

    token_ids: list[int]  # the stop token excluded, as in Chunk
    finish_reason: str  # "stop" or "length"
    stop_token: int | None = None  # with "stop": the stop id it ended on
