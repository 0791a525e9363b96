"""The distil stage: the base model's own greedy continuations of the prompts.

Locally on the reference runtime (at the checkpoint's tp, ``--distil-batch`` prompts per forward), or from any OpenAI-compatible server
serving the same model (``--teacher-url``): the prompt goes as token ids to ``/v1/completions``,
greedy, and the continuation's ids come back exactly when the server returns them
(``return_token_ids``, as vLLM >= 0.10.2 and ``medusa-trt run`` do); otherwise the text is
re-tokenized and accepted only if it has as many tokens as the server reports in ``usage``.

A continuation keeps the stop token the model ended on (Llama 3.1 has several: the one it produced),
so the heads learn to predict the end as the engine meets it. A server that returns token ids includes
it (vLLM's ``token_ids`` do); from text alone it is known only when ``finish_reason`` is "stop", the
usage counts one token more than the text, and ``stop_reason`` names it (vLLM: the id for a
``stop_token_ids`` hit, null for the tokenizer's EOS).

Results go to a journal (``sequences.jsonl``, one line per prompt, in prompt order) that is
appended and fsynced as they come, so an interrupted run continues after the last full line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medusa_trt import fsio
from medusa_trt.errors import InvalidInputError, ServerError
from medusa_trt.steps import Stage

JOURNAL = "sequences.jsonl"
# In the distil stage's key: bumped whenever what the stage writes changes, so an older journal is not
# reused (2: continuations keep the stop token they ended on).
DISTIL_VERSION = 2


@dataclass(frozen=True)
class Job:
    index: int
    prompt_ids: list[int]
    budget: int  # greedy tokens to ask for (0: the prompt is too long for --seq-len; skipped)


@dataclass
class Distilled:
    """Training sequences (prompt + continuation) and where each continuation starts."""

    sequences: list[list[int]]
    starts: list[int]


def distil_jobs(encoded: list[list[int]], *, gen_tokens: int, seq_len: int, max_pos: int) -> list[Job]:
    """Cut prompts to leave room for a continuation; the budget keeps prompt + continuation <= seq_len."""
    jobs = []
    for i, ids in enumerate(encoded):
        ids = ids[: max(1, seq_len - 4)]
        budget = max(0, min(gen_tokens, seq_len - len(ids), max_pos - len(ids)))
        jobs.append(Job(i, ids, budget if budget >= 3 else 0))
    return jobs


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: a line cut by a kill is dropped (and the file truncated to match)."""
    if not path.is_file():
        return []
    with fsio.open_input(path) as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, end)
        finally:
            os.close(fd)
    return [fsio.parse_json(line, path, "journal line") for line in data[:end].splitlines() if line.strip()]


Generate = Callable[[list[Job]], Iterator[list[int]]]  # continuations in job order


