"""The server's /openapi.json: what it answers, status by status, with the content types it sends.

FastAPI derives the request bodies from the request models but would document 422 (we answer 400, in
OpenAI's error shape), JSON for /metrics (it is Prometheus text) and no streams; the responses here
replace what it guessed. tests/test_serve_api.py checks real responses against this description.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

JSON, SSE, TEXT = "application/json", "text/event-stream", "text/plain"

_INT, _STR, _NUM = {"type": "integer"}, {"type": "string"}, {"type": "number"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_FINISH = _nullable({"enum": ["stop", "length", "abort"]})
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "message": _STR,
                    "type": _STR,
                    "param": _nullable(_STR),
                    "code": _nullable({"type": ["string", "integer"]}),
                }
            )
        }
    ),
    "Health": _obj({"status": {"const": "ok"}}),
    "Unhealthy": _obj({"status": {"const": "unhealthy"}, "reason": _STR}),
    "Version": _obj({"version": _STR}),
    "Model": _obj(
        {
            "id": _STR,
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": _STR,
            "max_model_len": _INT,
            "medusa": _nullable(_obj({"num_heads": _INT, "tree_size": _INT, "tp": _INT})),
        }
    ),
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}),
    "Usage": _obj({"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT, "decoding_steps": _INT}),
    "CompletionLogprobs": _obj(
        {
            "tokens": {"type": "array", "items": _STR},
            "token_logprobs": {"type": "array", "items": _nullable(_NUM)},
            "top_logprobs": {
                "type": "array",
                "items": _nullable({"type": "object", "additionalProperties": _NUM}),
            },
            "text_offset": {"type": "array", "items": _INT},
        }
    ),
    "CompletionChoice": _obj(
        {"index": _INT, "text": _STR, "logprobs": _nullable(_ref("CompletionLogprobs")), "finish_reason": _FINISH},
        {"prompt_token_ids": {"type": "array", "items": _INT}, "token_ids": {"type": "array", "items": _INT}},
    ),
    "Completion": _obj(
        {
            "id": _STR,
            "object": {"const": "text_completion"},
            "created": _INT,
            "model": _STR,
            "choices": {"type": "array", "items": _ref("CompletionChoice")},
            "usage": _ref("Usage"),
        }
    ),
    "ChatTokenLogprob": _obj(
        {"token": _STR, "logprob": _NUM, "bytes": _nullable({"type": "array", "items": _INT})},
        {"top_logprobs": {"type": "array", "items": _ref("ChatTokenLogprob")}},
    ),
    "ChatLogprobs": _obj(
        {"content": _nullable({"type": "array", "items": _ref("ChatTokenLogprob")})}, {"refusal": {"type": "null"}}
    ),
    "ChatChoice": _obj(
        {
            "index": _INT,
            "message": _obj({"role": {"const": "assistant"}, "content": _STR}),
            "logprobs": _nullable(_ref("ChatLogprobs")),
            "finish_reason": _FINISH,
        }
    ),
    "ChatCompletion": _obj(
        {
            "id": _STR,
            "object": {"const": "chat.completion"},
            "created": _INT,
            "model": _STR,
            "choices": {"type": "array", "items": _ref("ChatChoice")},
            "usage": _ref("Usage"),
        }
    ),
}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        400: "Invalid request, or a field this server does not implement (`param` names it)",
        401: "Missing or wrong API key (`--api-key`)",
        404: "Unknown model",
        413: "Request body over `--max-request-mb`",
        500: "Generation failed",
        503: "The engine failed, or the server is shutting down",
    }
    return {str(c): _json(why[c], "Error") for c in codes}


def _generation(schema: str) -> dict[str, Any]:
    stream = {"schema": {"type": "string"}, "example": "data: {...}\n\ndata: [DONE]\n\n"}
    ok = {
        "description": "The completion (JSON), or with `stream: true` server-sent events ending with `data: [DONE]`",
        "content": {JSON: {"schema": _ref(schema)}, SSE: stream},
    }
    return {"200": ok, **_errors(400, 401, 404, 413, 500, 503)}


_HEALTH = {
    "200": _json("Every rank is up and no step is overdue", "Health"),
    "503": _json("A rank died or a step is overdue", "Unhealthy"),
}
_METRICS = {
    "200": {
        "description": "Prometheus text exposition format 0.0.4",
        "content": {TEXT: {"schema": {"type": "string"}}},
    }
}
RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("/health", "get"): _HEALTH,
    ("/health", "head"): _HEALTH,
    ("/version", "get"): {"200": _json("The server's version", "Version")},
    ("/metrics", "get"): _METRICS,
    ("/metrics", "head"): _METRICS,
    ("/v1/models", "get"): {"200": _json("The one served model", "ModelList"), **_errors(401)},
    ("/v1/models", "head"): {"200": _json("The one served model", "ModelList"), **_errors(401)},
    ("/v1/models/{model_id}", "get"): {"200": _json("The served model", "Model"), **_errors(401, 404)},
    ("/v1/completions", "post"): _generation("Completion"),
    ("/v1/chat/completions", "post"): _generation("ChatCompletion"),
}
HEAD_PATHS = ("/health", "/metrics", "/v1/models")


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` with the responses above (cached on the app, as FastAPI does)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=__doc__.split("\n\n")[0])
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(SCHEMAS)
    for path in HEAD_PATHS:  # HEAD routes are kept out of FastAPI's schema: they share the GET's operation id
        get = doc["paths"][path]["get"]
        doc["paths"][path]["head"] = {**get, "operationId": get["operationId"] + "_head", "summary": "Head"}
    for (path, method), responses in RESPONSES.items():
        doc["paths"][path][method]["responses"] = responses
    app.openapi_schema = doc
    return doc
