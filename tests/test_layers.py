"""The package's layers (docs/internals.md), checked on the source: every import counts, including
imports inside functions (lazy, to keep `medusa-trt --help` fast) and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medusa_trt"
PKG = "medusa_trt"
# Leaf modules any layer may use: they import nothing from the package themselves.
SHARED_LEAVES = {"medusa_trt.errors", "medusa_trt.yamlread"}
# The picture (docs/internals.md): part -> the parts it may import, besides itself, the shared leaves
# and the package root (__version__). A part is a subpackage or a top-level module of medusa_trt.
# A new dependency is a design decision: add it here and to docs/internals.md together.
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "logs": set(),
    "data": set(),
    "yamlread": set(),
    "medusa": set(),
    "fsio": set(),
    "integrity": {"fsio", "progress", "records"},
    "progress": set(),
    "spec_counters": set(),
    "engine_facts": set(),
    "records": {"fsio"},
    "outputs": {"fsio", "records"},
    "steps": {"outputs", "records", "fsio"},
    "config": {"engine_facts", "medusa", "fsio"},
    "plan": {"config", "engine_facts", "medusa", "fsio"},
    "checkpoint": {"config", "medusa", "fsio", "outputs", "progress", "records"},
    "runtime": {"medusa", "integrity", "records", "fsio"},
    "serve": {"runtime"},
    "supervise": set(),
    "engines": {
        "checkpoint",
        "config",
        "engine_facts",
        "plan",
        "runtime",
        "serve",
        "medusa",
        "fsio",
        "outputs",
        "integrity",
        "records",
        "steps",
        "spec_counters",
        "supervise",
    },
    "bench": {"config", "engine_facts", "plan", "fsio", "outputs", "records", "spec_counters", "supervise"},
    "train": {"checkpoint", "config", "medusa", "runtime", "fsio", "outputs", "integrity", "records", "steps"},
    "demo": {"bench", "config", "engines", "medusa", "plan", "train", "fsio", "outputs", "records", "steps"},
    "cli": {
        "bench",
        "checkpoint",
        "config",
        "demo",
        "engine_facts",
        "engines",
        "logs",
        "medusa",
        "plan",
        "runtime",
        "train",
        "fsio",
        "outputs",
        "integrity",
        "progress",
        "records",
        "steps",
    },
    "__main__": {"cli"},
}
# part -> parts it must never import, whatever the table above says
NEVER = {
    "runtime": {"cli", "serve", "engines", "bench", "train", "demo"},
    "serve": {"cli", "engines", "bench", "train", "demo"},
}


def _module_name(path: Path) -> str:
    parts = (PKG, *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _part(module: str) -> str:
    """``medusa_trt.runtime.api`` -> ``runtime``; ``medusa_trt.errors`` -> ``errors``."""
    return module.split(".")[1] if module != PKG else ""


def _known(name: str) -> str | None:
    """The package module that ``name`` (a module, or a name inside one) resolves to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """(imported package module, line) for every import anywhere in ``source``, relative ones resolved."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names]  # `from pkg import mod` imports pkg.mod
        else:
            continue
        for name in names:
            if name == PKG or name.startswith(PKG + "."):
                target = _known(name)
                if target is not None and target != module:
                    yield target, node.lineno


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports_in(p.read_text(), m, p.name == "__init__.py")} for m, p in MODULES.items()}


GRAPH = _graph()


def _violations(src_part: str, allowed: Callable[[str], bool]) -> list[str]:
    out = []
    for m, path in MODULES.items():
        if _part(m) != src_part:
            continue
        for target, line in imports_in(path.read_text(), m, path.name == "__init__.py"):
            if not allowed(target):
                out.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    return out


def test_the_checker_sees_lazy_relative_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from medusa_trt.engines.spec import BuildSpec\n"
        "def f():\n    from medusa_trt.cli import _common\n    import medusa_trt.serve.app\n"
        "from . import decode\nfrom ..medusa import trees\n"
    )
    found = sorted(t for t, _ in imports_in(source, "medusa_trt.runtime.api"))
    assert found == [
        "medusa_trt.cli._common",
        "medusa_trt.engines.spec",
        "medusa_trt.medusa.trees",
        "medusa_trt.runtime.decode",
        "medusa_trt.serve.app",
    ]


def test_shared_leaves_import_nothing_from_the_package() -> None:
    for leaf in SHARED_LEAVES:
        assert GRAPH[leaf] == set(), f"{leaf} imports {GRAPH[leaf]}"


def test_every_part_is_in_the_picture() -> None:
    assert {_part(m) for m in MODULES} - {""} == set(LAYERS)


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_each_part_imports_only_the_layers_below_it(part: str) -> None:
    allowed = LAYERS[part] | {part, ""}
    bad = _violations(part, lambda t: _part(t) in allowed or t in SHARED_LEAVES)
    assert bad == [], f"{part} may import {sorted(LAYERS[part])}; extend LAYERS (and docs/internals.md) if intended"


def test_the_picture_has_no_cycles() -> None:
    """Following the allowed imports never leads back: the parts form layers."""
    seen: set[str] = set()
    order = []
    while len(order) < len(LAYERS):
        ready = sorted(p for p in LAYERS if p not in seen and LAYERS[p] <= seen)
        assert ready, f"a cycle among {sorted(set(LAYERS) - seen)}"
        seen.update(ready)
        order += ready


def test_medusa_imports_no_other_part_of_the_package() -> None:
    assert _violations("medusa", lambda t: _part(t) == "medusa" or t in SHARED_LEAVES) == []


@pytest.mark.parametrize("part", sorted(NEVER))
def test_lower_layers_never_import_the_ones_above(part: str) -> None:
    assert _violations(part, lambda t: _part(t) not in NEVER[part]) == []


def test_engines_are_reached_through_the_registry() -> None:
    """Outside ``engines/``, nothing imports an engine's module (``engines.trtllm``, ``engines.vllm``, ...):
    build, run, bench and plan dispatch through ``engines.get``, so adding an engine touches one place."""
    from medusa_trt.engines import ENGINES

    def inside(target: str, module: str) -> bool:
        return target == module or target.startswith(module + ".")

    assert set(ENGINES.values()) <= set(MODULES), "every registered engine is a module of the package"
    found = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if _part(m) != "engines"
        for t in targets
        if any(inside(t, e) for e in ENGINES.values())
    ]
    assert found == []


def test_cli_is_imported_by_nothing_but_the_entry_points() -> None:
    entry = {"medusa_trt.__main__"}  # `python -m medusa_trt`; the console script names medusa_trt.cli:main
    users = sorted(m for m, targets in GRAPH.items() if _part(m) != "cli" and m not in entry)
    assert [m for m in users if any(_part(t) == "cli" for t in GRAPH[m])] == []


def test_no_module_imports_its_way_back_to_itself() -> None:
    """Nothing reaches back: the module import graph has no cycles (lazy imports included)."""
    cycles, state = [], dict.fromkeys(GRAPH, 0)  # 0 unseen, 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*path[path.index(t) :], t]))
            elif state.get(t) == 0:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(GRAPH):
        if state[m] == 0:
            visit(m, [m])
    assert cycles == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")  # __version__ is public


def test_no_private_name_is_used_across_parts() -> None:
    """``from medusa_trt.x.y import _name`` or ``y._name`` from another part is a reach-around."""
    found = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        modules_bound: dict[str, str] = {}  # local name -> package module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
                for a in node.names:
                    full = _known(f"{node.module}.{a.name}")
                    if full == f"{node.module}.{a.name}":
                        modules_bound[a.asname or a.name] = full
                    elif _private(a.name) and node.module != m:
                        found.append(f"{m}:{node.lineno} imports {node.module}.{a.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
                target = modules_bound.get(node.value.id)
                if target is not None and target != m:
                    found.append(f"{m}:{node.lineno} uses {target}.{node.attr}")
    assert found == []


def _literals(node: ast.AST | None) -> list[str]:
    """The string constants ``node`` is, or holds directly (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for e in node.elts for v in _literals(e)]
    return []


