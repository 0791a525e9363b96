"""Test helpers: tiny real models and checkpoints, a loopback OpenAI-style server, stand-in TensorRT-LLM tools.

None of this ships in the package; the tests and ``benchmarks/`` import it from here.
"""
