"""Reference PyTorch runtime over TRT-LLM rank shards (import-light: torch loads in load_engine)."""

from medusa_trt.runtime.api import (
    Chunk,
    Generation,
    GenerationStats,
    ReferenceEngine,
    SamplingParams,
    load_engine,
)

__all__ = ["Chunk", "Generation", "GenerationStats", "ReferenceEngine", "SamplingParams", "load_engine"]
