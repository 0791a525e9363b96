"""What the server uses of an engine (``ServedEngine``): a ``runtime.api.ReferenceEngine`` in the server's
process (the app on its own, its tests) or ``serve.engine_process.EngineProcess`` (`medusa-trt run`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from medusa_trt.runtime.types import Chunk, GenerationStats, SamplingParams


class Generation(Protocol):
    """A generation's chunks; ``stats`` once exhausted; ``close()`` ends it early and frees the engine."""

    stats: GenerationStats | None

    def __iter__(self) -> Iterator[Chunk]: ...

    def __next__(self) -> Chunk: ...

    def close(self) -> None: ...


class ServedEngine(Protocol):
    """The engine's side of the server: one generation at a time, liveness for the watchdog."""

    tokenizer: Any
    model_name: str | None
    max_seq_len: int
    has_medusa: bool
    num_medusa_heads: int
    tree: list[list[int]]
    tp: int

    def generate(self, prompt_ids: list[int], params: SamplingParams, medusa: bool = True) -> Generation: ...

    def tree_choices(self) -> dict[str, int]: ...

    def ping(self) -> None: ...

    def rank_failures(self) -> list[str]: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...
