"""`create_sandbox_app`: a local OnCall API (Starlette) with the same endpoints, pagination, errors
and webhooks as the real one, plus a control API and fault injection.

Answers follow stock Django REST Framework where OnCall's docs are silent:
- unknown routes: Django's HTML 404 page; unknown objects: 404 ``{"detail": "Not found."}``;
- a route without its trailing slash (APPEND_SLASH): 301 to the slashed URL for GET and HEAD
  (``append_slash="redirect"``, the default), 404 for other methods (Django cannot redirect a
  body); ``append_slash="404"`` answers 404 for every method;
- unexpected failures: Django's HTML "Server Error (500)" page, no payload echoed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from adapter.oncall.sandbox.api import Sandbox, api_routes
from adapter.oncall.sandbox.control import control_routes
from adapter.oncall.sandbox.db import SandboxDB
from adapter.oncall.sandbox.faults import FaultInjector
from adapter.oncall.sandbox.http import ApiError
from adapter.oncall.sandbox.service import Service
from adapter.oncall.sandbox.settings import DEFAULT_API_KEYS, SandboxSettings
from adapter.oncall.sandbox.webhooks import WebhookDispatcher

__all__ = ["SandboxApp", "create_sandbox_app"]

_NOT_FOUND_PAGE = ("<!doctype html><html lang=\"en\"><head><title>Not Found</title></head>"
                   "<body><h1>Not Found</h1>"
                   "<p>The requested resource was not found on this server.</p></body></html>")
_SERVER_ERROR_PAGE = ("<!doctype html><html lang=\"en\"><head><title>Server Error (500)</title></head>"
                      "<body><h1>Server Error (500)</h1><p></p></body></html>")


class SandboxApp(Starlette):
    """Starlette with the fault layer outermost, where it can still hang up a connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sandbox: Sandbox | None = getattr(self.state, "sandbox", None)
        if sandbox is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await sandbox.faults(scope, receive, send, super().__call__)

    @property
    def sandbox(self) -> Sandbox:
        return self.state.sandbox


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        sandbox: Sandbox = request.app.state.sandbox
        path = request.url.path
        if (sandbox.settings.append_slash == "redirect" and request.method in ("GET", "HEAD")
                and not path.endswith("/") and _routes_to(request, path + "/")):
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(path + "/" + query, status_code=301)
        return HTMLResponse(_NOT_FOUND_PAGE, status_code=404)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return HTMLResponse(_SERVER_ERROR_PAGE, status_code=500)


def _routes_to(request: Request, path: str) -> bool:
    scope = {**request.scope, "path": path}
    return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)


def create_sandbox_app(*, db_path: str = ":memory:", api_keys: Mapping[str, int | None] | None = None,
                       base_url: str | None = None, page_size: int = 5, webhook_url: str | None = None,
                       webhook_secret_header: str | None = None,
                       custom_fields: Mapping[str, str] | None = None, fault_seed: int = 0,
                       shutdown_drain_seconds: float = 2.0, **switches: Any) -> SandboxApp:
    """Build the sandbox app. `api_keys`: key -> provider id, or None for a coordinator key
    (default {"sandbox-token": 1, "sandbox-coordinator-token": None}). `base_url`: the public
    base in emitted URLs (default: the request's). `switches`: any other SandboxSettings field.
    """
    settings = SandboxSettings(
        base_url=base_url.rstrip("/") if base_url else None,
        api_keys=dict(api_keys) if api_keys is not None else dict(DEFAULT_API_KEYS),
        page_size=page_size, webhook_url=webhook_url, webhook_secret_header=webhook_secret_header,
        custom_fields=dict(custom_fields) if custom_fields is not None else {"2": "EMR id"},
    )
    unknown = settings.update(switches)
    if unknown:
        raise TypeError(f"create_sandbox_app: unknown settings {', '.join(unknown)}")
    db = SandboxDB(db_path)
    hooks = WebhookDispatcher(db, settings)
    sandbox = Sandbox(db=db, settings=settings, service=Service(db, settings), hooks=hooks,
                      faults=FaultInjector(fault_seed))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def deliver() -> None:
                try:
                    await hooks.run()
                finally:
                    done.set()

            tg.start_soon(deliver)
            try:
                yield
            finally:
                hooks.close()
                with anyio.move_on_after(shutdown_drain_seconds):
                    await done.wait()
                tg.cancel_scope.cancel()
        db.close()

    app = SandboxApp(
        routes=[*api_routes(), *control_routes()],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False   # our own APPEND_SLASH (301, GET only) replaces Starlette's
    app.state.sandbox = sandbox
    return app
