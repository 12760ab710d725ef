"""The FastAPI app over a ServerService: thin routes, OpenAI's error shape for every failure, the API key and body
limits in front. Testable in-process (`TestClient(create_app(service))`) or served by uvicorn (`seqsched server`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.server import batch_routes, generate_routes
from serving.server.errors import APIError, error_body, not_found
from serving.server.security import ApiKeyMiddleware, BodyLimitMiddleware
from serving.server.service import ServerService

log = logging.getLogger(__name__)

TICK_S = 1.0
"""How often batch jobs are checked for an expired completion window."""
JSON_BODY_BYTES = 8 * 2**20
"""Largest body of a JSON request (a chat with a long history fits; uploads have their own limit)."""
MULTIPART_OVERHEAD = 64 * 2**10


def create_app(service: ServerService, manage: bool = True) -> FastAPI:
    """The app; with manage, its lifespan starts the service (engine thread, resumed jobs) and stops it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            service.start()
        ticker = asyncio.create_task(_tick(service))
        try:
            yield
        finally:
            ticker.cancel()
            if manage:
                service.stop()

    app = FastAPI(title="seqsched", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(generate_routes.router)
    app.include_router(batch_routes.router)

    @app.get("/health")
    async def health() -> Any:
        """Liveness (no API key needed): 200 while the engine thread runs."""
        if not service.worker.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Any:
        """Prometheus text: queue depth, running rows, tokens/s, preemptions, predictor latency."""
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> Any:
        """The served model, with the predictor version and policy under `seqsched`."""
        return service.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        """One model object."""
        served = service.models()["data"][0]
        if model_id != served["id"]:
            raise not_found(f"The model `{model_id}` does not exist.", "model", "model_not_found")
        return served

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos."
            return JSONResponse(error_body(message, code="unknown_url"), status_code=404)
        return JSONResponse(error_body(str(error.detail)), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(str(first.get("msg", "invalid request")), param=param), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = error_body(f"The server had an error processing your request ({type(error).__name__}).", "server_error")
        return JSONResponse(body, status_code=500)

    limits = {"/v1/files": service.config.max_upload_bytes + MULTIPART_OVERHEAD}
    app.add_middleware(BodyLimitMiddleware, limits=limits, default=JSON_BODY_BYTES)
    app.add_middleware(ApiKeyMiddleware, api_key=service.config.resolved_api_key())
    return app


async def _tick(service: ServerService) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        try:
            await asyncio.to_thread(service.jobs.tick)
        except Exception:  # expiry is retried at the next tick
            log.exception("batch expiry check failed")
