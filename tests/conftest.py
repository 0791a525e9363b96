"""Shared fixtures: tiny real Hugging Face Llama directories and Medusa heads, made locally."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _gpu_count() == 0:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def own_cache_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What medusa-trt remembers (verified copies) goes to a temporary cache, not the user's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama 3 (GQA 4/2 heads, llama3 RoPE, hub spelling) with a tokenizer."""
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_heads(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """Random FasterDecoding-format heads (3 heads, 1 layer, with bias) for ``tiny_llama``."""
    from tests.helpers.models import make_medusa_heads

    return make_medusa_heads(tmp_path_factory.mktemp("tiny-heads"), hidden_size=64, vocab_size=320, num_heads=3)


@pytest.fixture(scope="session")
def tiny_heads4(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """Four heads for ``tiny_llama``: as many as the shipped HGX profiles declare (medusa.num_heads: 4)."""
    from tests.helpers.models import make_medusa_heads

    return make_medusa_heads(tmp_path_factory.mktemp("tiny-heads4"), hidden_size=64, vocab_size=320, num_heads=4)
