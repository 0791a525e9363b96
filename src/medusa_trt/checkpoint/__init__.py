"""Checkpoint conversion: Hugging Face Llama 3.x + Medusa heads (FasterDecoding or ModelOpt) -> TRT-LLM."""

from medusa_trt.checkpoint.convert import MANIFEST, ConvertResult, convert_checkpoint, read_manifest

__all__ = ["MANIFEST", "ConvertResult", "convert_checkpoint", "read_manifest"]
