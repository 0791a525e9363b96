"""The one way to read a user's YAML file (profiles, tree files): bounded, strict, parsed once.

PyYAML's loaders expand nothing themselves, but the data they build shares every aliased node, so
whatever walks it (validation, printing) sees each alias as a full copy: nine levels of ten aliases
are a billion nodes from a 2 KB file. Here the document is composed from the parser's event
stream, iteratively (no recursion, whatever the nesting), and refused when it is larger than
``MAX_BYTES``, nested deeper than ``MAX_DEPTH``, or would have more than ``MAX_NODES`` nodes with
its aliases expanded; a mapping with the same key twice is refused too (PyYAML keeps the last one
silently). Errors name ``path:line``. The composed node tree is kept (``yaml_marks`` maps a
validation error back to its line) and the plain data is constructed from it, so the text is
parsed once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a profile is ~2 KB, a tree file a few KB
MAX_DEPTH = 64
MAX_NODES = 10_000  # with aliases expanded; a shipped profile has a few hundred
_MERGE = "tag:yaml.org,2002:merge"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it


class YamlRefused(Exception):
    """A YAML document we will not read; ``line`` is 1-based (0: the whole file)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def read_capped(path: Path, limit: int = MAX_BYTES) -> str:
    """The text of ``path`` (UTF-8), reading at most ``limit`` + 1 bytes; YamlRefused when larger or
    not a regular file (a FIFO or a device would block or never end; a link to a file is fine)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise YamlRefused(0, "not a regular file (a FIFO, device or directory)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise YamlRefused(0, f"{st.st_size} bytes, more than the {limit // 1024} KiB a YAML file here may have")
    return data.decode("utf-8")


def load(text: str, limit: int = MAX_BYTES) -> tuple[Any, Node | None]:
    """The plain data and the node tree of a one-document YAML text; raises YamlRefused or yaml.YAMLError."""
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise YamlRefused(0, f"more than the {limit // 1024} KiB a YAML file here may have")
    loader = _Loader(text)
    try:
        root = _compose(loader)
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, root


def raise_as(e: YamlRefused, source: str, error: Callable[..., Exception], hint: str | None = None) -> NoReturn:
    """Raise ``error`` (one of ``medusa_trt.errors``: this leaf imports none) naming ``source:line``."""
    where = f"{source}:{e.line}" if e.line else source
    raise error(f"{where}: {e.message}", hint=hint) from None


class _Open:
    """A collection being composed: its node, its expanded size so far, the mapping key awaiting a value."""

    def __init__(self, node: Node) -> None:
        self.node, self.size = node, 1
        self.key: Node | None = None
        self.keys: dict[tuple[str, str], int] = {}


def _compose(loader: Any) -> Node | None:
    anchors: dict[str, Node] = {}
    sizes: dict[int, int] = {}  # id(node) -> expanded size, for closed anchored nodes
    stack: list[_Open] = []
    root: Node | None = None
    documents = 0
    while True:
        event = loader.get_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, StreamStartEvent | DocumentEndEvent):
            continue
        if isinstance(event, StreamEndEvent):
            return root
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YamlRefused(line, "more than one YAML document (a second `---`)")
            continue
        if isinstance(event, AliasEvent):
            node = anchors.get(str(event.anchor))
            if node is None:
                raise YamlRefused(line, f"alias *{event.anchor} names no anchor defined before it")
            if id(node) not in sizes:
                raise YamlRefused(line, f"alias *{event.anchor} refers to a collection that contains it")
            _add(stack, node, sizes[id(node)], line)
            continue
        if isinstance(event, SequenceEndEvent | MappingEndEvent):
            done = stack.pop()
            done.node.end_mark = event.end_mark
            sizes[id(done.node)] = done.size
            if stack:
                _add(stack, done.node, done.size, line)
            else:
                root = done.node
            continue
        node = _node(loader, event)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            if anchor in anchors:
                raise YamlRefused(line, f"anchor &{anchor} is defined twice")
            anchors[anchor] = node
        if isinstance(event, ScalarEvent):
            sizes[id(node)] = 1
            if stack:
                _add(stack, node, 1, line)
            else:
                root = node
        else:
            if len(stack) >= MAX_DEPTH:
                raise YamlRefused(line, f"nested more than {MAX_DEPTH} levels deep")
            stack.append(_Open(node))


def _node(loader: Any, event: Any) -> Node:
    kind = {ScalarEvent: ScalarNode, SequenceStartEvent: SequenceNode, MappingStartEvent: MappingNode}[type(event)]
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(kind, event.value if kind is ScalarNode else None, event.implicit)
    if kind is ScalarNode:
        return ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    return kind(tag, [], event.start_mark, None, flow_style=event.flow_style)


def _add(stack: list[_Open], node: Node, size: int, line: int) -> None:
    """Append ``node`` (expanded size ``size``) to the innermost open collection."""
    top = stack[-1]
    top.size += size
    if top.size > MAX_NODES:
        raise YamlRefused(
            line, f"the document would have more than {MAX_NODES} nodes with its aliases expanded (an alias bomb?)"
        )
    if isinstance(top.node, SequenceNode):
        top.node.value.append(node)
        return
    if top.key is None:  # a key
        if not isinstance(node, ScalarNode):
            raise YamlRefused(line, "a mapping key must be a plain value, not a list or mapping")
        if node.tag != _MERGE:
            first = top.keys.get((node.tag, node.value))
            if first is not None:
                raise YamlRefused(line, f"duplicate key '{node.value}' (first at line {first})")
            top.keys[(node.tag, node.value)] = line
        top.key = node
        return
    top.node.value.append((top.key, node))
    top.key = None
