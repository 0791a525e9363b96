"""Incremental detokenization (multi-byte characters split across tokens), stop strings, request models,
and the Prometheus exposition: the server's pure parts, with the real tiny byte-level BPE tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_trt.runtime.text import TextStream
from medusa_trt.serve.metrics import Metrics
from medusa_trt.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest

MULTIBYTE = "héllo wörld 日本 → ok"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.helpers.models import make_tokenizer

    return make_tokenizer(Path(tmp_path_factory.mktemp("tok")))


def _split(ids: list[int], sizes: list[int]) -> list[list[int]]:
    out, i = [], 0
    for n in sizes:
        if i >= len(ids):
            break
        out.append(ids[i : i + n])
        i += n
    if i < len(ids):
        out.append(ids[i:])
    return out


def test_multibyte_split_across_tokens_is_never_garbled(tok: Any) -> None:
    ids = tok.encode(MULTIBYTE)
    # the tiny BPE has no merges for these characters: single tokens decode to half characters
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    s = TextStream(tok)
    deltas = [s.push([t]) for t in ids] + [s.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == MULTIBYTE


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_any_chunking_gives_the_full_text(tok: Any, sizes: list[int]) -> None:
    text = MULTIBYTE + " def main():\n    return 0"
    ids = tok.encode(text)
    s = TextStream(tok)
    deltas = [s.push(c) for c in _split(ids, sizes)] + [s.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("stop", ["wörld", "日", "→ o", "o w"])
def test_stop_string_straddling_chunks(tok: Any, stop: str) -> None:
    ids = tok.encode(MULTIBYTE)
    s = TextStream(tok, [stop, "zzz"])
    deltas = []
    for t in ids:
        deltas.append(s.push([t]))
        if s.stopped:
            break
    deltas.append(s.finish())
    assert s.stopped
    assert "".join(deltas) == MULTIBYTE[: MULTIBYTE.index(stop)]


def test_no_stop_match_emits_everything(tok: Any) -> None:
    ids = tok.encode(MULTIBYTE)
    s = TextStream(tok, ["absent"])
    got = "".join(s.push([t]) for t in ids) + s.finish()
    assert got == MULTIBYTE and not s.stopped


def test_special_tokens_are_not_shown(tok: Any) -> None:
    s = TextStream(tok)
    ids = [*tok.encode("hi"), tok.eos_token_id]
    assert s.push(ids) + s.finish() == "hi"


def test_backend_decode_is_the_tokenizer_s_decode(tok: Any) -> None:
    """TextStream decodes with the Rust tokenizer directly (skipping transformers' wrapper): the same text
    for every token alone and for byte-split characters, special tokens skipped."""
    from medusa_trt.runtime.text import _backend

    backend = _backend(tok)
    assert backend is not None
    seqs = [[i] for i in range(len(tok))] + [tok.encode(MULTIBYTE), tok.encode(MULTIBYTE)[1:4]]
    for ids in seqs:
        want = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert backend.decode(ids, skip_special_tokens=True) == want


def test_a_tokenizer_with_its_own_decode_keeps_it(tok: Any) -> None:
    from medusa_trt.runtime.text import _backend

    class Shouting(type(tok)):  # type: ignore[misc]
        def _decode(self, *args: Any, **kwargs: Any) -> str:
            return str(super()._decode(*args, **kwargs)).upper()

    loud = copy.copy(tok)
    loud.__class__ = Shouting
    assert _backend(loud) is None
    s = TextStream(loud)
    ids = loud.encode("hello world")
    assert s.push(ids) + s.finish() == "HELLO WORLD"


def test_request_models() -> None:
    r = CompletionRequest.model_validate({"prompt": "x", "stop": "a", "user": "me", "logit_bias": {}})
    assert r.stop_list() == ["a"] and r.medusa is True and r.prompts() == ["x"]
    assert CompletionRequest.model_validate({"prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert CompletionRequest.model_validate({"prompt": [1, 2, 3]}).prompts() == [[1, 2, 3]]
    assert CompletionRequest.model_validate({"prompt": [[1, 2], [3]]}).prompts() == [[1, 2], [3]]
    for body, param in (({"n": 2}, "n"), ({"repetition_penalty": 1.1}, "repetition_penalty")):
        with pytest.raises(APIError) as bad:
            CompletionRequest.model_validate({"prompt": "x", **body})
        assert bad.value.status == 400 and bad.value.param == param and param in bad.value.message
    # the default value of a field we do not implement is no change: accepted
    CompletionRequest.model_validate({"prompt": "x", "n": 1, "repetition_penalty": 1.0, "best_of": 1})
    c = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "medusa": False,
        }
    )
    assert c.messages[0].text() == "ab" and c.include_usage() and c.medusa is False


def test_prometheus_exposition() -> None:
    m = Metrics('m"1')
    m.request("/v1/completions", 200)
    m.request("/v1/completions", 200)
    m.request("/v1/completions", 400)
    m.generation(medusa=True, prompt_tokens=5, completion_tokens=31, steps=12, accepted_per_depth=[10, 6, 2])
    m.generation(medusa=False, prompt_tokens=5, completion_tokens=8, steps=7)
    m.outcome("finished")
    lines = m.render().splitlines()
    assert 'medusa_trt_requests_total{model="m\\"1",endpoint="/v1/completions",status="200"} 2' in lines
    assert 'medusa_trt_requests_total{model="m\\"1",endpoint="/v1/completions",status="400"} 1' in lines
    assert 'medusa_trt_decoding_steps_total{model="m\\"1",medusa="true"} 12' in lines
    assert 'medusa_trt_accepted_draft_tokens_total{model="m\\"1",depth="2"} 6' in lines
    # (31 - 1)/12 = 2.5 tokens per step: in the le=2.5 bucket, not in le=2.0; cumulative to +Inf
    assert 'medusa_trt_tokens_per_step_bucket{model="m\\"1",medusa="true",le="2"} 0' in lines
    assert 'medusa_trt_tokens_per_step_bucket{model="m\\"1",medusa="true",le="2.5"} 1' in lines
    assert 'medusa_trt_tokens_per_step_bucket{model="m\\"1",medusa="true",le="+Inf"} 1' in lines
    assert 'medusa_trt_tokens_per_step_sum{model="m\\"1",medusa="true"} 2.5' in lines
    # every sample line belongs to a family declared with HELP and TYPE
    families = {ln.split()[2] for ln in lines if ln.startswith("# TYPE")}
    for ln in lines:
        if not ln.startswith("#"):
            name = ln.split("{")[0].split(" ")[0]
            assert name in families or name.rsplit("_", 1)[0] in families, ln
