"""The HTTP app: health, readiness and metrics, plus the routes other listeners mount on it.

Assembled in one place. Errors go through one table: an `InputError` becomes a 4xx whose body
says what and where (FHIR routes answer an OperationOutcome through their own handlers); anything
unexpected is a 500 that echoes no payload, logged by its type only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from adapter import metrics
from adapter.errors import InputError
from adapter.store.base import Store

__all__ = ["build_http_app"]

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


async def _input_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The first path segment only: later ones can carry ids or a webhook secret.
    log.error("http_unhandled_error", error_type=type(exc).__name__, method=request.method,
              url_path="/" + request.url.path.lstrip("/").split("/", 1)[0])
    return JSONResponse({"error": "internal error", "message": "see the adapter's log"}, status_code=500)


def build_http_app(store: Store, *, readiness: ReadinessCheck,
                   routes: Sequence[BaseRoute] = (),
                   exception_handlers: dict[Any, Callable[..., Any]] | None = None) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        checks = await readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        metrics.update_queue_gauges(await store.stats())
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    handlers: dict[Any, Callable[..., Any]] = {InputError: _input_error, Exception: _unexpected}
    handlers.update(exception_handlers or {})
    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint),
                *routes],
        exception_handlers=handlers,
    )
