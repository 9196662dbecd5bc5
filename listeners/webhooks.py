"""The OnCall webhook route: ``POST /oncall/webhooks`` with ``{"event": ..., "url": ...}``.

Authentication: OnCall documents no signature scheme, so the route is protected by a shared
secret, sent either in a header (``X-OnCall-Webhook-Secret`` by default) or as the last path
segment (``/oncall/webhooks/<secret>``, for senders that cannot set headers). It is compared in
constant time; anything else is a 401 and nothing is stored.

What is stored: every authenticated delivery of a known event becomes an envelope (source
ONCALL_WEBHOOK, kind = the event, ordering key ``oncall_appointment:<id>``), committed before the
2xx. The URL in the body is trusted for its numeric id only: the documented example carries
another host (``.com``) and no trailing slash, so the worker rebuilds the URL on the configured
base (`OnCallClient.resolve_appointment_url`) and never follows the body's host.

Why there is no dedup key worth the name: a webhook carries no delivery id, and its body says
nothing of what changed. Two identical bodies a second apart may be one retried delivery or two
real edits; any key built from (event, id, body hash, time bucket) either drops a real edit that
fell into the same bucket or lets a late retry through. So every delivery is stored under a
unique key, and duplicates are made harmless instead of detected: the worker fetches the CURRENT
appointment, maps it, and compares the hash of the mapped output with the hash of what it last
sent to the EMR (crosswalk namespace ``emr_out``). Same hash: nothing is sent. A burst of
deliveries for one appointment therefore costs one GET each and at most one EMR write, and the
ordering key keeps them in arrival order.

Unknown events are acknowledged (200) so OnCall does not retry them, logged, and kept as a
REJECTED envelope with the reason (never applied), so an operator can see what was sent.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapter import metrics
from adapter.envelope import AppendOutcome, NewEnvelope, Source, State
from adapter.errors import AdapterError, ConfigError, InputError
from adapter.oncall.urls import object_id, object_kind
from adapter.store.base import Store

__all__ = ["KNOWN_EVENTS", "MAX_BODY_BYTES", "ordering_key", "parse_webhook", "webhook_routes"]

log = structlog.get_logger(__name__)

KNOWN_EVENTS = frozenset({"appointment_created", "appointment_updated"})
MAX_BODY_BYTES = 64 * 1024          # a webhook body is two short strings
EventCheck = Callable[[str], str | None]
"""Returns None when the event is accepted, else why not (e.g. no reverse mapping route for it)."""


def ordering_key(appointment_id: int) -> str:
    return f"oncall_appointment:{appointment_id}"


def _default_check(event: str) -> str | None:
    return None if event in KNOWN_EVENTS else (
        f"unknown OnCall webhook event {event[:60]!r}; known: {', '.join(sorted(KNOWN_EVENTS))}")


def parse_webhook(body: bytes) -> tuple[str, str, int | None]:
    """(event, url, appointment id) from a webhook body; raises InputError naming the JSON path.

    The id is None when the URL is not an appointment URL (acceptable only for unknown events).
    """
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = getattr(exc, "pos", "?")
        raise InputError(f"webhook body is not JSON ({type(exc).__name__} at byte {where})",
                         hint='OnCall sends {"event": "...", "url": "..."}') from None
    if not isinstance(data, dict):
        raise InputError("webhook body: $ is not a JSON object", hint='expected {"event": ..., "url": ...}')
    event, url = data.get("event"), data.get("url")
    if not isinstance(event, str) or not event:
        raise InputError("webhook body: $.event is missing or not a string",
                         hint="expected appointment_created or appointment_updated")
    if not isinstance(url, str) or not url:
        raise InputError("webhook body: $.url is missing or not a string",
                         hint="expected the appointment's URL, e.g. https://api.oncallhealth.ca/appointments/1/")
    kind = object_kind(url)
    if kind not in (None, "appointments"):
        return event, url, None
    try:
        return event, url, object_id(url)
    except AdapterError:
        return event, url, None


def webhook_routes(*, store: Store, secret: str, secret_header: str = "X-OnCall-Webhook-Secret",
                   path: str = "/oncall/webhooks", accepts_event: EventCheck | None = None,
                   on_stored: Callable[[], None] | None = None) -> list[BaseRoute]:
    """The webhook routes to mount on the HTTP app.

    `accepts_event(event)` returns None to accept, else a reason (default: the two documented
    events); `on_stored()` is called after a new envelope is committed (e.g. `WorkerPool.wake`).
    """
    if not secret:
        raise ConfigError("webhooks.secret", None, "a non-empty shared secret (set "
                          "ONCALL_ADAPTER_WEBHOOKS__SECRET or webhooks.secret_file); the route is never "
                          "served unprotected", secret=True)
    expected = secret.encode("utf-8")
    check = accepts_event or _default_check
    path = "/" + path.strip("/")

    def authorised(given: str | None) -> bool:
        # compare_digest on bytes of any length: its time does not depend on where they differ
        return given is not None and hmac.compare_digest(given.encode("utf-8"), expected)

    async def receive(request: Request) -> Response:
        given = request.path_params.get("secret") or request.headers.get(secret_header)
        if not authorised(given):
            log.warning("webhook_unauthorised", url_path=path, peer=_peer(request))
            return JSONResponse({"detail": "missing or wrong webhook secret"}, status_code=401)
        body = await _read_body(request)
        event, _url, appointment_id = parse_webhook(body)
        refusal = check(event)
        if refusal is None and appointment_id is None:
            raise InputError("webhook body: $.url is not an OnCall appointment URL",
                             hint="expected .../appointments/<id>/")
        new = NewEnvelope(
            source=Source.ONCALL_WEBHOOK, kind=event[:100],
            ordering_key=ordering_key(appointment_id) if appointment_id is not None else "oncall_webhook:x",
            dedup_key=f"oncall_webhook:{appointment_id}:{uuid.uuid4().hex}",   # see the module docstring
            payload=body,
            meta={"event": event[:100], "appointment_id": str(appointment_id or "")},
            state=State.QUEUED if refusal is None else State.REJECTED, reason=refusal)
        appended = await store.append(new)
        metrics.count_appended(appended)
        envelope_id = appended.envelope.id
        if refusal is not None:
            log.info("webhook_ignored", envelope_id=envelope_id, reason_code="unknown_event",
                     appointment_id=appointment_id)
            return JSONResponse({"status": "ignored", "envelope_id": envelope_id})
        if appended.outcome is AppendOutcome.STORED and on_stored is not None:
            on_stored()
        log.info("envelope_stored", envelope_id=envelope_id, source=Source.ONCALL_WEBHOOK.value,
                 kind=new.kind, appointment_id=appointment_id, outcome=appended.outcome.value)
        return JSONResponse({"status": "stored", "envelope_id": envelope_id})

    return [Route(path, receive, methods=["POST"]),
            Route(path + "/{secret}", receive, methods=["POST"])]


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InputError(f"webhook body is larger than {MAX_BODY_BYTES} bytes",
                             hint='OnCall sends {"event": ..., "url": ...}; check what is posting here')
        chunks.append(chunk)
    return b"".join(chunks)


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"
