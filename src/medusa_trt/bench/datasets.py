"""Prompt sets: the built-in set shipped with the package, JSONL of prompts, ShareGPT JSON.

A JSONL line may also say how many tokens its request asks for: ``output_tokens`` (vLLM's custom dataset),
``output_tokens_count`` (guidellm) or ``output_length`` (aiperf's ``single_turn``), so one file gives every
tool the same requests. It overrides ``--max-tokens`` for that prompt, as it does in guidellm and aiperf.

`--input-len N` counts tokens, as vLLM's benchmark, aiperf and trtllm-bench do, with the engine
directory's tokenizer or `--tokenizer`: longer prompts are cut to N tokens, shorter ones are padded by
repeating their own text. (Without a tokenizer there is no honest way to count them.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import InvalidInputError

BUILTIN = "builtin"


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str = ""
    id: str = ""
    max_tokens: int | None = None  # the file's own output length for this prompt, if it gives one


# the output length's name in vLLM's custom dataset, guidellm's column mapper and aiperf's single_turn
OUTPUT_LENGTH_KEYS = ("output_tokens", "output_tokens_count", "output_length")


def _builtin_lines() -> list[str]:
    return resources.files("medusa_trt.data").joinpath("prompts.jsonl").read_text(encoding="utf-8").splitlines()


def _output_length(obj: dict[str, Any], where: str) -> int | None:
    """The line's output length: a positive integer under one of OUTPUT_LENGTH_KEYS (several must agree)."""
    given = {k: obj[k] for k in OUTPUT_LENGTH_KEYS if obj.get(k) is not None}
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"{where}: {k!r} must be a positive integer, got {v!r}")
    if len(set(given.values())) > 1:
        raise InvalidInputError(
            f"{where}: the output lengths disagree ({', '.join(f'{k}={v}' for k, v in given.items())})",
            hint="Give one number, or the same number under each name.",
        )
    return next(iter(given.values()), None)


def _from_jsonl_obj(obj: Any, where: str) -> Prompt:
    if isinstance(obj, str):
        return Prompt(obj)
    if isinstance(obj, dict):
        meta = (str(obj.get("category", "")), str(obj.get("id", "")), _output_length(obj, where))
        for key in ("prompt", "text", "question", "instruction"):
            if isinstance(obj.get(key), str):
                return Prompt(obj[key], *meta)
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[0], str):
                return Prompt(users[0], *meta)
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
            obj = fsio.parse_json(line, f"{source}:{n}")
        except InvalidInputError:
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
            doc = fsio.parse_json(text, path)
        except InvalidInputError:
            raise InvalidInputError(f"{path}: invalid JSON", hint="A ShareGPT file is one JSON list.") from None
        prompts = _parse_sharegpt(doc, str(path))
    else:
        prompts = _parse_jsonl(text.splitlines(), str(path))
    if not prompts:
        raise InvalidInputError(f"{path}: no prompts found", hint="Check the file format (JSONL or ShareGPT).")
    return prompts


def fit_tokens(text: str, n_tokens: int, tokenizer: Any) -> str:
    """Cut or pad (by repeating the text) to ``n_tokens`` tokens of ``tokenizer`` (special tokens not
    counted: the server adds its BOS or chat template). Decoding a cut can re-encode a token longer or
    shorter at the seam; the cut moves until the text re-encodes to ``n_tokens`` when it can."""
    if n_tokens <= 0:
        raise InvalidInputError(f"--input-len must be positive, got {n_tokens}")

    def encode(t: str) -> list[int]:
        return list(tokenizer.encode(t, add_special_tokens=False))

    ids = encode(text) or encode(" ")
    while len(ids) < n_tokens + 8:  # a margin for the seam
        ids = ids + encode(" " + text if text else " ")
    cut, out = n_tokens, ""
    for _ in range(4):
        out = str(tokenizer.decode(ids[:cut]))
        got = len(encode(out))
        if got == n_tokens:
            break
        cut += n_tokens - got
    return out


def draw_prompts(
    prompts: list[Prompt],
    n: int,
    seed: int,
    input_len: int | None = None,
    tokenizer: Any = None,
    shuffle: bool = True,
) -> list[Prompt]:
    """`n` prompts drawn with `seed`: a seeded shuffle (or the file's order), repeated when n exceeds the set."""
    if n <= 0:
        raise InvalidInputError(f"--num-prompts must be positive, got {n}")
    if not prompts:
        raise InvalidInputError("the dataset holds no prompts")
    rng = random.Random(seed)
    out: list[Prompt] = []
    while len(out) < n:
        order = list(prompts)
        if shuffle:
            rng.shuffle(order)
        out.extend(order[: n - len(out)])
    if input_len is not None:
        if tokenizer is None:
            raise InvalidInputError(
                "--input-len counts tokens, so it needs the model's tokenizer",
                hint="Pass --tokenizer DIR (a directory with tokenizer.json), or --engine DIR.",
            )
        fitted = {text: fit_tokens(text, input_len, tokenizer) for text in {p.text for p in out}}
        out = [Prompt(fitted[p.text], p.category, p.id, p.max_tokens) for p in out]
    return out


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model, checkpoint or engine directory (where `medusa-trt` puts the files; a vLLM
    engine directory names its model in ``model.json``)."""
    for d in (path, path / "checkpoint", path / "tokenizer", *_referenced_model(path)):
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(d))
    raise InvalidInputError(
        f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json)",
        hint="Pass --tokenizer with the model's directory.",
    )


def _referenced_model(engine_dir: Path) -> list[Path]:
    """The local model a vLLM engine directory serves by reference (``records.MODEL_REF``), if any."""
    from medusa_trt import records

    model = (records.peek(records.MODEL_REF, engine_dir) or {}).get("model")
    return [Path(model)] if isinstance(model, str) and Path(model).is_dir() else []
