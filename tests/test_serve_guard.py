"""The reference server's guards and the benchmark dialect, over real HTTP on 127.0.0.1 (in-process uvicorn):
API key, body limit (413 before parsing), the cheap context check, tokenization off the event loop,
ignore_eos / min_tokens, and request validation (top_k, chat content)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.loopback import app_in_thread

KEY = "sekret-key"
LIMIT = 64 * 1024
PROMPT = "def main():"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_heads: Path) -> Path:
    from tests.helpers.checkpoints import make_checkpoint

    return make_checkpoint(tiny_llama, tmp_path_factory.mktemp("guard") / "ck", heads=tiny_heads)


@pytest.fixture(scope="module")
def greedy(ckpt: Path) -> list[int]:
    """The plain greedy continuation of PROMPT under the model's own EOS (what the server must match)."""
    from medusa_trt.runtime import SamplingParams, load_engine

    with load_engine(ckpt) as eng:
        ids = eng.tokenizer.encode(PROMPT)
        return [t for c in eng.generate(ids, SamplingParams(max_tokens=12), medusa=False) for t in c.token_ids]


@pytest.fixture(scope="module")
def served(ckpt: Path, greedy: list[int]) -> Iterator[tuple[str, Any]]:
    """The server with the first greedy token declared as EOS (generation_config.json), so that EOS
    handling is exercised on every request."""
    from medusa_trt.runtime import load_engine
    from medusa_trt.serve import ServeGuard, create_app

    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": greedy[0]}))
    engine = load_engine(ckpt)
    app = create_app(engine, "tiny", ServeGuard(api_key=KEY, max_request_bytes=LIMIT))
    try:
        with app_in_thread(app) as url:
            yield url, engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def url(served: tuple[str, Any]) -> str:
    return served[0]


AUTH = {"Authorization": f"Bearer {KEY}"}


def post(url: str, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=kw.pop("headers", AUTH), timeout=60, **kw)


def test_api_key_guards_v1_only(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = post(url, "/v1/completions", body, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"
    assert post(url, "/v1/completions", body).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200  # probes and scrapers need no key
    assert 'status="401"' in httpx.get(f"{url}/metrics").text  # the refusals are counted


def test_exposure_warning_only_without_key_off_loopback() -> None:
    from medusa_trt.serve.guard import exposure_warning

    assert exposure_warning("0.0.0.0", None) and "MEDUSA_TRT_API_KEY" in str(exposure_warning("10.1.2.3", ""))
    assert exposure_warning("0.0.0.0", "k") is None
    assert all(exposure_warning(h, None) is None for h in ("127.0.0.1", "::1", "localhost", "127.0.0.5"))


def test_body_over_the_limit_is_413_unread(url: str) -> None:
    big = {"prompt": "x" * (LIMIT + 1), "max_tokens": 1}
    r = post(url, "/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(LIMIT // 1024 + 1):
            yield b"y" * 1024
        yield b'", "max_tokens": 1}'

    r = httpx.post(f"{url}/v1/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    # just under the limit it is parsed: the prompt is then too long for the 256-token context
    r = post(url, "/v1/completions", {"prompt": "z" * (LIMIT - 100), "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_over_long_prompt_refused_before_tokenizing(served: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    url, engine = served
    calls: list[int] = []
    real = engine.tokenizer.encode
    monkeypatch.setattr(engine.tokenizer, "encode", lambda t, **kw: calls.append(len(t)) or real(t, **kw))
    r = post(url, "/v1/completions", {"prompt": "q" * 30000, "max_tokens": 1})
    assert r.status_code == 400 and "at least" in r.json()["error"]["message"] and calls == []
    r = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "q" * 30000}], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_tokenizing_runs_off_the_event_loop(served: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt whose tokenizing is held up does not stop /health from answering meanwhile."""
    url, engine = served
    real = engine.tokenizer.encode
    tokenizing, release = threading.Event(), threading.Event()

    def held(text: str, **kw: Any) -> Any:
        if "SLOW" in text:
            tokenizing.set()
            release.wait(120)  # until /health has answered (a blocked event loop would never let it)
        return real(text, **kw)

    monkeypatch.setattr(engine.tokenizer, "encode", held)
    done: list[int] = []
    t = threading.Thread(
        target=lambda: done.append(post(url, "/v1/completions", {"prompt": "SLOW", "max_tokens": 1}).status_code)
    )
    t.start()
    try:
        assert tokenizing.wait(60)
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200
        assert not done and not release.is_set()  # answered while the tokenizer was still busy
    finally:
        release.set()
    t.join(60)
    assert done == [200]


@pytest.mark.parametrize("medusa", [True, False])
def test_ignore_eos_and_min_tokens(url: str, greedy: list[int], medusa: bool) -> None:
    """EOS here is the first greedy token: it stops at once; ignore_eos runs to max_tokens through
    every EOS; min_tokens emits the EOS tokens before the minimum and stops at the next one."""
    eos = greedy[0]
    base = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0, "medusa": medusa}
    r = post(url, "/v1/completions", base).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 1
    r = post(url, "/v1/completions", {**base, "ignore_eos": True}).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 12
    for m in (1, 3):
        r = post(url, "/v1/completions", {**base, "min_tokens": m}).json()
        later = [k for k in range(m, 12) if greedy[k] == eos]
        assert r["usage"]["completion_tokens"] == (later[0] + 1 if later else 12), m
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": True, "medusa": medusa}
    r = post(url, "/v1/chat/completions", chat).json()
    assert r["usage"]["completion_tokens"] == 5 and r["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": PROMPT, "top_k": -2}, "top_k"),
        ("/v1/completions", {"prompt": PROMPT, "min_tokens": -1}, "min_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages.0"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages.0"),
    ],
)
def test_invalid_fields_are_400_naming_them(url: str, path: str, body: dict[str, Any], param: str) -> None:
    r = post(url, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param), err


@pytest.mark.parametrize(
    "flags",
    [
        ["--max-request-mb", "0"],
        ["--step-timeout", "-1"],
        ["--first-step-timeout", "-5"],
        ["--prompt", "x", "--step-timeout", "-1"],
    ],
)
def test_bad_server_flags_are_usage_errors(ckpt: Path, flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from medusa_trt.cli import run

    assert run(["run", str(ckpt), *flags]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and flags[-2] in err  # the flag is named
