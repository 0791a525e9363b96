"""The engine directory's manifest (``manifest``) and the resumable build steps (``steps``).

The engines themselves, and how a build is planned and run, are in ``medusa_trt.engines``.
"""
