"""Checkpoint conversion: Hugging Face Llama 3.x + Medusa heads (FasterDecoding or ModelOpt) -> TRT-LLM."""

from medusa_trt.checkpoint.convert import ConvertResult, convert_checkpoint

__all__ = ["ConvertResult", "convert_checkpoint"]
