"""The reference server in-process (uvicorn on a thread, real HTTP on 127.0.0.1) over a real tiny engine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.loopback import app_in_thread

PROMPT = "def main():"
LONG = 2048  # the test model's context


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_heads: Path) -> Iterator[Any]:
    from medusa_trt.checkpoint.convert import convert_checkpoint
    from medusa_trt.runtime import load_engine
    from tests.helpers.models import make_tiny_llama

    base = tmp_path_factory.mktemp("serve-app")
    # a long context, so that a generation outlives a client's disconnect even on a fast machine
    model = make_tiny_llama(base / "llama", seed=0, max_position_embeddings=LONG)
    out = base / "ckpt"
    convert_checkpoint(model, out, medusa=tiny_heads, tp=1, progress=False)
    eng = load_engine(out, tree="mc_sim_7b_61")  # large and fixed: these random heads still accept a few drafts
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine: Any) -> Iterator[tuple[str, Any]]:
    from medusa_trt.serve import create_app

    app = create_app(engine, "tiny", threads=1)  # as `medusa-trt run` on 2 cores (serve.worker.engine_threads)
    with app_in_thread(app, start_timeout_s=20) as url:
        yield url, app


@pytest.fixture(scope="module")
def url(server: tuple[str, Any]) -> str:
    return server[0]


def direct(engine: Any, ids: list[int], max_tokens: int, medusa: bool = True) -> tuple[str, Any]:
    """The one-shot greedy output of the runtime itself (what the server must reproduce)."""
    from medusa_trt.runtime import SamplingParams

    gen = engine.generate(ids, SamplingParams(max_tokens=max_tokens), medusa=medusa)
    toks = [t for c in gen for t in c.token_ids]
    return engine.tokenizer.decode(toks, skip_special_tokens=True), gen.stats


def sse(client: httpx.Client, url: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request; the decoded data events, '[DONE]' kept as a string."""
    events: list[Any] = []
    with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_models_version(url: str, engine: Any) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{url}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == engine.max_seq_len
    assert models["data"][0]["medusa"]["num_heads"] == engine.num_medusa_heads
    assert httpx.get(f"{url}/v1/models/tiny").json()["id"] == "tiny"
    assert httpx.get(f"{url}/v1/models/other").status_code == 404
    assert httpx.get(f"{url}/version").json()["version"]


def test_completion_matches_runtime_greedy(url: str, engine: Any) -> None:
    ids = engine.tokenizer.encode(PROMPT)
    want, stats = direct(engine, ids, 12)
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "text_completion" and doc["model"] == "tiny"
    assert doc["choices"][0]["text"] == want
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": stats.completion_tokens,
        "total_tokens": len(ids) + stats.completion_tokens,
        "decoding_steps": stats.num_steps,
    }
    # token ids as the prompt give the same answer
    r2 = httpx.post(f"{url}/v1/completions", json={"prompt": ids, "max_tokens": 12, "temperature": 0}, timeout=60)
    assert r2.json()["choices"][0]["text"] == want


