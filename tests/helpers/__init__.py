"""Test helpers: tiny real models and checkpoints, a loopback OpenAI-style server, stand-in TensorRT-LLM tools.

None of this ships in the package; the tests and ``benchmarks/`` import it from here.
"""

# How long a test waits for something that must happen before it calls it a hang. Tests assert what
# happens and in which order, never how fast (benchmarks/ measure that): this only has to be longer
# than anything a loaded machine takes, so that a broken build fails instead of hanging the suite.
HANG_S = 300.0
