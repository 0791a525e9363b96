"""The tool versions an engine manifest records (the manifest itself is ``records.ENGINE``; an engine's
``check_tools`` may add the version it found)."""

from __future__ import annotations

import platform


def tool_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "medusa-trt": version("medusa-trt"),
        "python": platform.python_version(),
        "tensorrt_llm": version("tensorrt_llm"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "safetensors": version("safetensors"),
    }
