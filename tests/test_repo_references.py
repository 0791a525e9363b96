"""Every reference in the repository can be checked from the repository.

Scans every text file git knows of (tracked, or new and not ignored) for: names of notes that live
outside the repository, issue numbers, repository paths and ``medusa_trt.*`` modules that do not
exist, Markdown links to missing files or headings, and ``docs/sources.md, <section>`` citations
naming no section of that file. In Markdown, every ``medusa-trt ...`` command line (code blocks and
inline code) must name real commands and options, and a topic page's lone ``--flag`` must be an
option of a command the page documents.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".jsonl", ".sh", ""}
# Notes kept beside the project during its development; nothing here may point at them. Spelled in
# pieces so that this file does not match itself.
OUTSIDE_NOTES = [
    "performance-" + "anchors",
    "trtllm-" + "medusa.md",
    "medusa-" + "algorithm.md",
    "ecosystem-" + "and-style",
    "trtllm-cli-" + "flags.md",
    "shared/" + "reference",
    "DESIGN" + ".md",
    "anchors " + "§",
]
ISSUE = re.compile(r"(?<![/\w])issues?\s*#?\d+", re.IGNORECASE)
# A path with at least one directory, not part of a URL or a longer path.
# A relative path a user types (``./my-node.yaml``) is not a reference.
PATH = re.compile(r"(?<![\w/.:-])(\w[\w.-]*/(?:[\w.-]+/)*[\w.-]+\.(?:md|py|ya?ml|toml))\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
SOURCES_CITE = re.compile(r"sources\.md, \"?([^)\".;\n]+)")
MODULE = re.compile(r"(?<![\w.])medusa_trt(?:\.\w+)+")


def _files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the repository's files")
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    paths = [ROOT / p for p in out.split("\0") if p]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES and p != Path(__file__).resolve()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def _headings(md: Path) -> tuple[str, ...]:
    return tuple(m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", md.read_text(encoding="utf-8"), re.M))


def _missing_path(path: Path, ref: str) -> bool:
    """True when ``ref`` names a file in one of our directories and no such file exists.

    A path whose directory is not ours (``examples/medusa/convert_checkpoint.py``) is an upstream path.
    """
    candidates = [ROOT / ref, path.parent / ref, ROOT / "src" / ref]
    if any(c.exists() for c in candidates):
        return False
    return any(c.parent.is_dir() and ROOT in c.resolve().parents for c in candidates)


def _missing_module(dotted: str) -> bool:
    """True when ``medusa_trt.a.b...`` names no module, package or name defined in one."""
    here = ROOT / "src"
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if (here / part).is_dir():
            here = here / part
        elif (here / f"{part}.py").is_file():
            here = here / f"{part}.py"
        else:  # a name inside the module or package reached so far
            source = here / "__init__.py" if here.is_dir() else here
            return i < 2 or not re.search(rf"\b{re.escape(part)}\b", source.read_text(encoding="utf-8"))
        if here.is_file():
            return False if i == len(parts) - 1 else _missing_name(here, parts[i + 1])
    return False


def _missing_name(module: Path, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", module.read_text(encoding="utf-8")) is None


def _problems(path: Path, text: str) -> list[str]:
    found: list[str] = []
    for name in OUTSIDE_NOTES:
        for m in re.finditer(re.escape(name), text):
            found.append(f"{_where(path, text, m.start())}: refers to notes outside the repository ({name!r})")
    for m in ISSUE.finditer(text):
        found.append(f"{_where(path, text, m.start())}: refers to an issue number ({m.group(0)!r})")
    for m in PATH.finditer(text):
        if _missing_path(path, m.group(1)):
            found.append(f"{_where(path, text, m.start())}: {m.group(1)} does not exist")
    for m in MODULE.finditer(text):
        placeholder = any(len(part) == 1 for part in m.group(0).split("."))  # medusa_trt.x.y in prose
        if not placeholder and _missing_module(m.group(0)):
            found.append(f"{_where(path, text, m.start())}: {m.group(0)} does not exist")
    if path.suffix == ".md":
        found += _link_problems(path, text)
    for m in SOURCES_CITE.finditer(text):
        section = m.group(1).strip().lower()
        if not any(section in h.lower() for h in _headings(ROOT / "docs" / "sources.md")):
            found.append(f"{_where(path, text, m.start())}: docs/sources.md has no section {m.group(1).strip()!r}")
    return found


def _link_problems(path: Path, text: str) -> list[str]:
    found = []
    for m in MD_LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part) if file_part else path
        if not dest.exists():
            found.append(f"{_where(path, text, m.start())}: link to missing {file_part}")
        elif anchor and dest.suffix == ".md" and anchor not in {_slug(h) for h in _headings(dest)}:
            found.append(f"{_where(path, text, m.start())}: {dest.name} has no heading #{anchor}")
    return found


def test_every_reference_resolves_inside_the_repository() -> None:
    problems = [p for f in _files() if (t := _text(f)) is not None for p in _problems(f, t)]
    assert problems == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("note", "# see performance-" + "anchors.md §3.1", "outside the repository"),
        ("issue", "# Targets (issue" + " #6): fast", "issue number"),
        ("missing path", "see docs/no-such-file.md", "does not exist"),
        ("missing module", "in src/medusa_trt/runtime/no_such.py", "does not exist"),
        ("missing dotted module", "server (medusa_trt.bench.no_such, raw asyncio)", "does not exist"),
        ("missing name", "see medusa_trt.plan.perf.no_such_function", "does not exist"),
        ("missing link", "[x](no-such.md)", "link to missing"),
        ("missing heading", "[x](sources.md#no-such-heading)", "has no heading"),
        ("missing section", "(docs/sources" + ".md, No such section)", "has no section"),
    ],
)
def test_the_checks_catch_each_kind(name: str, text: str, expected: str) -> None:
    doc = ROOT / "docs" / "probe.md"  # never written: only its name and directory are used
    problems = _problems(doc, text)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    "text",
    [
        "NVIDIA/TensorRT-LLM docs/source/performance/perf-benchmarking.md",  # upstream directory
        "medusa-trt profiles add ./my-node.yaml",  # a path the user types
        "medusa_trt.plan.perf.step_time_ms, medusa_trt.runtime, medusa_trt.plan.predict",  # modules and names
        "``from medusa_trt.x.y import _name``",  # a placeholder
        "https://github.com/kvcache-ai/Mooncake/pull/3484 and .../sglang/issues/303",  # URLs
        "[sources](sources.md#all-reduce-latency), docs/perf-model.md, (docs/sources" + ".md, Medusa algorithm)",
    ],
)
def test_the_checks_accept_upstream_paths_urls_and_real_references(text: str) -> None:
    assert _problems(ROOT / "docs" / "probe.md", text) == []


# --- documented commands and flags -----------------------------------------------------------------
# Each topic page documents some commands: a `--flag` quoted alone in its prose must be an option of
# one of them. Pages not listed here (safety, exit codes, the README) may name any command's options.
PAGE_COMMANDS = {
    "docs/demo.md": ("demo",),
    "docs/convert.md": ("convert",),
    "docs/build.md": ("build", "plan", "profiles"),
    "docs/serve.md": ("run",),
    "docs/bench.md": ("bench",),
    "docs/heads-and-trees.md": ("heads", "tree"),
}
# Options of other tools that these pages quote alone, by page.
FOREIGN_FLAGS = {
    "docs/bench.md": {"--use-server-token-count", "--request-rate", "--arrival-pattern"}  # aiperf's
    | {"--within", "--adapt", "--no-diagnostics", "--pool"}  # benchmarks/bench_agreement.py's
    | {"--no-adapt"},  # run's, named where the page speaks of the server
    "docs/convert.md": {"--baseline"},  # benchmarks/convert.py's
}
# Backticks pair from left to right; a span may wrap a line but not cross a paragraph.
INLINE_CODE = re.compile(r"(`+)((?:(?!\n\s*\n).)+?)(?<!`)\1(?!`)", re.S)
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
LONE_FLAG = re.compile(r"^(--?[a-z][a-z0-9-]*)(?:[ =][^-].*)?$")


@cache
def _cli() -> Any:
    import typer

    from medusa_trt.cli import app

    return typer.main.get_command(app)


def _options(command: Any) -> set[str]:
    opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    return opts | {"--help", "-h"}


def _descendants(command: Any) -> list[Any]:
    subs = list(getattr(command, "commands", {}).values())
    return [command] + [d for s in subs for d in _descendants(s)]


def _inline_code(text: str) -> list[tuple[int, str]]:
    """Inline code spans outside fenced blocks, with their offsets."""
    for m in FENCED.finditer(text):  # blanked, keeping offsets, so that their backticks pair with nothing
        text = text[: m.start()] + re.sub(r"[^\n]", " ", m.group(0)) + text[m.end() :]
    return [(m.start(2), m.group(2)) for m in INLINE_CODE.finditer(text)]


def _code_texts(text: str) -> list[tuple[int, str]]:
    """Every piece of code in a Markdown text (inline spans, fenced and indented blocks), with its offset."""
    found = [(m.start(1), m.group(1)) for m in FENCED.finditer(text)]
    found += [(start, code.replace("\n", " ")) for start, code in _inline_code(text)]
    found += [(m.start(1), m.group(1)) for m in re.finditer(r"(?:\A|\n\n)((?:    .*(?:\n|\Z))+)", text)]
    return found


def _invocations(code: str) -> list[tuple[int, list[str]]]:
    """The `medusa-trt ...` command lines in a piece of code: offset and words, up to a comment."""
    code = code.replace("\\\n", " ")
    found = []
    for m in re.finditer(r"(?<![\w./-])medusa-trt ([^\n#;&|`]*(?:\|[^\n#;&`]*)*)", code):
        found.append((m.start(), m.group(1).split()))
    return found


def _flag(word: str) -> str | None:
    word = word.strip("[](),;")
    return word.split("=")[0] if re.match(r"--?[a-zA-Z]", word) else None


def _invocation_problem(words: list[str]) -> str | None:
    command = _cli()
    for word in words:
        flag = _flag(word)
        if flag is not None:
            if flag not in _options(command):
                return f"{command.name} has no option {flag}"
        elif hasattr(command, "commands") and re.fullmatch(r"[a-z][a-z-]*", word):
            if word not in command.commands:
                return f"{command.name} has no command {word!r}"
            command = command.commands[word]
        elif command is _cli():
            return None  # `medusa-trt DEBUG <module>: ...`: a log line, not a command
    return None


def _command_problems(path: Path, text: str) -> list[str]:
    found = []
    rel = path.relative_to(ROOT).as_posix() if ROOT in path.parents else path.name
    for offset, code in _code_texts(text):
        for start, words in _invocations(code):
            problem = _invocation_problem(words)
            if problem:
                found.append(f"{_where(path, text, offset + start)}: `medusa-trt {' '.join(words)}`: {problem}")
    page = PAGE_COMMANDS.get(rel)
    if page is None:
        return found
    root = _cli()
    known = set().union(*(_options(c) for name in page for c in _descendants(root.commands[name])))
    known |= _options(root) | FOREIGN_FLAGS.get(rel, set())
    for start, code in _inline_code(text):
        lone = LONE_FLAG.match(code)
        if lone and lone.group(1) not in known:
            found.append(f"{_where(path, text, start)}: {lone.group(1)} is no option of {', '.join(page)}")
    return found


def test_every_documented_command_and_option_exists() -> None:
    docs = [f for f in _files() if f.suffix == ".md"]
    problems = [p for f in docs if (t := _text(f)) is not None for p in _command_problems(f, t)]
    assert problems == []


@pytest.mark.parametrize(
    ("page", "text", "expected"),
    [
        ("README.md", "    medusa-trt convrt --model m\n", "no command 'convrt'"),
        ("README.md", "```bash\nmedusa-trt build --profile cpu --no-such-flag\n```\n", "no option --no-such-flag"),
        ("README.md", "run `medusa-trt heads train --model m\n--no-such 1`.", "no option --no-such"),
        ("README.md", "    medusa-trt tree build --accuracy a.csv \\\n        --nodez 63\n", "no option --nodez"),
        ("docs/convert.md", "`--port` sets it", "no option of convert"),
    ],
)
def test_the_command_check_catches_each_kind(page: str, text: str, expected: str) -> None:
    problems = _command_problems(ROOT / page, text)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("page", "text"),
    [
        ("README.md", "    medusa-trt --debug run engines/tiny --port 8000   # --not-an-option in a comment\n"),
        ("README.md", "`medusa-trt DEBUG <module>: ...` lines on stderr"),
        ("README.md", "    medusa-trt heads train --model m --data builtin|prompts.jsonl [--json]\n"),
        ("docs/bench.md", "`--use-server-token-count` reads `usage`; `--tokenizer DIR`"),
        ("docs/build.md", "`--kv_cache_type paged` (trtllm-build's) and `--tokens-per-step` (plan's)"),
    ],
)
def test_the_command_check_accepts_real_commands(page: str, text: str) -> None:
    assert _command_problems(ROOT / page, text) == []
