"""The control API under /__sandbox__/: look inside, reset, seed, act "inside OnCall", inject faults.

Open by default (the sandbox binds to loopback); when `admin_token` is set, every control call
needs the header ``X-Sandbox-Admin-Token: <token>``. Never faulted.

    GET    /__sandbox__/state                       providers, divisions, contacts, appointments
                                                    (with participants), e-mails, webhook deliveries
    GET    /__sandbox__/emails                      the e-mails the real service would have sent
    GET    /__sandbox__/webhooks                    webhook deliveries and their status
    POST   /__sandbox__/reset                       empty everything, ids restart at 1, faults cleared
    POST   /__sandbox__/seed                        {"contacts": [...], "appointments": [...],
                                                     "emails": false, "webhooks": false}
    POST   /__sandbox__/appointments/{id}/change    an edit made inside OnCall (PATCH fields, plus
                                                    `status`): fires appointment_updated
    GET/POST /__sandbox__/config                    read / change switches (see settings.py)
    GET/POST/DELETE /__sandbox__/faults             {"seed": 1, "rules": [{...FaultRule...}]}
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapter.oncall.sandbox import contacts
from adapter.oncall.sandbox.api import Sandbox
from adapter.oncall.sandbox.faults import FaultRule
from adapter.oncall.sandbox.http import SYSTEM, ApiError, base_of, read_json

__all__ = ["control_routes"]

ControlHandler = Callable[[Sandbox, Request], Awaitable[Response]]


def _guard(handler: ControlHandler) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        sandbox: Sandbox = request.app.state.sandbox
        token = sandbox.settings.admin_token
        if token and not hmac.compare_digest(request.headers.get("x-sandbox-admin-token", ""), token):
            raise ApiError(403, {"detail": "Sandbox control API: missing or wrong X-Sandbox-Admin-Token."})
        return await handler(sandbox, request)

    return guarded


def _state(sandbox: Sandbox, request: Request) -> dict[str, Any]:
    render = sandbox.renderer(request)
    db = sandbox.db
    return {
        "providers": [render.provider(r) for r in db.select("providers")],
        "divisions": [render.division(r) for r in db.select("divisions")],
        "contacts": [render.contact(r) for r in db.select("contacts")],
        "appointments": [render.appointment(r) for r in db.select("appointments")],
        "emails": db.select("emails"),
        "webhooks": db.select("webhook_deliveries"),
    }


async def state(sandbox: Sandbox, request: Request) -> Response:
    return JSONResponse(_state(sandbox, request))


async def emails(sandbox: Sandbox, request: Request) -> Response:
    return JSONResponse(sandbox.db.select("emails"))


async def webhooks(sandbox: Sandbox, request: Request) -> Response:
    return JSONResponse(sandbox.db.select("webhook_deliveries"))


async def reset(sandbox: Sandbox, request: Request) -> Response:
    sandbox.db.reset()
    sandbox.faults.configure([], sandbox.faults.seed)
    return JSONResponse({"reset": True})


async def seed(sandbox: Sandbox, request: Request) -> Response:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, {"non_field_errors": ["Expected an object with contacts and appointments."]})
    render = sandbox.renderer(request)
    default_provider = render.url("providers", 1)
    created: dict[str, list[Any]] = {"contacts": [], "appointments": []}
    tasks = BackgroundTasks()
    with sandbox.db.transaction():
        for i, item in enumerate(data.get("contacts") or []):
            try:
                contact_id = contacts.create_contact(sandbox.service, {"provider": default_provider, **item},
                                                     SYSTEM)
            except ApiError as exc:
                raise ApiError(exc.status, {"contacts": {str(i): exc.body}}) from None
            created["contacts"].append(render.contact(sandbox.service.contact(contact_id, SYSTEM)))
        for i, item in enumerate(data.get("appointments") or []):
            try:
                appointment_id = sandbox.service.create_appointment(
                    {"provider": default_provider, **item}, SYSTEM, notify=bool(data.get("emails")))
            except ApiError as exc:
                raise ApiError(exc.status, {"appointments": {str(i): exc.body}}) from None
            row = sandbox.service.appointment(appointment_id, SYSTEM)
            created["appointments"].append(render.appointment(row))
            if data.get("webhooks"):
                tasks.add_task(sandbox.hooks.enqueue, "appointment_created",
                               base_of(request, sandbox.settings), appointment_id)
    return JSONResponse(created, status_code=201, background=tasks)


async def change(sandbox: Sandbox, request: Request) -> Response:
    appointment_id = int(request.path_params["id"])
    sandbox.service.patch_appointment(appointment_id, await read_json(request), SYSTEM, internal=True)
    body = sandbox.renderer(request).appointment(sandbox.service.appointment(appointment_id, SYSTEM))
    return JSONResponse(body, background=sandbox.webhook(request, "appointment_updated", appointment_id))


async def config(sandbox: Sandbox, request: Request) -> Response:
    if request.method == "POST":
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, {"non_field_errors": ["Expected an object of settings."]})
        unknown = sandbox.settings.update(data)
        if unknown:
            raise ApiError(400, {name: ["Unknown or read-only setting."] for name in unknown})
    return JSONResponse(sandbox.settings.public())


async def faults(sandbox: Sandbox, request: Request) -> Response:
    if request.method == "DELETE":
        sandbox.faults.configure([], sandbox.faults.seed)
    elif request.method == "POST":
        data = await read_json(request)
        if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
            raise ApiError(400, {"non_field_errors": ['Expected {"seed": int, "rules": [...]}.']})
        try:
            rules = [FaultRule.from_json(r) for r in data.get("rules", [])]
        except (TypeError, ValueError) as exc:
            raise ApiError(400, {"rules": [str(exc)]}) from None
        sandbox.faults.configure(rules, int(data.get("seed", 0)))
    return JSONResponse(sandbox.faults.describe())


def control_routes() -> list[Route]:
    return [
        Route("/__sandbox__/state", _guard(state), methods=["GET"]),
        Route("/__sandbox__/emails", _guard(emails), methods=["GET"]),
        Route("/__sandbox__/webhooks", _guard(webhooks), methods=["GET"]),
        Route("/__sandbox__/reset", _guard(reset), methods=["POST"]),
        Route("/__sandbox__/seed", _guard(seed), methods=["POST"]),
        Route("/__sandbox__/appointments/{id:int}/change", _guard(change), methods=["POST"]),
        Route("/__sandbox__/config", _guard(config), methods=["GET", "POST"]),
        Route("/__sandbox__/faults", _guard(faults), methods=["GET", "POST", "DELETE"]),
    ]
