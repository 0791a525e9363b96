"""Map validation errors back to YAML lines: compose the document and walk its nodes.

``yaml.compose`` keeps a start mark (line, column) on every node, so a pydantic error location
such as ``("hardware", "memory_gib")`` resolves to the line of that key in the user's file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from medusa_trt import yamlread
from medusa_trt.errors import ProfileError

Loc = tuple[str | int, ...]

# Parts pydantic inserts into a location for union members and validators; never profile keys.
_TAG_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


@dataclass(frozen=True)
class Issue:
    """One problem in a YAML document, located by its key path."""

    loc: Loc
    message: str
    hint: str | None = None
    on_key: bool = False  # point at the key itself (unknown keys) rather than its value


def parse_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The plain data and the composed node tree (parsed once, bounded: ``medusa_trt.yamlread``); a
    syntax error, an alias bomb or a duplicate key becomes a ProfileError with its line."""
    try:
        data, node = yamlread.load(text)
    except yamlread.YamlRefused as e:
        yamlread.raise_as(e, source, ProfileError, hint="A profile is a small YAML mapping; see the shipped ones.")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = e.problem or e.context or "invalid YAML"
        raise ProfileError(
            f"{source}{line}: YAML syntax error: {what}", hint="Check the indentation and quoting near that line."
        ) from e
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: YAML syntax error: {e}", hint="Check the file is valid YAML.") from e
    return data, node


def clean_loc(loc: Loc) -> Loc:
    """Drop the type tags pydantic adds inside unions (``list[list[int]]``, ``function-after[...]``)."""
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _TAG_NAMES))


def dotted(loc: Loc) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def line_of(root: yaml.Node | None, loc: Loc, *, on_key: bool = False) -> int:
    """1-based line of the deepest node on ``loc`` that exists in the document."""
    if root is None:
        return 1
    node = root
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if hit is None:
                break
            if last and on_key:
                return int(hit[0].start_mark.line) + 1
            node = hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return int(node.start_mark.line) + 1


def raise_issues(issues: list[Issue], root: yaml.Node | None, source: str) -> None:
    """Raise one ProfileError: the first issue as ``path:line: key: message``, the count of the rest."""
    if not issues:
        return
    first = issues[0]
    line = line_of(root, first.loc, on_key=first.on_key)
    more = f" (and {len(issues) - 1} more problem{'s' if len(issues) > 2 else ''})" if len(issues) > 1 else ""
    raise ProfileError(f"{source}:{line}: {dotted(first.loc)}: {first.message}{more}", hint=first.hint)
