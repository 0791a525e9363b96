"""Prompt sets: the built-in set shipped with the package, JSONL of prompts, ShareGPT JSON.

`--input-len N` is in characters (no tokenizer is needed, so it works against any server): longer
prompts are cut to N characters, shorter ones are padded by repeating their own text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medusa_trt.errors import InvalidInputError

BUILTIN = "builtin"


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str = ""
    id: str = ""


def _builtin_lines() -> list[str]:
    return resources.files("medusa_trt.data").joinpath("prompts.jsonl").read_text(encoding="utf-8").splitlines()


def _from_jsonl_obj(obj: Any, where: str) -> Prompt:
    if isinstance(obj, str):
        return Prompt(obj)
    if isinstance(obj, dict):
        for key in ("prompt", "text", "question", "instruction"):
            if isinstance(obj.get(key), str):
                return Prompt(obj[key], str(obj.get("category", "")), str(obj.get("id", "")))
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[0], str):
                return Prompt(users[0], str(obj.get("category", "")), str(obj.get("id", "")))
    raise InvalidInputError(
        f"{where}: no prompt text (expected a string or an object with 'prompt')",
        hint='One JSON per line: {"prompt": "..."} (also "text", or "messages").',
    )


def _parse_jsonl(lines: list[str], source: str) -> list[Prompt]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise InvalidInputError(f"{source}:{n}: invalid JSON", hint="One JSON document per line.") from None
        out.append(_from_jsonl_obj(obj, f"{source}:{n}"))
    return out


def _parse_sharegpt(doc: Any, source: str) -> list[Prompt]:
    """ShareGPT: a list of {"id", "conversations": [{"from": "human", "value": ...}, ...]}; first human turn."""
    if not isinstance(doc, list):
        raise InvalidInputError(f"{source}: a ShareGPT file is a JSON list of conversations")
    out = []
    for item in doc:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            continue
        for t in turns:
            if isinstance(t, dict) and t.get("from") in ("human", "user") and isinstance(t.get("value"), str):
                if t["value"].strip():
                    out.append(Prompt(t["value"], "sharegpt", str(item.get("id", ""))))
                break
    return out


def load_prompts(dataset: str | Path) -> list[Prompt]:
    """All prompts of a dataset: "builtin", a .jsonl file, or a ShareGPT .json file."""
    if str(dataset) == BUILTIN:
        return _parse_jsonl(_builtin_lines(), "builtin prompts")
    path = Path(dataset)
    if not path.is_file():
        raise InvalidInputError(
            f"dataset not found: {path}", hint="Use 'builtin', a JSONL file of prompts or a ShareGPT JSON file."
        )
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            doc = json.loads(text)
        except ValueError:
            raise InvalidInputError(f"{path}: invalid JSON", hint="A ShareGPT file is one JSON list.") from None
        prompts = _parse_sharegpt(doc, str(path))
    else:
        prompts = _parse_jsonl(text.splitlines(), str(path))
    if not prompts:
        raise InvalidInputError(f"{path}: no prompts found", hint="Check the file format (JSONL or ShareGPT).")
    return prompts


def fit_length(text: str, n_chars: int) -> str:
    """Cut or pad (by repeating the text) to exactly `n_chars` characters."""
    if n_chars <= 0:
        raise InvalidInputError(f"--input-len must be positive, got {n_chars}")
    if len(text) >= n_chars:
        return text[:n_chars]
    reps = -(-n_chars // (len(text) + 1))
    return " ".join([text] * reps)[:n_chars]


def draw_prompts(prompts: list[Prompt], n: int, seed: int, input_len: int | None = None) -> list[Prompt]:
    """`n` prompts drawn with `seed`: a seeded shuffle, repeated when n exceeds the set."""
    if n <= 0:
        raise InvalidInputError(f"--num-prompts must be positive, got {n}")
    if not prompts:
        raise InvalidInputError("the dataset holds no prompts")
    rng = random.Random(seed)
    out: list[Prompt] = []
    while len(out) < n:
        order = list(prompts)
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    if input_len is not None:
        out = [Prompt(fit_length(p.text, input_len), p.category, p.id) for p in out]
    return out
