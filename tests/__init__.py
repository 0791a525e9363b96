"""The test suite. A package, so that ``tests.helpers`` imports the same way under ``pytest`` and ``python -m pytest``."""
