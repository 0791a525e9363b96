"""Text every machine has: the Python standard library's own source, picked deterministically.

Files are the stdlib's top-level modules in sorted order; even-numbered ones train the model,
odd-numbered ones give the held-out benchmark prompts, so the demo never benchmarks on its
training text. The same Python version gives the same corpus.

Every file is reduced to its code (parsed, docstrings dropped, re-printed by ``ast.unparse``, which
also drops comments and normalises layout): a model this small trained this briefly otherwise spends
its capacity on English prose and degenerates into repeated ``\"\"\"`` lines, which also inflates
acceptance.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from medusa_trt.errors import MissingDependencyError

MIN_FILE, MAX_FILE = 2_000, 80_000  # skip stubs and giants so many modules contribute


@dataclass(frozen=True)
class Corpus:
    train_text: str
    heldout_files: list[Path]
    train_files: list[Path]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.train_text.encode()).hexdigest()[:16]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file() and MIN_FILE <= p.stat().st_size <= MAX_FILE)
    if len(files) < 8:
        raise MissingDependencyError(
            f"found only {len(files)} Python standard-library sources under {root}",
            hint="The demo trains on the stdlib's .py files; install the full Python.",
        )
    return files


def _read(p: Path) -> str:
    """The file's code without docstrings or comments; empty when it does not parse."""
    src = p.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and _has_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    try:
        return ast.unparse(tree) + "\n"
    except RecursionError:  # deeply nested expressions
        return ""


def _has_docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def load_corpus(max_chars: int = 1_500_000) -> Corpus:
    """Even-indexed stdlib files (up to ``max_chars``) for training, odd-indexed ones held out."""
    files = stdlib_files()
    train, held = files[0::2], files[1::2]
    parts: list[str] = []
    used: list[Path] = []
    total = 0
    for p in train:
        text = _read(p)
        parts.append(text)
        used.append(p)
        total += len(text)
        if total >= max_chars:
            break
    return Corpus("\n\n".join(parts)[:max_chars], held, used)


def code_prompts(files: list[Path], n: int, *, lines_before: int = 4, max_chars: int = 240) -> list[str]:
    """``n`` prompts ending with a ``def ...:`` line, a few lines of context before it.

    No trailing newline: byte-level BPE keeps a newline and the next line's indent in one token, so a
    prompt ending in a bare newline forces a split the model never saw in training. Walks the files
    in order and takes every k-th function so prompts spread over many modules.
    """
    found: list[str] = []
    for p in files:
        lines = _read(p).split("\n")
        for i, line in enumerate(lines):
            s = line.strip()
            if s.startswith("def ") and s.endswith(":") and '"""' not in s:
                ctx = "\n".join(lines[max(0, i - lines_before) : i + 1])
                found.append(ctx[-max_chars:])
    if not found:
        return []
    step = max(1, len(found) // n)
    return found[::step][:n]