def test_medusa_off_same_text_more_steps(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    on = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    off = httpx.post(f"{url}/v1/completions", json={**body, "medusa": False}, timeout=60).json()
    assert on["choices"][0]["text"] == off["choices"][0]["text"]
    # plain decoding: the prefill gives the first token, then one token per step
    assert off["usage"]["decoding_steps"] == off["usage"]["completion_tokens"] - 1
    assert on["usage"]["decoding_steps"] < off["usage"]["decoding_steps"]  # the heads accept some drafts


def test_streaming_completion_with_usage(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    full = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    with httpx.Client(timeout=60) as c:
        events = sse(c, f"{url}/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == full["usage"]
    chunks = events[:-2]
    assert all(ch["object"] == "text_completion" and ch["usage"] is None for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == full["choices"][0]["text"]
    assert [ch["choices"][0]["finish_reason"] for ch in chunks][-1] == "length"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    # one chunk per decoding step at most (the prefill's token included, empty steps skipped)
    assert len(chunks) - 1 <= full["usage"]["decoding_steps"] + 1
    # without include_usage: no usage chunk, no usage key
    with httpx.Client(timeout=60) as c:
        plain = sse(c, f"{url}/v1/completions", {**body, "stream": True})
    assert plain[-1] == "[DONE]" and all("usage" not in e for e in plain[:-1])


def test_stream_frames_are_json_dumps_bytes(url: str) -> None:
    """Text frames are built from a template, not by json.dumps per chunk: every event must still be the
    exact bytes json.dumps gives for its document (field order, spacing, escapes, non-ASCII as is), with
    continuous_usage_stats too (the usage so far in every chunk, its counts rising)."""
    bodies = {
        "/v1/completions": {"prompt": 'say "\\ é \n"', "max_tokens": 24, "temperature": 0},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "é"}], "max_tokens": 24, "temperature": 0},
    }
    for path, body in bodies.items():
        for options in (
            {},
            {"stream_options": {"include_usage": True}},
            {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        ):
            with (
                httpx.Client(timeout=60) as c,
                c.stream("POST", f"{url}{path}", json={**body, **options, "stream": True}) as r,
            ):
                data = [ln[len("data: ") :] for ln in r.iter_lines() if ln.startswith("data: ")]
            docs = [json.loads(d) for d in data[:-1]]
            assert data[-1] == "[DONE]" and len(docs) >= 3
            assert [json.dumps(d, ensure_ascii=False) for d in docs] == data[:-1]
            assert len({(d["id"], d["created"], d["model"]) for d in docs}) == 1
            if "continuous_usage_stats" in options.get("stream_options", {}):
                done = [d["usage"]["completion_tokens"] for d in docs if d["choices"]]
                assert all(d["usage"] for d in docs) and done == sorted(done) and done[-1] > done[0]


def test_chat_stream_and_not(url: str, engine: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    want, _ = direct(engine, ids, 10)
    body = {"model": "tiny", "messages": messages, "max_completion_tokens": 10, "temperature": 0}
    doc = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert doc["usage"]["prompt_tokens"] == len(ids)
    with httpx.Client(timeout=60) as c:
        events = sse(
            c, f"{url}/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
        )
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1] == "[DONE]" and events[-2]["usage"] == doc["usage"]
    chunks = events[1:-2]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_text(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    full = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    stop = full[6:8]  # a stop string taken from the middle of the greedy text
    assert stop
    cut = full[: full.index(stop)]
    doc = httpx.post(f"{url}/v1/completions", json={**body, "stop": [stop, "never-seen"]}, timeout=60).json()
    assert doc["choices"][0] == {"index": 0, "text": cut, "logprobs": None, "finish_reason": "stop"}
    assert doc["usage"]["completion_tokens"] < 24
    with httpx.Client(timeout=60) as c:
        events = sse(c, f"{url}/v1/completions", {**body, "stop": stop, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == cut
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
        ({"prompt": "x", "n": 2}, 400, "n"),
        ({"prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": LONG}, 400, "max_tokens"),
        ({"prompt": "x " * LONG}, 400, "prompt"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": [999_999]}, 400, "prompt"),
        ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),  # vLLM's default max_logprobs is 20
        ({"prompt": "x", "stop": [""]}, 400, "stop"),
        ({"max_tokens": 3}, 400, "prompt"),
        ({"prompt": "x", "top_k": -2}, 400, "top_k"),  # -1 and 0 mean off, as in vLLM
    ],
)
def test_bad_completion_requests(url: str, body: dict[str, Any], status: int, param: str) -> None:
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param


def test_bad_requests_other(url: str) -> None:
    r = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "tools": [{}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    )
    assert r.status_code == 400
    for value in (b"NaN", b"Infinity"):  # Python's JSON extension; httpx's json= refuses to send it
        r = httpx.post(
            f"{url}/v1/completions",
            content=b'{"prompt": "x", "temperature": ' + value + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text
    for msg in ({"role": "user"}, {"role": "user", "content": None}):
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [msg]})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages.0"), r.text
    r = httpx.get(f"{url}/v1/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 10_000, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # and it keeps serving
    ok = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_while_generating_and_disconnect(
    server: tuple[str, Any], engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, app = server
    before = _metric(httpx.get(f"{url}/metrics").text, "medusa_trt_generations_total", outcome="cancelled")
    long_body = {"prompt": PROMPT, "max_tokens": LONG - 16, "temperature": 0, "stream": True}
    first: list[str] = []
    got_chunk, checked = threading.Event(), threading.Event()
    real = engine.generate

    class Held:
        """The generation, held after its first chunk until /health has been asked (it is under way)."""

        def __init__(self, gen: Any) -> None:
            self.gen, self.chunks = gen, 0

        def __iter__(self) -> Held:
            return self

        def __next__(self) -> Any:
            if self.chunks == 1:
                checked.wait(60)
            self.chunks += 1
            return next(self.gen)

        def __getattr__(self, name: str) -> Any:  # close(), stats
            return getattr(self.gen, name)

    monkeypatch.setattr(engine, "generate", lambda *a, **kw: Held(real(*a, **kw)))

    def stream_then_drop() -> None:
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{url}/v1/completions", json=long_body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    first.append(line)
                    got_chunk.set()
                    checked.wait(60)
                    return  # leaving the block closes the connection mid-stream

    t = threading.Thread(target=stream_then_drop)
    t.start()
    try:
        assert got_chunk.wait(60)
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200
        assert app.state.metrics.running == 1  # /health answered while the generation ran
    finally:
        checked.set()
    t.join(60)
    # the dropped stream's generation is cancelled (not run to its end) and the next request runs
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = _metric(httpx.get(f"{url}/metrics").text, "medusa_trt_generations_total", outcome="cancelled")
        if now > before:
            break
        time.sleep(0.1)
    assert now == before + 1, httpx.get(f"{url}/metrics").text
    ok = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "temperature": 0}, timeout=30)
    assert ok.status_code == 200


def test_the_engine_thread_runs_with_its_own_torch_threads(server: tuple[str, Any]) -> None:
    worker = server[1].state.worker
    assert worker.started.wait(30)
    assert worker.torch_threads == 1


def test_concurrent_requests_queue(url: str, engine: Any) -> None:
    bodies = [{"prompt": p, "max_tokens": 8, "temperature": 0} for p in ("def main():", "The quick", "class Model:")]
    with httpx.Client(timeout=60) as c:
        want = [c.post(f"{url}/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]
    results: list[str] = [""] * 3

    def call(i: int) -> None:
        results[i] = httpx.post(f"{url}/v1/completions", json=bodies[i], timeout=60).json()["choices"][0]["text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == want


def test_metrics_exposition(url: str) -> None:
    httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0}, timeout=30)
    httpx.post(f"{url}/v1/completions", json={"prompt": "x", "n": 3})
    r = httpx.get(f"{url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _metric(text, "medusa_trt_requests_total", endpoint="/v1/completions", status="200") >= 1
    assert _metric(text, "medusa_trt_requests_total", endpoint="/v1/completions", status="400") >= 1
    assert _metric(text, "medusa_trt_tokens_total", kind="completion") >= 4
    assert _metric(text, "medusa_trt_decoding_steps_total", medusa="true") >= 1
    assert _metric(text, "medusa_trt_tokens_per_step_count", medusa="true") >= 1
    assert "# TYPE medusa_trt_tokens_per_step histogram" in text
    inf = _metric(text, "medusa_trt_tokens_per_step_bucket", medusa="true", le="+Inf")
    assert inf == _metric(text, "medusa_trt_tokens_per_step_count", medusa="true")


def test_seeded_sampling_repeats(url: str, engine: Any) -> None:
    body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 7}
    a = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    b = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"] == b["usage"]  # the same seed takes the same Medusa steps
    used, steps = a["usage"]["completion_tokens"], a["usage"]["decoding_steps"]
    assert used == 10 if a["choices"][0]["finish_reason"] == "length" else 1 <= used <= 10
    # Prefill emits the first token; each decoding step its bonus token and at most the deepest path's drafts.
    depth = max(len(path) for path in engine.tree)
    assert -(-(used - 1) // (depth + 1)) <= steps <= used - 1


def test_seeded_sampling_is_per_request_and_lossless(url: str) -> None:
    """Exact acceptance: a seed gives the same text with Medusa on or off, and concurrent requests
    (queued behind each other in any order) each get the text they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    def text(seed: int, medusa: bool = True) -> str:
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": seed, "medusa": medusa}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["text"])

    alone = {s: text(s) for s in range(4)}
    assert all(text(s, medusa=False) == alone[s] for s in range(2))
    assert len(set(alone.values())) > 1
    with ThreadPoolExecutor(4) as pool:
        together = dict(zip(range(4), pool.map(text, range(4)), strict=True))
    assert together == alone


def test_medusa_acceptance_field(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0.8, "medusa_acceptance": "typical"}
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    bad = httpx.post(f"{url}/v1/completions", json={**body, "medusa_acceptance": "fast"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "medusa_acceptance"


def test_metrics_expose_the_chosen_tree_size(url: str, engine: Any) -> None:
    def steps() -> tuple[float, float, str]:
        text = httpx.get(f"{url}/metrics").text
        return _metric(text, "medusa_trt_tree_steps_total"), _metric(text, "medusa_trt_decoding_steps_total"), text

    tree0, all0, _ = steps()
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    usage = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["usage"]
    tree1, all1, text = steps()
    assert tree1 - tree0 == all1 - all0 == usage["decoding_steps"] > 0
    assert "# TYPE medusa_trt_tree_nodes gauge" in text
    assert _metric(text, "medusa_trt_tree_nodes", regime="greedy") == engine.tree_nodes == 61  # explicit: not adapted
