"""Every YAML a user gives us (profiles, tree files) is read bounded and strict: an alias bomb, a
huge file, deep nesting and a duplicate key are refused with path:line and exit 2, before any work,
by the real CLI in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medusa_trt import yamlread
from medusa_trt.config.profile import load_profile
from medusa_trt.errors import ProfileError, TreeError
from medusa_trt.medusa.trees import load_tree

CPU_YAML = (Path(__file__).resolve().parents[1] / "profiles" / "cpu.yaml").read_text()


def _bomb(levels: int) -> str:
    """``levels`` of ten aliases each, under serve.extra_llm_api_options: 10**levels nodes expanded."""
    lines = ["    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _with_extra(extra: str) -> str:
    assert "\nserve:\n" in CPU_YAML
    return CPU_YAML.replace("\nserve:\n", "\nserve:\n  extra_llm_api_options:\n" + extra, 1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "medusa_trt", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_an_alias_bomb_profile_is_refused_by_every_command(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_with_extra(_bomb(9)))
    assert path.stat().st_size < 4096
    # l3 is 1 + 10 * (1 + 10 * (1 + 10 * 11)) = 11,111 nodes expanded: the first over the budget
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if t.startswith("    l3:"))
    for args in (["profiles", "show", str(path)], ["plan", "-p", str(path), "-m", "llama-3.1-8b"]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert f"{path}:{line}: " in r.stderr and "alias" in r.stderr and "Traceback" not in r.stderr


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "dry.yaml"
    path.write_text(_with_extra("    base: &b {a: 1, b: [1, 2]}\n    copy: *b\n"))
    extra = load_profile(path).serve.extra_llm_api_options
    assert extra["copy"] == extra["base"] == {"a": 1, "b": [1, 2]}


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    lines = CPU_YAML.splitlines()
    at = next(i for i, t in enumerate(lines) if t.startswith("name:"))
    path = tmp_path / "dup.yaml"
    path.write_text("\n".join([*lines, lines[at].replace("cpu", "other")]) + "\n")
    with pytest.raises(
        ProfileError, match=rf"{path}:{len(lines) + 1}: duplicate key 'name' \(first at line {at + 1}\)"
    ):
        load_profile(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text(_with_extra("    k: 1\n    k: 2\n"))
    with pytest.raises(ProfileError, match="duplicate key 'k'"):
        load_profile(nested)


def test_a_huge_profile_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(CPU_YAML + "".join(f"# padding {i:08d} " + "x" * 100 + "\n" for i in range(110_000)))
    assert path.stat().st_size > 12 * 2**20
    r = _cli("profiles", "show", str(path))
    assert r.returncode == 2 and f"{path}: {path.stat().st_size} bytes, more than the 1024 KiB" in r.stderr, r.stderr


def test_a_fifo_profile_or_tree_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "profile.yaml"
    os.mkfifo(fifo)
    r = _cli("profiles", "show", str(fifo))
    assert r.returncode == 2 and f"{fifo}: not a regular file" in r.stderr, r.stderr
    with pytest.raises(TreeError, match="not a regular file"):
        load_tree(str(fifo))


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(_with_extra("    deep: " + "[" * 200_000 + "]" * 200_000 + "\n"))
    with pytest.raises(ProfileError, match=rf"{path}:\d+: .*nest"):  # libyaml's own limit may answer first
        load_profile(path)
    shallower = tmp_path / "shallower.yaml"
    shallower.write_text(_with_extra("    deep: " + "[" * 100 + "]" * 100 + "\n"))
    with pytest.raises(ProfileError, match=f"nested more than {yamlread.MAX_DEPTH} levels deep"):
        load_profile(shallower)


def test_tree_files_get_the_same_rules(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [[0], [0, 0], [1], [2], [3], [4], [5], [6], [7], [8]]\n" + _bomb(9).replace("    ", ""))
    with pytest.raises(TreeError, match=f"{bomb}:\\d+: .*alias"):
        load_tree(str(bomb))
    dup = tmp_path / "dup.yaml"
    dup.write_text("choices: [[0]]\nchoices: [[0], [1]]\n")
    with pytest.raises(TreeError, match=f"{dup}:2: duplicate key 'choices'"):
        load_tree(str(dup))
    ok = tmp_path / "ok.yaml"
    ok.write_text("medusa_choices: [[0], [0, 0], [1]]\n")
    assert load_tree(str(ok)) == [[0], [0, 0], [1]]
