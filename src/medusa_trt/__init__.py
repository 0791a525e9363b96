"""medusa-trt: Llama 3.x + Medusa speculative decoding on TensorRT-LLM, with a CPU reference runtime."""

__version__ = "0.1.0"
