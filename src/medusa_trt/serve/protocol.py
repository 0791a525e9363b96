"""OpenAI request models, their validation, and the OpenAI error shape.

Unknown fields are accepted and ignored (clients send `user`, `logit_bias: {}`...), but a field we
cannot honour with a non-default value (n > 1, logprobs, echo, penalties, tools) is a 400, not a
silent difference.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CommonRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None  # optional: the one served model is used
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # extension (vLLM): 0 or -1 = off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)  # extension (vLLM)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    medusa: bool = True  # extension: false decodes one token per step (the baseline)
    medusa_acceptance: Literal["exact", "typical"] = "exact"  # extension: typical is lossy (temperature > 0)
    posterior_threshold: float | None = Field(None, gt=0.0, le=1.0)  # extension: typical acceptance
    posterior_alpha: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # extension (vLLM, TensorRT-LLM): EOS does not stop; benchmark tools send it
    min_tokens: int = Field(0, ge=0)  # extension (vLLM, TensorRT-LLM): no stop token before this many

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

    def unsupported(self) -> APIError | None:
        """The first field set to something the reference runtime cannot do."""
        checks: list[tuple[bool, str, str]] = [
            (self.n != 1, "n", "only n=1 is supported"),
            (self.presence_penalty != 0.0, "presence_penalty", "presence_penalty is not supported"),
            (self.frequency_penalty != 0.0, "frequency_penalty", "frequency_penalty is not supported"),
            (bool(self.logit_bias), "logit_bias", "logit_bias is not supported"),
        ]
        for bad, param, msg in checks:
            if bad:
                return APIError(400, msg, param=param)
        return None

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(CommonRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None
    return_token_ids: bool = False  # extension (vLLM >= 0.10.2): the choice carries prompt and output ids

    def unsupported(self) -> APIError | None:
        if (err := super().unsupported()) is not None:
            return err
        if (
            isinstance(self.prompt, list)
            and self.prompt
            and isinstance(self.prompt[0], str | list)
            and len(self.prompt) != 1
        ):
            return APIError(400, "only one prompt per request is supported", param="prompt")
        for bad, param in (
            (self.echo, "echo"),
            (self.logprobs is not None, "logprobs"),
            (self.best_of not in (None, 1), "best_of"),
            (bool(self.suffix), "suffix"),
        ):
            if bad:
                return APIError(400, f"{param} is not supported", param=param)
        return None


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
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None

    def unsupported(self) -> APIError | None:
        if (err := super().unsupported()) is not None:
            return err
        for bad, param in (
            (self.logprobs, "logprobs"),
            (self.top_logprobs is not None, "top_logprobs"),
            (bool(self.tools), "tools"),
        ):
            if bad:
                return APIError(400, f"{param} is not supported", param=param)
        return None


def validation_error(errors: list[Any]) -> APIError:
    """Pydantic's first complaint as one OpenAI error (param = the dotted field path)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)
