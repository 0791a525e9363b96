"""Dataset loading (builtin, JSONL, ShareGPT), seeded drawing and --input-len (tokens)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medusa_trt.bench.datasets import draw_prompts, fit_tokens, load_prompts, load_tokenizer
from medusa_trt.errors import InvalidInputError


def test_builtin_prompt_set_is_varied() -> None:
    prompts = load_prompts("builtin")
    assert 60 <= len(prompts) <= 100
    cats = Counter(p.category for p in prompts)
    assert {"chat", "code", "summarization", "reasoning"} <= set(cats)
    assert max(cats.values()) <= len(prompts) // 3  # no single kind dominates acceptance
    assert len({p.text for p in prompts}) == len(prompts) and all(p.text.strip() for p in prompts)


def test_jsonl_formats(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"prompt": "alpha"}),
        "",
        json.dumps("beta"),
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "gamma"}]}),
    ]
    f.write_text("\n".join(lines) + "\n")
    assert [p.text for p in load_prompts(f)] == ["alpha", "beta", "gamma"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(InvalidInputError, match=":2: invalid JSON"):
        load_prompts(bad)


def test_sharegpt_takes_first_human_turn(tmp_path: Path) -> None:
    doc = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "first q"},
                {"from": "gpt", "value": "ans"},
                {"from": "human", "value": "second q"},
            ],
        },
        {"id": "b", "conversations": [{"from": "gpt", "value": "only a bot turn"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "another"}]},
    ]
    f = tmp_path / "sg.json"
    f.write_text(json.dumps(doc))
    assert [(p.id, p.text) for p in load_prompts(f)] == [("a", "first q"), ("c", "another")]


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="dataset not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_seeded_draw_is_deterministic_and_wraps() -> None:
    pool = load_prompts("builtin")
    a = draw_prompts(pool, 20, seed=1)
    assert a == draw_prompts(pool, 20, seed=1)
    assert [p.text for p in a] != [p.text for p in draw_prompts(pool, 20, seed=2)]
    big = draw_prompts(pool, len(pool) + 5, seed=3)
    assert len(big) == len(pool) + 5 and len({p.text for p in big[: len(pool)]}) == len(pool)


def test_a_line_may_give_its_output_length_in_each_tools_words(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "a", "output_tokens": 3},  # vLLM's custom dataset
        {"text": "b", "output_tokens_count": 5},  # guidellm
        {"text": "c", "output_length": 7},  # aiperf single_turn
        {"text": "d", "output_tokens": 9, "output_tokens_count": 9, "output_length": 9},  # one file for all
        {"prompt": "e"},
        "f",
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(p.text, p.max_tokens) for p in load_prompts(f)] == [
        ("a", 3),
        ("b", 5),
        ("c", 7),
        ("d", 9),
        ("e", None),
        ("f", None),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "x", "output_tokens": 4, "output_length": 5}, "the output lengths disagree"),
        ({"prompt": "x", "output_tokens": 0}, "'output_tokens' must be a positive integer"),
        ({"prompt": "x", "output_length": "8"}, "'output_length' must be a positive integer"),
        ({"prompt": "x", "output_tokens_count": True}, "'output_tokens_count' must be a positive integer"),
    ],
)
def test_a_bad_output_length_names_its_line(tmp_path: Path, row: dict[str, object], message: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InvalidInputError, match=f"p.jsonl:2: {message}"):
        load_prompts(f)


def test_unshuffled_draw_keeps_the_files_order_and_wraps(tmp_path: Path) -> None:
    pool = load_prompts("builtin")
    assert draw_prompts(pool, 5, seed=1, shuffle=False) == pool[:5]
    assert draw_prompts(pool, len(pool) + 2, seed=1, shuffle=False) == pool + pool[:2]


def test_input_len_counts_tokens_of_the_model(tiny_llama: Path) -> None:
    """Every drawn prompt re-encodes to exactly --input-len tokens, cut (long) or padded (short)."""
    tok = load_tokenizer(tiny_llama)
    pool = load_prompts("builtin")
    for n in (5, 50, 300):
        drawn = draw_prompts(pool, 10, seed=0, input_len=n, tokenizer=tok)
        assert [len(tok.encode(p.text, add_special_tokens=False)) for p in drawn] == [n] * 10
    assert fit_tokens("ab", 7, tok) != fit_tokens("ab", 6, tok)
    with pytest.raises(InvalidInputError, match="needs the model's tokenizer"):
        draw_prompts(pool, 3, seed=0, input_len=50)
    with pytest.raises(InvalidInputError):
        fit_tokens("x", 0, tok)
