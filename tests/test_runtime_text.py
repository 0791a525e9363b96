"""The one text-streaming helper (runtime.text.TextStream) under `medusa-trt run --prompt`: a multi-byte
character split across two generated tokens streams as that character, and decoding work stays linear."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medusa_trt.cli import run as cli
from medusa_trt.runtime import SamplingParams, load_engine
from medusa_trt.runtime.once import generate_once, prompt_ids
from medusa_trt.runtime.text import TextStream
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.models import make_tokenizer

PROMPT = "def main():"
TOKENS = 24
SPECIALS = 5  # ids 0..4: the tiny tokenizer's special tokens
# byte-level BPE spells bytes 0xA1..0xAC and 0xAE..0xFF as the characters of the same code point
LEAD, CONT = chr(0xC3), chr(0xA9)  # the UTF-8 bytes of "é"


def _swap_ids(tokenizer_json: Path, pairs: list[tuple[int, str]]) -> None:
    """Give each (id, piece) pair's piece that id, and the id's old piece the piece's old id."""
    doc = json.loads(tokenizer_json.read_text())
    vocab: dict[str, int] = doc["model"]["vocab"]
    by_id = {v: k for k, v in vocab.items()}
    for tid, piece in pairs:
        old_piece, old_id = by_id[tid], vocab[piece]
        vocab[piece], vocab[old_piece] = tid, old_id
        by_id[tid], by_id[old_id] = piece, old_piece
    tokenizer_json.write_text(json.dumps(doc))


def _rerecord(ckpt: Path, name: str) -> None:
    """Record an edited file's size and hash in the convert manifest, as if it had been written so."""
    from medusa_trt import records
    from medusa_trt.integrity import digest

    doc = records.read(records.CONVERT, ckpt)
    doc["files"][name] = {"size": (ckpt / name).stat().st_size, "hash": digest(ckpt / name)}
    records.write(records.CONVERT, ckpt, doc)


@pytest.fixture(scope="module")
def split_e(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, list[int]]:
    """A checkpoint whose greedy output for PROMPT holds "é" as two tokens (its lead and continuation
    byte), made by renumbering two pieces of the real tokenizer: the model and the prompt's ids are
    unchanged, so the same greedy token ids now spell "é" across two decoding steps."""
    ckpt = make_checkpoint(tiny_llama, tmp_path_factory.mktemp("text") / "ckpt")
    greedy = SamplingParams(max_tokens=TOKENS)
    with load_engine(ckpt) as engine:
        prompt = prompt_ids(engine, PROMPT, chat=False)
        out = [t for c in engine.generate(prompt, greedy, medusa=False) for t in c.token_ids]
        vocab = engine.tokenizer.get_vocab()
    taken = set(prompt) | {vocab[LEAD], vocab[CONT]}
    i = next(i for i in range(len(out) - 1) if out[i] != out[i + 1] and not {out[i], out[i + 1]} & taken)
    assert min(out[i], out[i + 1]) >= SPECIALS
    _swap_ids(ckpt / "tokenizer.json", [(out[i], LEAD), (out[i + 1], CONT)])
    _rerecord(ckpt, "tokenizer.json")  # a deliberate edit: the start-up check refuses unrecorded ones
    with load_engine(ckpt) as engine:
        assert prompt_ids(engine, PROMPT, chat=False) == prompt  # same input, so the same output ids
        tok = engine.tokenizer
        assert tok.decode([out[i]]) == "\ufffd" and tok.decode([out[i + 1]]) == "\ufffd"
        assert "é" in tok.decode(out, skip_special_tokens=True)
    return ckpt, out


def test_generate_once_streams_a_split_character_whole(split_e: tuple[Path, list[int]]) -> None:
    ckpt, out = split_e
    pieces: list[str] = []
    doc = generate_once(ckpt, PROMPT, SamplingParams(max_tokens=TOKENS), medusa=False, on_text=pieces.append)
    assert doc["token_ids"] == out and "é" in doc["text"]
    # what was shown is the final text: no replacement character was shown and left uncorrected
    assert "".join(pieces) == doc["text"]


def test_run_prompt_prints_the_split_character(
    split_e: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, _ = split_e
    argv = ["run", str(ckpt), "--prompt", PROMPT, "--max-tokens", str(TOKENS), "--no-medusa"]
    assert cli([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert cli(argv) == 0
    assert capsys.readouterr().out == doc["text"] + "\n" and "é" in doc["text"]


class _Counting:
    """A real tokenizer that counts the token ids it is asked to decode."""

    def __init__(self, tok: Any) -> None:
        self.tok, self.decoded = tok, 0

    def decode(self, ids: list[int], **kw: Any) -> str:
        self.decoded += len(ids)
        return str(self.tok.decode(ids, **kw))


def test_decoding_work_is_linear_in_the_completion(tmp_path: Path) -> None:
    tok = make_tokenizer(tmp_path)
    text = "def main():\n    return 0  # héllo wörld 日本\n" * 20
    ids = tok.encode(text)
    counting = _Counting(tok)
    s = TextStream(counting, ["absent"])
    got = "".join(s.push([t]) for t in ids) + s.finish()
    assert got == text
    # each push decodes the last settled piece again plus the unsettled tail: a few ids, not all so far
    assert len(ids) > 300 and counting.decoded <= 6 * len(ids)
