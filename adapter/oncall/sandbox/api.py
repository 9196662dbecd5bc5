"""The public API routes, with DRF's dispatch order: authenticate, then method, then object.

Only GET and PATCH exist on objects and GET and POST on collections; any other method is
405 ``{"detail": "Method \\"DELETE\\" not allowed."}`` (for authenticated callers, as in DRF).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapter.oncall.sandbox import contacts
from adapter.oncall.sandbox.db import SandboxDB
from adapter.oncall.sandbox.faults import FaultInjector
from adapter.oncall.sandbox.http import (
    ApiError,
    Principal,
    authenticate,
    base_of,
    not_found,
    paginate,
    read_json,
)
from adapter.oncall.sandbox.render import Renderer
from adapter.oncall.sandbox.service import Service
from adapter.oncall.sandbox.settings import SandboxSettings
from adapter.oncall.sandbox.webhooks import WebhookDispatcher

__all__ = ["ALL_METHODS", "Sandbox", "api_routes"]

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Sandbox:
    """Everything a route needs, kept on `app.state.sandbox`."""

    db: SandboxDB
    settings: SandboxSettings
    service: Service
    hooks: WebhookDispatcher
    faults: FaultInjector

    def renderer(self, request: Request) -> Renderer:
        return Renderer(self.db, base_of(request, self.settings), self.settings.custom_fields)

    def webhook(self, request: Request, event: str, appointment_id: int) -> BackgroundTask:
        """Queued once the response has been sent: the receiver never delays the API answer."""
        return BackgroundTask(self.hooks.enqueue, event, base_of(request, self.settings), appointment_id)


Handler = Callable[[Sandbox, Request, Principal], Awaitable[Response]]


def endpoint(**handlers: Handler) -> Callable[[Request], Awaitable[Response]]:
    allowed = ", ".join([*sorted(m.upper() for m in handlers), "OPTIONS"])

    async def dispatch(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        who = authenticate(request, sandbox.settings)
        method = request.method.lower()
        handler = handlers.get("get" if method == "head" else method)
        if method == "options":
            return JSONResponse({"name": request.url.path, "renders": ["application/json"]},
                                headers={"Allow": allowed})
        if handler is None:
            raise ApiError(405, {"detail": f'Method "{request.method}" not allowed.'}, {"Allow": allowed})
        return await handler(sandbox, request, who)

    return dispatch


def _id(request: Request) -> int:
    return int(request.path_params["id"])


def _page(sandbox: Sandbox, request: Request, items: list[Any]) -> JSONResponse:
    return JSONResponse(paginate(request, sandbox.settings, items))


# -- appointments -----------------------------------------------------------------------------
async def list_appointments(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    render = sandbox.renderer(request)
    return _page(sandbox, request, [render.appointment(r) for r in sandbox.service.appointments(who)])


async def create_appointment(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    appointment_id = sandbox.service.create_appointment(await read_json(request), who)
    body = sandbox.renderer(request).appointment(sandbox.service.appointment(appointment_id, who))
    return JSONResponse(body, status_code=201,
                        background=sandbox.webhook(request, "appointment_created", appointment_id))


async def get_appointment(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    return JSONResponse(sandbox.renderer(request).appointment(sandbox.service.appointment(_id(request), who)))


async def patch_appointment(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    appointment_id = _id(request)
    sandbox.service.patch_appointment(appointment_id, await read_json(request), who)
    body = sandbox.renderer(request).appointment(sandbox.service.appointment(appointment_id, who))
    return JSONResponse(body, background=sandbox.webhook(request, "appointment_updated", appointment_id))


# -- participants -----------------------------------------------------------------------------
async def get_participant(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    return JSONResponse(sandbox.renderer(request).participant(sandbox.service.participant(_id(request), who)))


async def patch_participant(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    appointment_id = sandbox.service.patch_participant(_id(request), await read_json(request), who)
    body = sandbox.renderer(request).participant(sandbox.service.participant(_id(request), who))
    return JSONResponse(body, background=sandbox.webhook(request, "appointment_updated", appointment_id))


# -- contacts ---------------------------------------------------------------------------------
async def list_contacts(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    render = sandbox.renderer(request)
    rows = sandbox.service.contacts(who, dict(request.query_params))
    return _page(sandbox, request, [render.contact(r) for r in rows])


async def create_contact(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    contact_id = contacts.create_contact(sandbox.service, await read_json(request), who)
    return JSONResponse(sandbox.renderer(request).contact(sandbox.service.contact(contact_id, who)),
                        status_code=201)


async def get_contact(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    return JSONResponse(sandbox.renderer(request).contact(sandbox.service.contact(_id(request), who)))


async def patch_contact(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    contacts.patch_contact(sandbox.service, _id(request), await read_json(request), who)
    return JSONResponse(sandbox.renderer(request).contact(sandbox.service.contact(_id(request), who)))


async def contact_appointments(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    render = sandbox.renderer(request)
    rows = sandbox.service.contact_appointments(sandbox.service.contact(_id(request), who), who)
    return _page(sandbox, request, [render.appointment(r) for r in rows])


# -- providers and divisions ------------------------------------------------------------------
async def list_providers(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    render = sandbox.renderer(request)
    return _page(sandbox, request, [render.provider(r) for r in sandbox.db.select("providers")])


async def get_provider(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    row = sandbox.db.get("providers", _id(request))
    if row is None:
        raise not_found()
    return JSONResponse(sandbox.renderer(request).provider(row))


async def list_divisions(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    render = sandbox.renderer(request)
    return _page(sandbox, request, [render.division(r) for r in sandbox.db.select("divisions")])


async def get_division(sandbox: Sandbox, request: Request, who: Principal) -> Response:
    row = sandbox.db.get("divisions", _id(request))
    if row is None:
        raise not_found()
    return JSONResponse(sandbox.renderer(request).division(row))


def api_routes() -> list[Route]:
    def route(path: str, **handlers: Handler) -> Route:
        return Route(path, endpoint(**handlers), methods=ALL_METHODS)

    return [
        route("/appointments/", get=list_appointments, post=create_appointment),
        route("/appointments/{id:int}/", get=get_appointment, patch=patch_appointment),
        route("/participants/{id:int}/", get=get_participant, patch=patch_participant),
        route("/contacts/", get=list_contacts, post=create_contact),
        route("/contacts/{id:int}/", get=get_contact, patch=patch_contact),
        route("/contacts/{id:int}/appointments/", get=contact_appointments),
        route("/providers/", get=list_providers),
        route("/providers/{id:int}/", get=get_provider),
        route("/divisions/", get=list_divisions),
        route("/divisions/{id:int}/", get=get_division),
    ]
