"""Tree buffers from ``medusa_choices`` (the authors' ``generate_medusa_buffers``; docs/sources.md, Medusa algorithm).

Built once per tree and reused every step: nothing about the tree is computed in the decoding loop. Node 0 is the root (the base model's token); nodes 1..N are
the sorted paths. Unlike the authors' code, retrieve-index pads are kept as -1 *and* a boolean
``path_valid`` mask is returned, so acceptance can ignore pads instead of comparing against token 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from medusa_trt.medusa.trees import TOPK, Tree, sort_tree, validate_tree

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TreeBuffers:
    tree: Tree  # sorted paths (node j = tree[j-1])
    attn_mask: torch.Tensor  # [T, T] bool: node sees root, its ancestors and itself
    tree_indices: torch.Tensor  # [T] long: slot in the flat candidate vector [1 + TOPK*D]
    position_ids: torch.Tensor  # [T] long: depth of each node (root 0)
    retrieve_indices: torch.Tensor  # [P, D+1] long: root-to-leaf node ids, pads -1
    path_valid: torch.Tensor  # [P, D+1] bool: False where retrieve_indices is a pad
    depth: int  # D
    children: tuple[tuple[int, ...], ...] = ()  # node id -> its children's node ids, in tree order
    node_paths: tuple[torch.Tensor, ...] = ()  # node id -> [depth+1] long: node ids from the root to it

    @property
    def size(self) -> int:
        """T: tree nodes including the root."""
        return int(self.tree_indices.shape[0])


def build_buffers(
    tree: Tree, *, num_heads: int | None = None, max_draft_len: int | None = None, device: str = "cpu"
) -> TreeBuffers:
    """Validate ``tree`` (raising TreeError before any compute) and build its buffers."""
    import torch

    validate_tree(tree, num_heads=num_heads, max_draft_len=max_draft_len)
    nodes = sort_tree(tree)
    index = {tuple(p): j + 1 for j, p in enumerate(nodes)}  # path -> node id (1-based)
    t = len(nodes) + 1
    depth = max(len(p) for p in nodes)

    mask = torch.eye(t, dtype=torch.bool)
    mask[:, 0] = True
    tree_indices = torch.zeros(t, dtype=torch.long)
    position_ids = torch.zeros(t, dtype=torch.long)
    kids: list[list[int]] = [[] for _ in range(t)]
    for j, p in enumerate(nodes, start=1):
        kids[index[tuple(p[:-1])] if len(p) > 1 else 0].append(j)  # sorted order: ranks ascending
        for c in range(1, len(p)):  # proper prefixes are ancestors
            mask[j, index[tuple(p[:c])]] = True
        tree_indices[j] = p[-1] + TOPK * (len(p) - 1) + 1
        position_ids[j] = len(p)

    # Leaf paths, walked from the last sorted node back, as the authors do (same row order).
    rows: list[list[int]] = []
    covered: set[tuple[int, ...]] = set()
    for p in reversed(nodes):
        key = tuple(p)
        if key in covered:
            continue
        rows.append([0] + [index[key[:c]] for c in range(1, len(key) + 1)])
        covered.update(key[:c] for c in range(1, len(key) + 1))
    parent = [0] * t
    for j, ks in enumerate(kids):
        for c in ks:
            parent[c] = j
    paths = [[0]]
    for j in range(1, t):  # a parent's id is below its children's (sorted order: shorter paths first)
        paths.append([*paths[parent[j]], j])
    retrieve = torch.full((len(rows), depth + 1), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        retrieve[r, : len(row)] = torch.tensor(row)
    return TreeBuffers(
        tree=nodes,
        attn_mask=mask.to(device),
        tree_indices=tree_indices.to(device),
        position_ids=position_ids.to(device),
        retrieve_indices=retrieve.to(device),
        path_valid=(retrieve >= 0).to(device),
        depth=depth,
        children=tuple(tuple(k) for k in kids),
        node_paths=tuple(torch.tensor(p, dtype=torch.long, device=device) for p in paths),
    )