def engine_names_used(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, how) wherever ``source`` decides by an engine's name: compares against it, spells it in a
    ``Literal[...]``, matches it in a ``case``, keys a dict by it, or looks something up by it
    (``.get("vllm")``, ``table["vllm"]``). Mentions in text (messages, docstrings) are not decisions."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            hits = [v for side in (node.left, *node.comparators) for v in _literals(side)]
            how = "compares against"
        elif isinstance(node, ast.Subscript):
            target = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            hits, how = _literals(node.slice), "Literal of" if target == "Literal" else "looks up"
        elif isinstance(node, ast.MatchValue):
            hits, how = _literals(node.value), "matches"
        elif isinstance(node, ast.Dict):
            hits, how = [v for k in node.keys for v in _literals(k)], "keys a dict by"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "get":
            hits, how = [v for a in node.args for v in _literals(a)], "gets"
        else:
            continue
        found += [(node.lineno, f"{how} {v!r}") for v in hits if v in names]
    return sorted(found)


def test_the_checker_sees_each_way_of_naming_an_engine() -> None:
    source = (
        "engine: Literal['trtllm', 'reference']\n"
        "if p.engine == 'vllm': pass\n"
        "if name in ('vllm', 'x'): pass\n"
        "match e:\n    case 'reference': pass\n"
        "T = {'trtllm': 1}\n"
        "m.get('engine', 'reference')\n"
        "X['vllm']\n"
        "msg = f'engine vllm takes no flags'; loc = ('vllm',); ok = 'vllm' in facts.sections\n"
    )
    found = engine_names_used(source, {"trtllm", "reference", "vllm"})
    assert [line for line, _ in found] == [1, 1, 2, 3, 5, 6, 7, 8, 9]


def test_only_the_facts_table_and_the_engines_name_an_engine() -> None:
    """Adding an engine is its row in ``engine_facts`` and its package in ``engines/``: no other module
    decides anything by an engine's name (the layers below ``engines/`` read the row's facts instead)."""
    from medusa_trt import engine_facts
    from medusa_trt.engines import ENGINES

    own = {"medusa_trt.engine_facts", *ENGINES.values()}
    found = [
        f"{path.relative_to(SRC.parent)}:{line} {how}"
        for m, path in MODULES.items()
        if not any(m == o or m.startswith(o + ".") for o in own)
        for line, how in engine_names_used(path.read_text(), set(engine_facts.FACTS))
    ]
    assert found == []