def run_distil(stage: Stage, jobs: list[Job], generate: Generate, advance: Callable[[], None]) -> Distilled:
    """Fill the journal for every job not yet in it, then mark the stage done."""
    stage.open()
    path = stage.dir / JOURNAL
    if not stage.is_done():
        done = _read_journal(path)
        for _ in done:
            advance()
        todo = [j for j in jobs[len(done) :] if j.budget]
        for j in jobs[len(done) :]:
            if not j.budget:
                advance()
        with fsio.open_append(path) as f:
            conts = generate(todo)
            pending = [j for j in jobs[len(done) :]]
            for job in pending:
                ids = next(conts)[: job.budget] if job.budget else []
                line = {"i": job.index, "start": len(job.prompt_ids), "ids": job.prompt_ids + ids}
                f.write((json.dumps(line) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
                if job.budget:
                    advance()
        stage.finish({"prompts": len(jobs)})
    rows = [r for r in _read_journal(path) if len(r["ids"]) > r["start"]]
    if not rows:
        raise InvalidInputError(
            "no usable training sequences (prompts too long for --seq-len?)",
            hint="Raise --seq-len or use shorter prompts.",
        )
    return Distilled([r["ids"] for r in rows], [int(r["start"]) for r in rows])


def local_generator(ckpt: Path, device: str, batch: int = 16) -> Generate:
    """Greedy continuations on the reference runtime at the checkpoint's tp, ``batch`` prompts per
    forward (plain decoding, the same tokens as one at a time); each batch's come out when it ends."""

    def gen(jobs: list[Job]) -> Iterator[list[int]]:
        if not jobs:
            return
        from medusa_trt.runtime.api import load_engine

        with load_engine(ckpt, device=device) as engine:
            for at in range(0, len(jobs), max(1, batch)):
                group = jobs[at : at + max(1, batch)]
                done = engine.greedy_batch([j.prompt_ids for j in group], [j.budget for j in group])
                for c in done:
                    yield c.token_ids + ([] if c.stop_token is None else [c.stop_token])

    return gen


def teacher_generator(url: str, tokenizer: Any, *, api_key: str | None, concurrency: int) -> Generate:
    """Greedy continuations from an OpenAI-compatible server, ``concurrency`` requests in flight."""

    def gen(jobs: list[Job]) -> Iterator[list[int]]:
        if not jobs:
            return
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        base = url.rstrip("/").removesuffix("/v1")
        with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
            model = _served_model(client, base)
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                futures = [pool.submit(_complete, client, model, job, tokenizer) for job in jobs]
                for fut in futures:  # in order: the journal stays in prompt order
                    yield fut.result()

    return gen


def _served_model(client: Any, base: str) -> str:
    import httpx

    try:
        r = client.get("/v1/models")
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise ServerError(
            f"teacher {base}: cannot list models ({e.__class__.__name__}: {e})",
            hint="Check --teacher-url (the server's base URL) and --teacher-api-key.",
        ) from e


def _complete(client: Any, model: str, job: Job, tokenizer: Any) -> list[int]:
    import httpx

    body = {
        "model": model,
        "prompt": job.prompt_ids,
        "max_tokens": job.budget,
        "temperature": 0.0,
        "return_token_ids": True,
    }
    try:
        r = client.post("/v1/completions", json=body)
        r.raise_for_status()
        doc = r.json()
        choice = doc["choices"][0]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise ServerError(
            f"teacher request for prompt {job.index} failed ({e.__class__.__name__}: {e})",
            hint="Check that the teacher serves the same model and accepts token-id prompts.",
        ) from e
    if isinstance(choice.get("token_ids"), list):
        ids = [int(t) for t in choice["token_ids"]]
        if any(t < 0 for t in ids):
            raise ServerError(f"teacher: prompt {job.index} came back with a negative token id")
        return ids
    ids = [int(t) for t in tokenizer.encode(choice.get("text", ""), add_special_tokens=False)]
    reported = (doc.get("usage") or {}).get("completion_tokens")
    # a stop token the server counted but did not print is the one allowed difference
    if reported is not None and int(reported) not in (len(ids), len(ids) + 1):
        raise ServerError(
            f"teacher: prompt {job.index}'s continuation re-tokenizes to {len(ids)} tokens, the server "
            f"generated {reported}",
            hint="Use a server that returns token ids (return_token_ids), or distil locally.",
        )
    if reported is not None and int(reported) == len(ids) + 1 and choice.get("finish_reason") == "stop":
        stop = _stop_id(choice, tokenizer)
        if stop is not None:
            ids.append(stop)
    return ids


def _stop_id(choice: dict[str, Any], tokenizer: Any) -> int | None:
    """The stop token a text-only answer ended on, where the server says which (vLLM's ``stop_reason``:
    the id for a ``stop_token_ids`` hit, null for the tokenizer's EOS); None when it cannot be known."""
    if "stop_reason" not in choice:
        return None
    reason = choice["stop_reason"]
    if reason is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        return int(eos) if isinstance(eos, int) else None
    return reason if isinstance(reason, int) and not isinstance(reason, bool) and reason >= 0 else None
