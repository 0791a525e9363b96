"""Medusa trees (``medusa_choices``): named trees, loading, validation, statistics.

A tree is a list of paths; ``path[j]`` is the top-k rank taken from head j. The root (the base
model's own token) is implicit. Rules follow TensorRT-LLM's ``initTensorsFromChoices`` and the
Medusa authors' buffer code: prefix-closed, unique, ranks below TOPK, depth <= heads,
nodes <= max_draft_len.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from medusa_trt import yamlread
from medusa_trt.errors import TreeError

SMALL_TREE = "nvidia_low_latency_15"  # 15 nodes, depth 3: the default where it fits
TOPK = 10  # candidates per head; the authors' buffers and TRT-LLM both index ranks 0..9

Tree = list[list[int]]
_EXAMPLE = "A tree file is a list of paths, e.g. [[0], [0, 0], [1]]."


def named_trees() -> list[str]:
    """Names of the trees shipped with the package."""
    files = resources.files("medusa_trt.data").joinpath("trees").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def _parse(text: str, source: str) -> Tree:
    try:
        data, _ = yamlread.load(text)  # YAML is a superset of JSON: one parser for both
    except yamlread.YamlRefused as e:
        yamlread.raise_as(e, source, TreeError, hint=_EXAMPLE)
    except yaml.YAMLError as e:
        raise TreeError(
            f"{source}: not valid YAML/JSON ({e.__class__.__name__})",
            hint="A tree file is a list of paths, e.g. [[0], [0, 0], [1]].",
        ) from e
    if isinstance(data, dict):  # accept the `tree build --json` document and trtllm-serve YAML
        data = data.get("choices", data.get("medusa_choices"))
    if not isinstance(data, list) or not all(
        isinstance(p, list) and p and all(isinstance(i, int) and not isinstance(i, bool) for i in p) for p in data
    ):
        raise TreeError(
            f"{source}: a tree must be a list of non-empty lists of integers",
            hint="Example: [[0], [0, 0], [1], [0, 1]]",
        )
    return [list(p) for p in data]


def load_tree(given: str | Path | Tree) -> Tree:
    """A named tree, a YAML/JSON file path, or a literal list of paths."""
    if isinstance(given, list):
        return [list(p) for p in given]
    name = str(given)
    if name in named_trees():
        text = resources.files("medusa_trt.data").joinpath("trees").joinpath(f"{name}.yaml").read_text()
        return _parse(text, name)
    path = Path(name)
    if path.exists():  # a FIFO or device too: refused by read_capped, never read
        try:
            text = yamlread.read_capped(path)
        except yamlread.YamlRefused as e:
            yamlread.raise_as(e, str(path), TreeError, hint=_EXAMPLE)
        except (OSError, UnicodeDecodeError) as e:
            raise TreeError(f"{path}: cannot read the tree file ({e.__class__.__name__})") from e
        return _parse(text, str(path))
    if name.lstrip().startswith("["):
        return _parse(name, "tree literal")
    raise TreeError(
        f"unknown tree '{name}': not a shipped tree and not a file",
        hint=f"Shipped trees: {', '.join(named_trees())}; or pass a YAML/JSON file.",
    )


@dataclass(frozen=True)
class TreeStats:
    nodes: int  # draft nodes, root excluded
    depth: int
    nodes_per_depth: list[int]
    topk_per_depth: list[int]  # max rank + 1 at each depth (what TRT-LLM derives)
    leaves: int


def tree_stats(tree: Tree) -> TreeStats:
    depth = max((len(p) for p in tree), default=0)
    per_depth = [sum(1 for p in tree if len(p) == d) for d in range(1, depth + 1)]
    topk = [max((p[-1] for p in tree if len(p) == d), default=-1) + 1 for d in range(1, depth + 1)]
    as_tuples = {tuple(p) for p in tree}
    leaves = sum(1 for p in as_tuples if not any(q[: len(p)] == p and len(q) > len(p) for q in as_tuples))
    return TreeStats(len(tree), depth, per_depth, topk, leaves)


def tree_problems(tree: Tree, *, num_heads: int | None = None, max_draft_len: int | None = None) -> list[str]:
    """Every reason this tree cannot run, as short sentences (empty when it is valid)."""
    problems: list[str] = []
    if not tree:
        return ["the tree is empty"]
    seen = {tuple(p) for p in tree}
    if len(seen) != len(tree):
        problems.append(f"{len(tree) - len(seen)} duplicate path(s)")
    bad_rank = sorted({i for p in tree for i in p if i < 0 or i >= TOPK})
    if bad_rank:
        problems.append(f"ranks must be in 0..{TOPK - 1}, found {bad_rank}")
    missing = sorted({p[:c] for p in seen for c in range(1, len(p)) if p[:c] not in seen})
    if missing:
        problems.append(
            f"not prefix-closed: missing {[list(m) for m in missing[:3]]}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        )
    stats = tree_stats(tree)
    if num_heads is not None and stats.depth > num_heads:
        problems.append(f"depth {stats.depth} needs {stats.depth} Medusa heads, the model has {num_heads}")
    if max_draft_len is not None and stats.nodes > max_draft_len:
        problems.append(f"{stats.nodes} nodes exceed max_draft_len {max_draft_len}")
    return problems


def fitting_tree(num_heads: int, max_draft_len: int | None = None) -> str | None:
    """A shipped tree that fits ``num_heads`` heads and ``max_draft_len``: the small low-latency one when it
    does (the default), else the largest that does; None when none does."""
    fits = [
        (len(t), n)
        for n in named_trees()
        if not tree_problems(t := load_tree(n), num_heads=num_heads, max_draft_len=max_draft_len)
    ]
    names = [n for _, n in fits]
    if SMALL_TREE in names:
        return SMALL_TREE
    return max(fits)[1] if fits else None


def tree_name(given: str | Path | Tree) -> str:
    """How an error names a tree: its name or file, or "the inline tree"."""
    return "the inline tree" if isinstance(given, list) else str(given)


def validate_tree(
    tree: Tree, *, num_heads: int | None = None, max_draft_len: int | None = None, name: str | None = None
) -> Tree:
    """Raise TreeError naming the tree and every problem; return the tree unchanged when valid. When the
    tree needs more heads than exist, the hint names a shipped tree that fits them."""
    problems = tree_problems(tree, num_heads=num_heads, max_draft_len=max_draft_len)
    if not problems:
        return tree
    what = f"Medusa tree {name}" if name else "Medusa tree"
    hint = "Use a shipped tree (medusa-trt tree build, or mc_sim_7b_63) or fix the paths."
    if num_heads is not None and tree_stats(tree).depth > num_heads:
        fit = fitting_tree(num_heads, max_draft_len)
        hint = (
            f"The heads decide: use a tree of depth <= {num_heads}"
            + (
                f", e.g. the shipped {fit} ({tree_stats(load_tree(fit)).depth} deep: --tree {fit} or medusa.tree: {fit})"
                if fit
                else ""
            )
            + ", or build one with `medusa-trt tree build`."
        )
    raise TreeError(f"invalid {what}: " + "; ".join(problems), hint=hint)


def sort_tree(tree: Tree) -> Tree:
    """The canonical node order: by depth, then lexicographically (the authors' and TRT-LLM's)."""
    return sorted((list(p) for p in tree), key=lambda p: (len(p), p))


def dump_tree(tree: Tree) -> str:
    """YAML, one path per line: the trtllm-bench ``--medusa_choices`` file format."""
    return "".join(f"- {json.dumps(p)}\n" for p in tree)


def chain(k: int) -> Tree:
    """The top-1 chain of ``k`` heads: [[0], [0, 0], ...] (what vLLM's Medusa drafts)."""
    return [[0] * d for d in range(1, k + 1)]


def top1_chain(heads: int, max_draft_len: int) -> Tree:
    """The chain an engine that drafts top-1 chains runs: one token per head, at most max_draft_len."""
    return chain(min(heads, max_draft_len))


def is_chain(tree: Tree) -> bool:
    """Whether ``tree`` is a top-1 chain (in any order)."""
    return sorted(tree, key=len) == chain(len(tree))
