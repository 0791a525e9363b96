"""The reference server's API surface against real clients on 127.0.0.1: the listening socket's
TCP options, log-probabilities and echo, refused fields, HEAD and the OpenAPI description."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.loopback import app_in_thread


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("serve-api") / "llama", seed=0)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, tiny_heads: Path) -> Iterator[Any]:
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.runtime import load_engine

    out = tmp_path_factory.mktemp("serve-api-ckpt") / "ckpt"
    convert_checkpoint(model_dir, out, medusa=tiny_heads, tp=1, progress=False)
    eng = load_engine(out, tree="mc_sim_7b_61")  # large and fixed: these random heads still accept a few drafts
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def url(engine: Any) -> Iterator[str]:
    from medusa_trt.serve import create_app

    with app_in_thread(create_app(engine, "tiny"), start_timeout_s=20) as base:
        yield base


def _accepted_socket(peer: tuple[str, int]) -> socket.socket:
    """The server side of the connection whose client end is ``peer`` (this process's own fds)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[:2] == peer:
                return s
        except OSError:
            pass
        s.close()
    raise AssertionError(f"no accepted socket for {peer}")


def test_accepted_connections_have_tcp_nodelay(url: str) -> None:
    # the server is ours (serve.server._bind's socket under uvicorn); the client end is plain http.client
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    try:
        for _ in range(2):  # a kept-alive connection: the case a delayed ACK would stall
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b'{"status":"ok"}'
        assert conn.sock is not None
        server_side = _accepted_socket(conn.sock.getsockname()[:2])
        with server_side:
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()


# --- log-probabilities, echo and prompt lists ------------------------------------------------------
PROMPT = "def main():"


@pytest.fixture(scope="module")
def hf_model(model_dir: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def _hf_logprobs(hf_model: Any, ids: list[int], temperature: float = 0.0) -> Any:
    """transformers' log_softmax [len(ids), V] (after the temperature, if any) for the token after each position."""
    import torch

    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].double()  # [T, V]
    return torch.log_softmax(logits / temperature if temperature > 0 else logits, -1)


def _complete(url: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_completion_logprobs_with_echo_equal_transformers(url: str, engine: Any, hf_model: Any) -> None:
    ids = list(engine.tokenizer.encode(PROMPT))
    body = {"prompt": [ids], "max_tokens": 12, "temperature": 0, "logprobs": 3, "echo": True, "ignore_eos": True}
    on = _complete(url, **body, return_token_ids=True)
    off = _complete(url, **body, medusa=False)
    assert on["usage"]["decoding_steps"] < off["usage"]["decoding_steps"]  # Medusa did accept drafts
    choice = on["choices"][0]
    lp = choice["logprobs"]
    n_out = on["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(ids) + n_out == len(lp["token_logprobs"]) == len(lp["text_offset"])
    all_ids = ids + choice["token_ids"]
    assert lp["tokens"] == [engine.tokenizer.decode([t]) for t in all_ids]
    assert choice["text"] == engine.tokenizer.decode(all_ids)
    want = _hf_logprobs(hf_model, all_ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # the first token has no context
    for i in range(1, len(all_ids)):
        assert lp["token_logprobs"][i] == pytest.approx(float(want[i - 1, all_ids[i]]), abs=1e-5)
        top = want[i - 1].topk(3)
        expect = {engine.tokenizer.decode([int(t)]): float(v) for t, v in zip(top.indices, top.values, strict=True)}
        got = lp["top_logprobs"][i]
        assert set(expect) <= set(got) and len(got) <= 4  # the top 3, and the chosen token if not among them
        for tok, v in expect.items():
            assert got[tok] == pytest.approx(v, abs=1e-5)
    offsets = [0]
    for t in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(t))
    assert lp["text_offset"] == offsets
    # Medusa on and off: the same tokens and the same numbers
    assert off["choices"][0]["logprobs"]["tokens"] == lp["tokens"]
    for a, b in zip(off["choices"][0]["logprobs"]["token_logprobs"][1:], lp["token_logprobs"][1:], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_sampled_logprobs_are_after_temperature(url: str, engine: Any, hf_model: Any) -> None:
    ids = list(engine.tokenizer.encode(PROMPT))
    body = {"prompt": [ids], "max_tokens": 16, "temperature": 0.7, "seed": 3, "logprobs": 2, "ignore_eos": True}
    on, off = _complete(url, **body, return_token_ids=True), _complete(url, **body, medusa=False)
    got_on, got_off = on["choices"][0]["logprobs"], off["choices"][0]["logprobs"]
    assert got_on["tokens"] == got_off["tokens"]  # exact acceptance: the seed gives the same tokens
    out = on["choices"][0]["token_ids"]
    assert [engine.tokenizer.decode([t]) for t in out] == got_on["tokens"]
    want = _hf_logprobs(hf_model, ids + out, temperature=0.7)
    for i, t in enumerate(out):
        expect = float(want[len(ids) - 1 + i, t])
        assert got_on["token_logprobs"][i] == pytest.approx(expect, abs=1e-5)
        assert got_off["token_logprobs"][i] == pytest.approx(expect, abs=1e-5)


def test_echo_with_max_tokens_zero_scores_the_prompt(url: str, engine: Any, hf_model: Any) -> None:
    ids = list(engine.tokenizer.encode(PROMPT))
    doc = _complete(url, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = doc["choices"][0]
    assert choice["text"] == PROMPT and doc["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]["token_logprobs"]
    want = _hf_logprobs(hf_model, ids)
    assert len(lp) == len(ids) and lp[0] is None
    assert lp[1:] == pytest.approx([float(want[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-5)
    r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 0}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_prompt_lists_give_one_choice_each(url: str, engine: Any) -> None:
    texts = ["def main():", "class Model:", "The quick"]
    one = [_complete(url, prompt=t, max_tokens=6, temperature=0)["choices"][0]["text"] for t in texts]
    doc = _complete(url, prompt=texts, max_tokens=6, temperature=0)
    assert [c["index"] for c in doc["choices"]] == [0, 1, 2]
    assert [c["text"] for c in doc["choices"]] == one
    ids = [engine.tokenizer.encode(t) for t in texts]
    assert doc["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    by_ids = _complete(url, prompt=ids, max_tokens=6, temperature=0)
    assert [c["text"] for c in by_ids["choices"]] == one
    r = httpx.post(f"{url}/v1/completions", json={"prompt": texts, "max_tokens": 2, "stream": True}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_chat_logprobs_in_openai_shape(url: str) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "logprobs": True, "top_logprobs": 2}, timeout=120)
    assert r.status_code == 200, r.text
    doc = r.json()
    content = doc["choices"][0]["logprobs"]["content"]
    assert len(content) == doc["usage"]["completion_tokens"] == 8  # one entry per token
    for c in content:
        assert c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2
        assert c["logprob"] == pytest.approx(c["top_logprobs"][0]["logprob"])  # greedy: the most likely token
        assert c["top_logprobs"][0]["logprob"] >= c["top_logprobs"][1]["logprob"]
    plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    assert plain["choices"][0]["logprobs"] is None
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "top_logprobs": 2}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


# --- say no instead of ignoring ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("completions", "response_format", {"type": "json_object"}),
        ("completions", "repetition_penalty", 1.2),
        ("completions", "n", 2),
        ("completions", "best_of", 3),
        ("completions", "suffix", "}"),
        ("completions", "presence_penalty", 0.5),
        ("completions", "logit_bias", {"5": 10}),
        ("completions", "min_p", 0.1),
        ("completions", "guided_json", {"type": "object"}),
        ("completions", "use_beam_search", True),
        ("chat", "response_format", {"type": "json_schema", "json_schema": {}}),
        ("chat", "tools", [{"type": "function", "function": {"name": "f"}}]),
        ("chat", "echo", True),
        ("chat", "frequency_penalty", 1.0),
        ("chat", "structured_outputs", {"regex": "a+"}),
    ],
)
def test_unimplemented_fields_are_refused_by_name(url: str, endpoint: str, field: str, value: Any) -> None:
    base: dict[str, Any] = (
        {"prompt": "x", "max_tokens": 2}
        if endpoint == "completions"
        else {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    )
    r = httpx.post(
        f"{url}/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}", json={**base, field: value}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"] and err["code"] == "unsupported_parameter"


def test_default_values_and_unknown_fields_are_accepted(url: str) -> None:
    body = {
        "prompt": "x",
        "max_tokens": 2,
        "n": 1,
        "repetition_penalty": 1.0,
        "response_format": {"type": "text"},
        "logit_bias": {},
        "user": "me",
        "not_an_api_field": 7,  # vLLM ignores unknown fields (and logs them)
    }
    assert _complete(url, **body)["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models"])
def test_head(url: str, path: str) -> None:
    got, head = httpx.get(f"{url}{path}"), httpx.head(f"{url}{path}")
    assert got.status_code == head.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]


def test_openapi_describes_real_responses(url: str, engine: Any) -> None:
    from jsonschema import Draft202012Validator

    spec = httpx.get(f"{url}/openapi.json").json()
    assert "422" not in json.dumps(spec["paths"])
    ids = engine.tokenizer.encode(PROMPT)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    samples = [
        ("get", "/health", "/health", None),
        ("head", "/health", "/health", None),
        ("get", "/metrics", "/metrics", None),
        ("head", "/v1/models", "/v1/models", None),
        ("get", "/version", "/version", None),
        ("get", "/v1/models", "/v1/models", None),
        ("get", "/v1/models/tiny", "/v1/models/{model_id}", None),
        ("get", "/v1/models/other", "/v1/models/{model_id}", None),
        ("post", "/v1/completions", "/v1/completions", {"prompt": [ids], "max_tokens": 3, "logprobs": 2, "echo": True}),
        ("post", "/v1/completions", "/v1/completions", {"prompt": "x", "max_tokens": 3, "stream": True}),
        ("post", "/v1/completions", "/v1/completions", {"prompt": "x", "max_tokens": 3, "return_token_ids": True}),
        ("post", "/v1/completions", "/v1/completions", {"prompt": "x", "temperature": "hot"}),
        ("post", "/v1/completions", "/v1/completions", {"prompt": "x", "repetition_penalty": 2}),
        ("post", "/v1/completions", "/v1/completions", {"prompt": "x", "model": "other"}),
        ("post", "/v1/chat/completions", "/v1/chat/completions", {**chat, "logprobs": True, "top_logprobs": 1}),
        ("post", "/v1/chat/completions", "/v1/chat/completions", {**chat, "stream": True}),
        ("post", "/v1/chat/completions", "/v1/chat/completions", {"messages": []}),
    ]
    seen = set()
    for method, path, template, body in samples:
        r = httpx.request(method.upper(), f"{url}{path}", json=body, timeout=120)
        described = spec["paths"][template][method]["responses"]
        assert str(r.status_code) in described, (method, path, r.status_code)
        ctype = r.headers["content-type"].split(";")[0]
        content = described[str(r.status_code)]["content"]
        assert ctype in content, (method, path, ctype)
        seen.add((template, r.status_code, ctype))
        if ctype == "application/json" and method != "head":
            schema = {**content[ctype]["schema"], "components": spec["components"]}
            errors = list(Draft202012Validator(schema).iter_errors(r.json()))
            assert not errors, (method, path, body, [e.message for e in errors])
    assert ("/v1/completions", 400, "application/json") in seen and ("/metrics", 200, "text/plain") in seen
    assert ("/v1/completions", 200, "text/event-stream") in seen


def test_continuous_usage_stats_in_every_chunk(url: str) -> None:
    """vLLM's stream_options.continuous_usage_stats (guidellm sends it): each chunk has the counts so far."""
    body = {
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    counts = [e["usage"]["completion_tokens"] for e in events if e["choices"]]
    assert counts == sorted(counts) and counts[0] >= 1
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 12 == counts[-1]


def test_streamed_logprobs_are_the_full_responses(url: str) -> None:
    for endpoint, body in (
        ("completions", {"prompt": PROMPT, "logprobs": 2}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}),
    ):
        body = {**body, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
        full = httpx.post(f"{url}/v1/{endpoint}", json=body, timeout=120).json()["choices"][0]["logprobs"]
        with httpx.stream("POST", f"{url}/v1/{endpoint}", json={**body, "stream": True}, timeout=120) as r:
            assert r.status_code == 200
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
        parts = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0]["logprobs"]]
        if endpoint == "chat/completions":
            assert [e for p in parts for e in p["content"]] == full["content"]
        else:
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                assert [x for p in parts for x in p[key]] == full[key], key
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "echo": True, "stream": True}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
