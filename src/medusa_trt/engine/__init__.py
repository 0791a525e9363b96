"""The tool versions an engine manifest records (``manifest``) and the resumable build steps (``steps``).

The engines themselves, and how a build is planned and run, are in ``medusa_trt.engines``.
"""
