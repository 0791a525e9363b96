"""The FastAPI app: OpenAI routes over one reference engine, errors in OpenAI's shape.

`create_app(engine, model_name)` is what tests and `run_server` use. The generation flow itself
(queueing, streaming, usage) lives in `medusa_trt.serve.generate`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medusa_trt import __version__
from medusa_trt.errors import CheckpointError, EngineFailedError
from medusa_trt.runtime.watchdog import StepClock, Watchdog
from medusa_trt.serve.generate import RequestHandler
from medusa_trt.serve.guard import GuardMiddleware, ServeGuard
from medusa_trt.serve.metrics import Metrics
from medusa_trt.serve.openapi import describe
from medusa_trt.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, validation_error
from medusa_trt.serve.worker import EngineWorker

if TYPE_CHECKING:
    from medusa_trt.serve.served import ServedEngine

_ENDPOINTS = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/version"}


def create_app(
    engine: ServedEngine,
    model_name: str | None = None,
    guard: ServeGuard | None = None,
    on_fault: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> FastAPI:
    """An app serving ``engine`` under ``model_name`` (default: the engine's). Starts the engine thread
    and its watchdog.

    The caller owns the engine (closes it); ``app.state.worker.close()`` stops the thread, which
    the app's shutdown does too. When a tp rank dies or a step outlives its timeout, ``/health``
    turns 503, the running and queued requests fail with 503, the ranks are killed and
    ``on_fault(reason)`` is called (the server then exits). ``/health`` is 503 too while the prompt
    worker (chat template, tokenizer) is stuck on one request past its budget. ``threads``: the engine
    thread's torch threads (``serve.worker.engine_threads``; None leaves torch's setting).
    """
    if engine.tokenizer is None:
        raise CheckpointError(
            "the engine has no tokenizer files, so it cannot serve text",
            hint="`medusa-trt convert`/`build` copy them from the model directory.",
        )
    guard = guard or ServeGuard()
    name = model_name or engine.model_name or "model"
    metrics = Metrics(name)
    clock = StepClock(guard.first_step_timeout_s, guard.step_timeout_s)
    worker = EngineWorker(engine, metrics, clock, threads=threads)
    handler = RequestHandler(engine, worker, metrics, name, template_timeout_s=guard.template_timeout_s)
    fault: list[str] = []

    def tripped(reason: str) -> None:
        fault.append(reason)
        worker.fail(EngineFailedError(f"the engine failed: {reason}; the server is shutting down"))
        if on_fault is not None:
            on_fault(reason)

    watchdog = Watchdog(engine, clock, tripped).start()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        watchdog.stop()
        worker.close()
        handler.close()

    app = FastAPI(
        title="medusa-trt reference server", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.engine, app.state.worker, app.state.metrics, app.state.model_name = engine, worker, metrics, name
    app.state.watchdog, app.state.handler = watchdog, handler
    # inside the request counter (added after it, so outside it): 401 and 413 are counted too
    app.add_middleware(GuardMiddleware, api_key=guard.api_key, max_bytes=guard.max_request_bytes)
    _count_requests(app, metrics)
    _openai_errors(app)
    _info_routes(app, engine, name, metrics, lambda: fault[0] if fault else watchdog.check() or handler.stuck())
    _generation_routes(app, handler, name)
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]
    return app


def _count_requests(app: FastAPI, metrics: Metrics) -> None:
    """Every response counted by endpoint and status (unknown paths as "other", so labels stay bounded)."""
    app.add_middleware(_RequestCounter, metrics=metrics)


class _RequestCounter:
    """Pure ASGI (not ``@app.middleware``, whose BaseHTTPMiddleware passes every streamed chunk through an
    extra memory stream and task): counts a response when its status line goes out."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.request(endpoint, message["status"])
            await send(message)

        await self.app(scope, receive, counted)


def _openai_errors(app: FastAPI) -> None:
    """Our errors, pydantic's validation errors and Starlette's 404/405 all as OpenAI error bodies."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = validation_error(list(e.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        err = APIError(e.status_code, str(e.detail), type=kind)
        return JSONResponse(err.body(), status_code=e.status_code)


def _info_routes(
    app: FastAPI, engine: ServedEngine, name: str, metrics: Metrics, unhealthy: Callable[[], str | None]
) -> None:
    """/health, /version, /metrics and the /v1/models listing."""
    created = int(time.time())

    @_get_and_head(app, "/health")
    async def health() -> dict[str, str] | JSONResponse:
        # 200 only while every rank is up and no step is overdue: what a load balancer should route on
        reason = unhealthy()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @_get_and_head(app, "/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @_get_and_head(app, "/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(engine, name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != name:
            raise _unknown_model(model_id, name)
        return _model_card(engine, name, created)


def _get_and_head(app: FastAPI, path: str) -> Callable[[Any], Any]:
    """Register a GET route and its HEAD twin (headers only; uvicorn drops the body)."""

    def register(fn: Any) -> Any:
        app.add_api_route(path, fn, methods=["GET"], response_model=None)
        app.add_api_route(path, fn, methods=["HEAD"], response_model=None, include_in_schema=False)
        return fn

    return register


def _generation_routes(app: FastAPI, handler: RequestHandler, name: str) -> None:
    """The two OpenAI generation endpoints; the flow itself is `RequestHandler`'s."""

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_model(body.model, name)
        return await handler.completion(body, request)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        _check_model(body.model, name)
        return await handler.chat(body, request)


def _model_card(engine: ServedEngine, name: str, created: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "medusa-trt",
        "max_model_len": int(engine.max_seq_len),
        "medusa": {"num_heads": engine.num_medusa_heads, "tree_size": len(engine.tree), "tp": engine.tp}
        if engine.has_medusa
        else None,
    }


def _unknown_model(got: str, name: str) -> APIError:
    return APIError(
        404, f"The model `{got}` does not exist; this server serves `{name}`.", param="model", code="model_not_found"
    )


def _check_model(got: str | None, name: str) -> None:
    if got not in (None, "", name):
        raise _unknown_model(got, name)
