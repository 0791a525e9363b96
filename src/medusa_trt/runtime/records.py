"""The runtime's records: what a caller asks for (SamplingParams) and gets back (Chunk, GenerationStats,
Continuation).

Plain data, shared by the public API (``runtime.api``) and the decoding loops (``runtime.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's eos ids
    ignore_eos: bool = False  # the eos ids do not stop (stop_token_ids still do), as vLLM's and TRT-LLM's
    min_tokens: int = 0  # no stop token ends the generation before this many completion tokens
    acceptance: str = "exact"  # Medusa at temperature > 0: "exact" (lossless) or "typical" (lossy)
    posterior_threshold: float = 0.09  # typical acceptance only
    posterior_alpha: float = 0.3


@dataclass
class Chunk:
    token_ids: list[int]  # tokens emitted by one decoding step (>= 1 with Medusa)
    finish_reason: str | None = None  # None, or "stop" / "length" on the last chunk
    stop_token: int | None = None  # with finish_reason "stop": the stop id that ended it (counted, not emitted)


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
