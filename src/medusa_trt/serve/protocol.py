"""OpenAI request models, their validation, and the OpenAI error shape.

Say no instead of ignoring: a field of the OpenAI or vLLM API that this server does not implement is a
400 naming it, unless it is sent with its default value (clients send ``logit_bias: {}``,
``repetition_penalty: 1.0``, ``response_format: {"type": "text"}``). Fields that never change the output
(``user``, ``metadata``...) are accepted. Any other unknown field is ignored and logged once, as vLLM
does (its ``OpenAIBaseModel`` logs "fields were present in the request but ignored").

Sampling values are checked once, by ``runtime.SamplingParams``; ``sampling()`` turns its complaint into
a 400 naming the request's field.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medusa_trt.runtime.types import Acceptance, SamplingError, SamplingParams

log = logging.getLogger(__name__)

# Fields of OpenAI's or vLLM's API accepted with their default value only (None: absent).
_REFUSED_COMMON: dict[str, tuple[Any, ...]] = {
    # OpenAI
    "n": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "store": (False,),
    "prediction": (),
    # vLLM (SamplingParams and request extensions, https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html)
    "repetition_penalty": (1,),
    "min_p": (0,),
    "use_beam_search": (False,),
    "length_penalty": (1,),
    "include_stop_str_in_output": (False,),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "truncate_prompt_tokens": (),
    "allowed_token_ids": (),
    "bad_words": ([],),
    "prompt_logprobs": (),
    "structured_outputs": (),
    "guided_json": (),
    "guided_regex": (),
    "guided_choice": (),
    "guided_grammar": (),
    "guided_decoding_backend": (),
    "guided_whitespace_pattern": (),
    "logits_processors": ([],),
    "return_tokens_as_token_ids": (False,),
    "prompt_embeds": (),
    "mm_processor_kwargs": (),
    "vllm_xargs": (),
    "kv_transfer_params": (),
    "priority": (0,),
}
_REFUSED_COMPLETION: dict[str, tuple[Any, ...]] = {
    **_REFUSED_COMMON,
    "best_of": (1,),
    "suffix": ("",),
    "add_special_tokens": (True,),
}
_REFUSED_CHAT: dict[str, tuple[Any, ...]] = {
    **_REFUSED_COMMON,
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "audio": (),
    "modalities": (["text"],),
    "web_search_options": (),
    "reasoning_effort": (),
    "verbosity": (),
    "echo": (False,),
    "add_special_tokens": (False,),
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "chat_template": (),
    "chat_template_kwargs": ({},),
    "documents": (),
}
# Accepted, whatever their value: none of them changes what is generated.
NO_EFFECT = frozenset(
    {
        "user",
        "metadata",
        "service_tier",
        "request_id",
        "cache_salt",
        "prompt_cache_key",
        "safety_identifier",
        "parallel_tool_calls",
    }
)
_warned: set[str] = set()

# Bounds on what a request may ask for, so that no field costs more than its bytes: OpenAI documents
# "up to 4" stop sequences (https://platform.openai.com/docs/api-reference/chat/create); evaluation
# harnesses send a few more, so 16, each at most MAX_STOP_CHARS (the text held back while streaming).
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
# Everything that reaches the chat template is bounded: a turn costs template work and tokens even
# when empty, and a role is template markup (a name such as user, assistant, tool, ipython).
MAX_MESSAGES = 4096
MAX_ROLE_CHARS = 64
ROLE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"


class APIError(Exception):
    """An error answered as OpenAI JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: every chunk carries the usage so far (guidellm asks for it)


class CommonRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    REFUSED: ClassVar[dict[str, tuple[Any, ...]]] = _REFUSED_COMMON

    model: str | None = None  # optional: the one served model is used
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default; 0 is greedy
    top_p: float = 1.0
    top_k: int = 0  # extension (vLLM): 0 or -1 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)  # extension (vLLM)
    stream: bool = False
    stream_options: StreamOptions | None = None
    medusa: bool = True  # extension: false decodes one token per step (the baseline)
    medusa_acceptance: Acceptance = Acceptance.EXACT  # extension: typical is lossy (temperature > 0)
    posterior_threshold: float | None = None  # extension: typical acceptance
    posterior_alpha: float | None = None
    ignore_eos: bool = False  # extension (vLLM, TensorRT-LLM): EOS does not stop; benchmark tools send it
    min_tokens: int = 0  # extension (vLLM, TensorRT-LLM): no stop token before this many

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        """A 400 for each field we do not implement, sent with a value other than its default."""
        if not isinstance(data, dict):
            return data
        for name, defaults in cls.REFUSED.items():
            value = data.get(name)
            if value is not None and not any(value == d and type(value) is type(d) for d in _widen(defaults)):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                allowed = " or ".join(repr(d) for d in defaults) or "null"
                raise unsupported(name, f"not supported by this server (got {shown}; only {allowed} is accepted)")
        for name in sorted(set(data) - set(cls.model_fields) - set(cls.REFUSED) - NO_EFFECT - _warned):
            _warned.add(name)
            log.warning("request field %r is not part of the API: ignored (as vLLM does)", name)
        return data

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in items):
            raise ValueError("stop strings must be non-empty")
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(items)}")
        if any(len(s) > MAX_STOP_CHARS for s in items):
            raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        return bool(self.include_usage() and self.stream_options and self.stream_options.continuous_usage_stats)

    def limit(self) -> int | None:
        """The request's completion budget (None: up to the context)."""
        return self.max_tokens

    def logprob_fields(self) -> tuple[int | None, int | None]:
        """(top alternatives per generated token, per prompt token); None: not asked."""
        return None, None

    def sampling(self, max_tokens: int) -> SamplingParams:
        """The request as the runtime's checked record; a 400 naming the field it complains about."""
        logprobs, prompt_logprobs = self.logprob_fields()
        extra: dict[str, Any] = {}
        if self.posterior_threshold is not None:
            extra["posterior_threshold"] = self.posterior_threshold
        if self.posterior_alpha is not None:
            extra["posterior_alpha"] = self.posterior_alpha
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=0 if self.top_k == -1 else self.top_k,
                seed=self.seed,
                stop_token_ids=tuple(self.stop_token_ids),
                ignore_eos=self.ignore_eos,
                min_tokens=self.min_tokens,
                acceptance=self.medusa_acceptance,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                **extra,
            )
        except SamplingError as e:
            raise APIError(400, f"{self.param_of(e.field)}: {e}", param=self.param_of(e.field)) from None

    def param_of(self, field: str) -> str:
        """The request field that carries SamplingParams' ``field``."""
        return {"acceptance": "medusa_acceptance"}.get(field, field)


class CompletionRequest(CommonRequest):
    REFUSED: ClassVar[dict[str, tuple[Any, ...]]] = _REFUSED_COMPLETION

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    return_token_ids: bool = False  # extension (vLLM >= 0.10.2): the choice carries prompt and output ids

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(t, int) for t in p):
            return [list(p)]  # type: ignore[arg-type]
        if not p:
            raise APIError(400, "prompt: the list is empty", param="prompt")
        return list(p)  # type: ignore[arg-type]

    def logprob_fields(self) -> tuple[int | None, int | None]:
        return self.logprobs, self.logprobs if self.echo and self.logprobs is not None else None

    def param_of(self, field: str) -> str:
        return {"prompt_logprobs": "logprobs"}.get(field) or super().param_of(field)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1, max_length=MAX_ROLE_CHARS, pattern=ROLE_PATTERN)
    content: str | list[dict[str, Any]] | None  # required (null only where OpenAI allows it: an assistant turn)

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(
                    400, f"content part type {part.get('type')!r} is not supported (text only)", param="messages"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(CommonRequest):
    REFUSED: ClassVar[dict[str, tuple[Any, ...]]] = _REFUSED_CHAT

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs: true", param="top_logprobs")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_fields(self) -> tuple[int | None, int | None]:
        return (self.top_logprobs or 0) if self.logprobs else None, None

    def param_of(self, field: str) -> str:
        if field == "max_tokens" and self.max_completion_tokens is not None:
            return "max_completion_tokens"
        return {"logprobs": "top_logprobs"}.get(field) or super().param_of(field)


def _widen(defaults: tuple[Any, ...]) -> tuple[Any, ...]:
    """An int default also matches the same float (``repetition_penalty: 1.0``)."""
    return defaults + tuple(float(d) for d in defaults if type(d) is int)


def validation_error(errors: list[Any]) -> APIError:
    """Pydantic's first complaint as one OpenAI error (param = the dotted field path)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)
