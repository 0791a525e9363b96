"""Reference PyTorch runtime over TRT-LLM rank shards (import-light: torch loads in load_engine)."""

from medusa_trt.runtime.api import Generation, ReferenceEngine, load_engine
from medusa_trt.runtime.records import Chunk, GenerationStats, SamplingParams

__all__ = ["Chunk", "Generation", "GenerationStats", "ReferenceEngine", "SamplingParams", "load_engine"]
