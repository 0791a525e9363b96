"""Tiny Llama 3-architecture models and Medusa heads for the tests (``medusa_trt.demo.synthetic``, which
the benchmarks use too)."""

from medusa_trt.demo.synthetic import (
    DEFAULT_CORPUS,
    RopeStyle,
    make_medusa_heads,
    make_tiny_llama,
    make_tokenizer,
    save_hf_model,
    to_rope_parameters,
)

__all__ = [
    "DEFAULT_CORPUS",
    "RopeStyle",
    "make_medusa_heads",
    "make_tiny_llama",
    "make_tokenizer",
    "save_hf_model",
    "to_rope_parameters",
]
