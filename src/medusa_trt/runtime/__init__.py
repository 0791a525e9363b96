"""Reference PyTorch runtime over TRT-LLM rank shards (import-light: torch loads in load_engine)."""

from medusa_trt.runtime.api import Generation, ReferenceEngine, load_engine
from medusa_trt.runtime.types import (
    Acceptance,
    Chunk,
    GenerationStats,
    SamplingError,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "Acceptance",
    "Chunk",
    "Generation",
    "GenerationStats",
    "ReferenceEngine",
    "SamplingError",
    "SamplingParams",
    "TokenLogprob",
    "load_engine",
]
