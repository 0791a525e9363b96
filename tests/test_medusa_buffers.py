"""Tree buffers: the authors' worked example, and refusal of trees that cannot run."""

from __future__ import annotations

import pytest
import torch

from medusa_trt.errors import TreeError
from medusa_trt.medusa.buffers import build_buffers
from medusa_trt.medusa.trees import load_tree

EXAMPLE = [[0], [0, 0], [0, 1], [0, 2], [1], [1, 0], [1, 1], [1, 2]]


def test_worked_example_matches_authors_buffers() -> None:
    b = build_buffers(EXAMPLE, num_heads=2)
    assert b.tree_indices.tolist() == [0, 1, 2, 11, 12, 13, 11, 12, 13]
    assert b.position_ids.tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert b.retrieve_indices.tolist() == [[0, 2, 8], [0, 2, 7], [0, 2, 6], [0, 1, 5], [0, 1, 4], [0, 1, 3]]
    rows = [
        "100000000",
        "110000000",
        "101000000",
        "110100000",
        "110010000",
        "110001000",
        "101000100",
        "101000010",
        "101000001",
    ]
    want = torch.tensor([[c == "1" for c in r] for r in rows])
    assert torch.equal(b.attn_mask, want)
    assert b.path_valid.all() and b.depth == 2 and b.size == 9


def test_uneven_paths_are_padded_and_masked() -> None:
    b = build_buffers(load_tree("nvidia_low_latency_15"), num_heads=3)
    ri, valid = b.retrieve_indices, b.path_valid
    assert ri.shape[1] == 4 and torch.equal(valid, ri >= 0)
    assert (~valid).any()  # depth-1 leaves such as [4] are padded
    # Every real entry's parent is the previous entry, and the mask sees exactly the path.
    for row, ok in zip(ri.tolist(), valid.tolist(), strict=True):
        path = [n for n, v in zip(row, ok, strict=True) if v]
        for j, node in enumerate(path):
            assert set(torch.nonzero(b.attn_mask[node]).flatten().tolist()) == set(path[: j + 1])
            assert int(b.position_ids[node]) == j


@pytest.mark.parametrize(
    ("tree", "kw", "words"),
    [
        ([[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]], {"num_heads": 3}, "needs 4 Medusa heads"),
        ([[0], [10]], {"num_heads": 3}, "ranks must be in 0..9"),
        ([[0], [1], [2]], {"num_heads": 3, "max_draft_len": 2}, "exceed max_draft_len 2"),
        ([[0, 1]], {"num_heads": 3}, "not prefix-closed"),
    ],
)
def test_invalid_trees_are_refused(tree: list[list[int]], kw: dict[str, int], words: str) -> None:
    with pytest.raises(TreeError, match=words):
        build_buffers(tree, **kw)
