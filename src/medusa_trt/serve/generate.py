"""From an OpenAI request to a queued engine job and back: validation, SSE streaming, usage.

Usage counts what the client got: completion tokens up to the end (or the stop string), and
`decoding_steps` beside them (verification forwards, prefill excluded) so a client can compute
tokens per step. Each SSE chunk carries the text of one decoding step.

Log-probabilities (``logprobs``; with ``echo`` also the prompt's) are vLLM's ``processed_logprobs``: from
the distribution each token was drawn from (the target model's, after the request's temperature, top-k
and top-p; at temperature 0 the model's own). A token outside top-k/top-p shows -9999.0, as vLLM clamps
-inf. Prompt tokens use the model's own distribution, the first has none. Medusa does not change them:
the verification forward gives the same logits a plain step would.

``return_token_ids`` (non-streaming) returns the prompt's ids and the completion's, the stop token that
ended it included (as vLLM's ``CompletionOutput.token_ids``), so ``token_ids`` has
``usage.completion_tokens`` ids; the text leaves the stop token out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from medusa_trt.errors import EngineFailedError, InvalidInputError, MedusaTrtError
from medusa_trt.runtime.text import TextStream
from medusa_trt.runtime.types import GenerationStats, SamplingParams, TokenLogprob
from medusa_trt.serve.chat import (
    START_TIMEOUT_S,
    TEMPLATE_TIMEOUT_S,
    ChatPrompt,
    PromptTooLong,
    TemplateBroken,
    TemplateError,
)
from medusa_trt.serve.metrics import Metrics
from medusa_trt.serve.protocol import APIError, ChatCompletionRequest, CommonRequest, CompletionRequest, unsupported
from medusa_trt.serve.worker import EngineWorker, Finished, Job

if TYPE_CHECKING:
    from medusa_trt.serve.served import ServedEngine

_POLL_S = 0.25  # how often a waiting request checks that its client is still there
logger = logging.getLogger(__name__)
TOKENIZE_BUDGET_S = 60.0  # tokenizing the largest admitted prompt takes seconds; a minute means stuck


class ClientGone(Exception):
    """The client disconnected while its request waited or ran."""


@dataclass
class Outcome:
    """What one request produced so far."""

    prompt_tokens: int
    medusa: bool
    completion_tokens: int = 0
    chunks: int = 0
    finish_reason: str | None = None
    stats: GenerationStats | None = None
    deltas: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # every id the engine emitted, then its stop token
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per emitted token (stop token excluded)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)

    def steps(self) -> int:
        # The engine's count when it ran to the end. Cut short, one step per chunk received: the
        # first chunk is the prefill's token, which is no decoding step.
        if self.stats is not None:
            return int(self.stats.num_steps)
        return max(self.chunks - 1, 0)

    def usage(self) -> dict[str, int]:
        # The engine counts a stop token it did not emit (as OpenAI counts EOS); cut short, we count
        # the tokens the client received.
        done = self.stats.completion_tokens if self.stats is not None else self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": int(done),
            "total_tokens": self.prompt_tokens + int(done),
            "decoding_steps": self.steps(),
        }


def _total_usage(outs: list[Outcome]) -> dict[str, int]:
    usages = [o.usage() for o in outs]
    return {k: sum(u[k] for u in usages) for k in usages[0]}


class RequestHandler:
    """Turns requests into jobs on the worker and jobs into OpenAI responses."""

    def __init__(
        self,
        engine: ServedEngine,
        worker: EngineWorker,
        metrics: Metrics,
        model_name: str,
        template_timeout_s: float = TEMPLATE_TIMEOUT_S,
    ) -> None:
        self.engine, self.worker, self.metrics, self.model_name = engine, worker, metrics, model_name
        self.tokenizer = engine.tokenizer
        # Tokenizing a long prompt takes seconds: off the event loop, so /health and streams go on.
        # One thread: the tokenizer is shared, and a queue of prompts cannot starve the loop.
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medusa-trt-tokenize")
        self._max_token_chars = _longest_token(self.tokenizer)
        # the chat template renders in a child process under a time budget (serve.chat)
        self.chat_prompt = (
            ChatPrompt(self.tokenizer, template_timeout_s, max_chars=self._max_chars())
            if getattr(self.tokenizer, "chat_template", None)
            else None
        )
        # one prompt's worst case: the renderer restarting, the template's budget, then tokenizing
        self._budget_s = START_TIMEOUT_S + template_timeout_s + TOKENIZE_BUDGET_S
        self._busy_since: float | None = None

    def close(self) -> None:
        self._tokenize.shutdown(wait=False, cancel_futures=True)
        if self.chat_prompt is not None:
            self.chat_prompt.close()

    def stuck(self) -> str | None:
        """Why the prompt worker counts as stuck (busy on one prompt past every budget), else None."""
        since = self._busy_since
        if since is None or time.monotonic() - since <= self._budget_s:
            return None
        return f"the prompt worker has been busy on one request for over {self._budget_s:g} s"

    # --- entry points ----------------------------------------------------------------------------
    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        prompts = body.prompts()
        if body.max_tokens == 0 and not body.echo:
            raise APIError(
                400, "max_tokens: 0 needs echo: true (the prompt's log-probabilities alone)", param="max_tokens"
            )
        if body.stream and len(prompts) > 1:
            raise unsupported("prompt", "several prompts need stream: false (one choice per prompt)")
        if body.stream and body.echo:
            raise unsupported("echo", "not supported with stream: true")
        ids = [await self._off_loop(self._prompt_ids, p) for p in prompts]
        if body.stream:
            return await self._serve(body, request, ids[0], chat=False)
        return await self._serve_all(body, request, prompts, ids)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        ids = await self._off_loop(self._chat_ids, body)
        return await self._serve(body, request, ids, chat=True)

    async def _off_loop(self, fn: Any, arg: Any) -> list[int]:
        return list(await asyncio.get_running_loop().run_in_executor(self._tokenize, self._timed, fn, arg))

    def _timed(self, fn: Any, arg: Any) -> list[int]:
        self._busy_since = time.monotonic()
        try:
            return list(fn(arg))
        finally:
            self._busy_since = None

    def _max_chars(self) -> int:
        """The longest text that can still fit the context (the bound `_check_chars` applies)."""
        return min(int(self.engine.max_seq_len) * self._max_token_chars, 1 << 26)

    def _check_chars(self, n_chars: int, param: str) -> None:
        """Refuse, before tokenizing, a text that cannot fit: no token covers more than the vocabulary's
        longest token string, so ``n_chars / longest`` tokens is a lower bound."""
        limit = int(self.engine.max_seq_len)
        at_least = -(-n_chars // self._max_token_chars)
        if at_least >= limit:
            raise APIError(
                400,
                f"the prompt has {n_chars} characters, so at least {at_least} tokens; this model's maximum "
                f"context length is {limit} tokens",
                param=param,
                code="context_length_exceeded",
            )

    # --- prompts ---------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            self._check_chars(len(prompt), "prompt")
            return list(self.tokenizer.encode(prompt))
        vocab = len(self.tokenizer)
        if any(not 0 <= int(t) < vocab for t in prompt):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        return [int(t) for t in prompt]

    def _chat_ids(self, body: ChatCompletionRequest) -> list[int]:
        if self.chat_prompt is None:
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        # everything that reaches the template counts (the roles are bounded by the request model)
        self._check_chars(sum(len(m["role"]) + len(m["content"]) for m in messages), "messages")
        try:
            text = self.chat_prompt.render([self.chat_prompt.mark(m) for m in messages])
            self._check_chars(len(text), "messages")
            return self.chat_prompt.encode(text)  # the template writes the BOS itself
        except PromptTooLong as e:
            self._check_chars(e.characters, "messages")  # the usual context_length_exceeded, if it applies
            raise APIError(
                400, f"the rendered chat has {e.characters} characters, more than this server renders", param="messages"
            ) from e
        except TemplateError as e:  # a template that rejects the roles or their order
            raise APIError(400, str(e), param="messages") from e
        except TemplateBroken as e:  # the model's template, not the request, is at fault
            raise APIError(500, str(e), type="server_error", code="chat_template_failed") from e

    def _params(self, body: CommonRequest, n_prompt: int) -> SamplingParams:
        limit, max_tokens = int(self.engine.max_seq_len), body.limit()
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if n_prompt >= limit:
            raise APIError(
                400,
                f"the prompt is {n_prompt} tokens; this model's maximum context length is "
                f"{limit} tokens (prompt + completion)",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = limit - n_prompt
        elif n_prompt + max_tokens > limit:
            raise APIError(
                400,
                f"this model's maximum context length is {limit} tokens; the prompt is "
                f"{n_prompt} and max_tokens asks for {max_tokens} more",
                param=body.param_of("max_tokens"),
                code="context_length_exceeded",
            )
        return body.sampling(max_tokens)

    # --- the flow ------------------------------------------------------------------------------
    async def _start(self, body: CommonRequest, request: Request, ids: list[int]) -> tuple[Job, Outcome, Any]:
        """Queue the job and wait for its first event; raises ClientGone if the client left meanwhile."""
        job = Job(ids, self._params(body, len(ids)), body.medusa, asyncio.get_running_loop())
        self.worker.submit(job)
        out = Outcome(prompt_tokens=len(ids), medusa=body.medusa)
        first = await _next(job, request)
        if isinstance(first, Finished):
            _raise(_error_of(first))
            if first.cancelled:  # dropped from the queue: the server is shutting down
                raise APIError(503, "the server is shutting down", type="server_error")
        return job, out, first

    async def _run(self, body: CommonRequest, request: Request, ids: list[int]) -> tuple[Outcome, str]:
        """One prompt to the end: its outcome and text. Raises ClientGone."""
        job, out, first = await self._start(body, request, ids)
        text = TextStream(self.tokenizer, body.stop_list())
        try:
            deltas = [d async for d in self.steps(job, request, out, text, first)]
        finally:
            job.cancel()
        self.record(out)
        return out, "".join(deltas)

    async def _serve(self, body: CommonRequest, request: Request, ids: list[int], *, chat: bool) -> Response:
        """One prompt: a stream, or a response with one choice."""
        if not body.stream:
            return await self._serve_all(body, request, [""], [ids], chat=chat)
        try:
            job, out, first = await self._start(body, request, ids)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; frees the queue slot
        sse = _SSE(self, body, chat, job, request, out, TextStream(self.tokenizer, body.stop_list()), first)
        return _JobStream(sse.frames(), job)

    async def _serve_all(
        self,
        body: CommonRequest,
        request: Request,
        prompts: list[str | list[int]],
        ids: list[list[int]],
        *,
        chat: bool = False,
    ) -> Response:
        """Each prompt in turn, one choice each (``index`` in order), usage summed."""
        outs, choices = [], []
        for i, (prompt, p_ids) in enumerate(zip(prompts, ids, strict=True)):
            try:
                out, content = await self._run(body, request, p_ids)
            except ClientGone:
                return Response(status_code=499)
            outs.append(out)
            choices.append(self._choice(body, chat, i, out, content, prompt, p_ids))
        head = {
            "id": _new_id(chat),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }
        return JSONResponse({**head, "choices": choices, "usage": _total_usage(outs)})

    async def steps(self, job: Job, request: Request, out: Outcome, text: TextStream, event: Any) -> AsyncIterator[str]:
        """Yields the text of each decoding step, then any held-back tail; fills ``out`` as it goes.

        Raises APIError if the engine failed, ClientGone if the client left.
        """
        while not isinstance(event, Finished):
            out.chunks += 1
            out.completion_tokens += len(event.token_ids)
            out.token_ids.extend(event.token_ids)
            out.logprobs.extend(event.logprobs or ())
            out.prompt_logprobs.extend(event.prompt_logprobs or ())
            delta = text.push(event.token_ids)
            if text.stopped:  # a stop string: cut here, the engine stops after the step in flight
                out.finish_reason = "stop"
                job.cancel()
                yield delta
                return
            if event.stop_token is not None:  # counted by the engine, never printed
                out.token_ids.append(event.stop_token)
            out.finish_reason = event.finish_reason
            yield delta
            event = await _next(job, request)
        _raise(_error_of(event))
        out.stats = event.stats
        if out.finish_reason is None:
            out.finish_reason = "abort" if event.cancelled else "length"
        if tail := text.finish():
            yield tail

    def record(self, out: Outcome) -> None:
        usage = out.usage()
        stats = out.stats
        self.metrics.generation(
            medusa=out.medusa,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=usage["completion_tokens"],
            steps=usage["decoding_steps"],
            accepted_per_depth=list(stats.accepted_per_depth) if stats is not None else [],
            tree_nodes_used=dict(stats.tree_nodes_used) if stats is not None else {},
            tree_nodes=self.engine.tree_choices(),
        )

    # --- response bodies -------------------------------------------------------------------------
    def _choice(
        self,
        body: CommonRequest,
        chat: bool,
        index: int,
        out: Outcome,
        content: str,
        prompt: str | list[int],
        ids: list[int],
    ) -> dict[str, Any]:
        """One choice of a full (not streamed) response."""
        want = body.logprob_fields()[0] is not None
        if chat:
            return {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "logprobs": self._chat_logprobs(out.logprobs) if want else None,
                "finish_reason": out.finish_reason,
            }
        assert isinstance(body, CompletionRequest)
        entries: list[TokenLogprob | None] = list(out.logprobs)
        token_ids = out.token_ids[: len(out.logprobs)] if want else []
        if body.echo:  # the prompt's text (as sent, or decoded from its ids) and its tokens come first
            content = (prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)) + content
            entries, token_ids = [*out.prompt_logprobs, *entries], [*ids, *token_ids]
        choice: dict[str, Any] = {
            "index": index,
            "text": content,
            "logprobs": self._completion_logprobs(token_ids, entries) if want else None,
            "finish_reason": out.finish_reason,
        }
        if body.return_token_ids:
            choice.update(prompt_token_ids=list(ids), token_ids=list(out.token_ids))
        return choice

    def _token(self, token_id: int) -> str:
        return str(self.tokenizer.decode([token_id]))

    def _completion_logprobs(
        self, token_ids: list[int], entries: list[TokenLogprob | None], at: int = 0
    ) -> dict[str, Any]:
        """OpenAI's (and vLLM's) legacy completions shape; top_logprobs has the chosen token and the top N,
        keyed by text; ``at`` is the first token's text_offset."""
        tokens = [self._token(t) for t in token_ids]
        offsets = []
        for t in tokens:
            offsets.append(at)
            at += len(t)
        top: list[dict[str, float] | None] = []
        for e in entries:
            top.append(None if e is None else {self._token(i): _clamp(v) for i, v in ((e.token_id, e.logprob), *e.top)})
        return {
            "tokens": tokens,
            "token_logprobs": [None if e is None else _clamp(e.logprob) for e in entries],
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def _chat_logprobs(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """OpenAI's chat shape: one entry per token with its text, bytes and the top N alternatives."""

        def one(token_id: int, logprob: float) -> dict[str, Any]:
            text = self._token(token_id)
            return {"token": text, "logprob": _clamp(logprob), "bytes": list(text.encode("utf-8"))}

        content = [{**one(e.token_id, e.logprob), "top_logprobs": [one(i, v) for i, v in e.top]} for e in entries]
        return {"content": content, "refusal": None}


class _JobStream(StreamingResponse):
    """An SSE response that cancels its job however it ends.

    A client that disconnects while a frame is being sent leaves the frame generator suspended at a
    yield, where no exception reaches it: only this wrapper sees the end and frees the engine.
    """

    def __init__(self, frames: AsyncIterator[str], job: Job) -> None:
        super().__init__(
            frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._frames, self._job = frames, job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()
            aclose = getattr(self._frames, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


class _SSE:
    """One streaming response: a chunk per decoding step, then usage (if asked) and [DONE]."""

    def __init__(
        self,
        g: RequestHandler,
        body: CommonRequest,
        chat: bool,
        job: Job,
        request: Request,
        out: Outcome,
        text: TextStream,
        first: Any,
    ) -> None:
        self.g, self.body, self.chat, self.job, self.request = g, body, chat, job, request
        self.out, self.text, self.first = out, text, first
        self.id, self.created = _new_id(chat), int(time.time())
        self.usage, self.continuous = body.include_usage(), body.continuous_usage()
        self.logprobs = body.logprob_fields()[0] is not None
        self.sent = 0  # log-probability entries already sent
        self.offset = 0  # text_offset of the next token (completions)
        # a text frame is the same JSON each time but for the text (and, with continuous_usage_stats, the
        # usage so far): encode the rest once and put each delta's JSON string (and the usage's) between,
        # the same bytes _frame's json.dumps gives
        self.template = None if self.logprobs else self._template()

    def _template(self) -> tuple[str, str, str | None]:
        marker, umarker = (f"medusa-trt-{k}-{uuid.uuid4().hex}" for k in ("delta", "usage"))
        head, rest = self._frame(marker, None, usage_marker=umarker).split(json.dumps(marker), 1)
        if not self.continuous:
            return head, rest, None
        mid, tail = rest.split(json.dumps(umarker), 1)
        return head, mid, tail

    def _text_frame(self, delta: str) -> str:
        if self.template is None:
            return self._frame(delta, None)
        head, mid, tail = self.template
        text = head + json.dumps(delta, ensure_ascii=False) + mid
        return text if tail is None else text + json.dumps(self.out.usage()) + tail

    def _logprobs(self) -> dict[str, Any] | None:
        """The log-probabilities of the tokens since the last frame, in the endpoint's shape."""
        if not self.logprobs:
            return None
        entries, self.sent = self.out.logprobs[self.sent :], len(self.out.logprobs)
        if self.chat:
            return self.g._chat_logprobs(entries)
        doc = self.g._completion_logprobs([e.token_id for e in entries], list(entries), self.offset)
        if doc["tokens"]:
            self.offset = doc["text_offset"][-1] + len(doc["tokens"][-1])
        return doc

    def _frame(self, delta: str | None, finish: str | None, role: bool = False, usage_marker: str = "") -> str:
        lp = None if role else self._logprobs()
        if self.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": lp, "finish_reason": finish}
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.g.model_name,
            "choices": [choice],
        }
        if self.usage:  # vLLM's continuous_usage_stats: the counts so far in every chunk
            doc["usage"] = (usage_marker or self.out.usage()) if self.continuous else None
        return _data(doc)

    async def frames(self) -> AsyncIterator[str]:
        out = self.out
        try:
            if self.chat:
                yield self._frame(None, None, role=True)
            ready: list[str] = []  # frames of steps the engine already finished: one write for them all
            try:
                async for delta in self.g.steps(self.job, self.request, out, self.text, self.first):
                    if delta:
                        ready.append(self._text_frame(delta))
                    if ready and self.job.events.empty():
                        yield "".join(ready)
                        ready.clear()
            except APIError as e:  # headers are sent: the error travels as an event
                yield "".join(ready) + _data(e.body())
                yield "data: [DONE]\n\n"
                return
            if ready:
                yield "".join(ready)
            yield self._frame(None, out.finish_reason)
            self.g.record(out)
            if self.usage:
                yield _data(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk" if self.chat else "text_completion",
                        "created": self.created,
                        "model": self.g.model_name,
                        "choices": [],
                        "usage": out.usage(),
                    }
                )
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        finally:
            self.job.cancel()  # a client gone mid-stream frees the engine after the step in flight


async def _next(job: Job, request: Request) -> Any:
    """The job's next event; raises ClientGone (and cancels the job) if the client left meanwhile."""
    with contextlib.suppress(IndexError):  # already there (the engine is ahead): no future, no timer
        return job.events.get_nowait()
    while True:
        try:
            return await job.events.get(timeout=_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                raise ClientGone() from None


def _error_of(end: Finished) -> APIError | None:
    e = end.error
    if e is None:
        return None
    if isinstance(e, EngineFailedError):
        return APIError(503, str(e), type="server_error", code="engine_failed")
    if isinstance(e, InvalidInputError | ValueError):
        return APIError(400, str(e))
    if isinstance(e, MedusaTrtError):
        return APIError(500, str(e), type="server_error")
    # an internal failure (a collective's error names files and addresses): the log gets it, not the client
    logger.error("generation failed: %s: %s", type(e).__name__, e)
    return APIError(500, "generation failed (internal error; see the server log)", type="server_error")


def _longest_token(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest token string (byte-level BPE: one character per byte)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary listing: no cheap bound
        return 1 << 30
    return max((len(t) for t in vocab), default=1) or 1


def _clamp(logprob: float) -> float:
    """-inf (a token top-k/top-p excluded) as the finite number OpenAI and vLLM send."""
    return max(logprob, -9999.0)


def _raise(err: APIError | None) -> None:
    if err is not None:
        raise err


def _data(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


def _new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
