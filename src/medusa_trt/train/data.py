"""Training and calibration prompts: a small built-in set, or a user's file.

A prompt is either a string (used as raw text, like /v1/completions) or a list of chat messages
(rendered with the tokenizer's chat template, like /v1/chat/completions).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import InvalidInputError

Prompt = str | list[dict[str, str]]

_BUILTIN_CHAT = [
    "Explain what a hash table is and when to use one.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Summarize the plot of a heist movie in three sentences.",
    "What are the main differences between TCP and UDP?",
    "Give me a recipe for a simple tomato soup.",
    "Write a haiku about GPUs running at night.",
    "How does speculative decoding speed up language model inference?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "List five tips for writing readable code.",
    "Write a SQL query that counts orders per customer.",
    "Describe the water cycle to a ten-year-old.",
    "What is the difference between a process and a thread?",
    "Write a short email declining a meeting politely.",
    "Explain gradient descent with an analogy.",
    "Write a bash one-liner that finds the ten largest files in a directory.",
    "Summarize the benefits of unit testing.",
]

_BUILTIN_CODE = [
    "def binary_search(items, target):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n",
    "def read_config(path):\n    with open(path) as f:\n",
    "for i in range(10):\n",
    "def parse_args():\n    import argparse\n\n    parser = argparse.ArgumentParser(",
    'if __name__ == "__main__":\n',
    "def merge_sort(values):\n    if len(values) <= 1:\n",
]


def builtin_prompts() -> list[Prompt]:
    """Varied prompts (chat, code, summarization) so heads are not trained on one kind only."""
    chat: list[Prompt] = [[{"role": "user", "content": p}] for p in _BUILTIN_CHAT]
    code: list[Prompt] = list(_BUILTIN_CODE)
    # interleaved, so that any prefix (`tree accuracy --num-prompts N`) holds both kinds
    mixed: list[Prompt] = [p for pair in itertools.zip_longest(chat, code) for p in pair if p is not None]
    return mixed


def _from_record(rec: Any, where: str) -> Prompt:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        if isinstance(rec.get("messages"), list):
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in rec["messages"]]
        if isinstance(rec.get("conversations"), list):  # ShareGPT: the first human turn
            for turn in rec["conversations"]:
                if turn.get("from") in ("human", "user"):
                    return [{"role": "user", "content": str(turn["value"])}]
        for key in ("prompt", "text"):
            if isinstance(rec.get(key), str):
                return str(rec[key])
    raise InvalidInputError(
        f"{where}: a prompt must be a string or an object with 'prompt', 'text' or 'messages'",
        hint='JSONL lines like {"prompt": "def add(a, b):"} or {"messages": [...]}.',
    )


def load_prompts(given: str | Path) -> list[Prompt]:
    """'builtin', a JSONL/JSON file of prompts, or a text file (prompts separated by blank lines)."""
    if str(given) == "builtin":
        return builtin_prompts()
    path = Path(given)
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInputError(
            f"cannot read prompts {path}: {e.strerror}", hint="Pass --data builtin or a JSONL/text file of prompts."
        ) from e
    prompts: list[Prompt]
    if path.suffix == ".json":
        data = fsio.parse_json(text, path, "prompts file")
        prompts = [_from_record(r, f"{path}[{i}]") for i, r in enumerate(data if isinstance(data, list) else [data])]
    elif path.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                prompts.append(_from_record(fsio.parse_json(line, f"{path}:{i}", "JSON line"), f"{path}:{i}"))
    else:
        prompts = [p.strip("\n") + "\n" for p in text.split("\n\n") if p.strip()]
    if not prompts:
        raise InvalidInputError(f"{path}: no prompts found", hint="Pass --data builtin or a non-empty file.")
    return prompts


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids: chat messages through the chat template, raw strings as the tokenizer encodes them."""
    if isinstance(prompt, list) and not getattr(tokenizer, "chat_template", None):
        # a base model has no chat template (and is served through /v1/completions): raw text
        prompt = "\n".join(m["content"] for m in prompt) + "\n"
    if isinstance(prompt, list):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    # exactly what the server's /v1/completions does, so the heads see the prompts it will see
    return [int(i) for i in tokenizer.encode(prompt)]
