"""Engine backends: build plans and steps, the manifest, and launching servers.

Kept import-light: submodules import torch/transformers only inside the functions that need them.
"""
