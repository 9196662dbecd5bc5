"""The FHIR subscription endpoint: Starlette routes under a configurable base path (default ``/fhir``).

- ``PUT|POST {base}/Patient/{id}`` and ``{base}/Appointment/{id}`` (and ``POST {base}/{type}``):
  an R4 rest-hook with payload, as HAPI FHIR delivers it. An empty body there means "this one
  changed": it is read from the EMR server.
- ``POST {base}``: an empty body is an R4 rest-hook without payload (ask the EMR server what
  changed since the last check); a Bundle is a topic-based notification (R5, or the R4/R4B backport).

Every request is authenticated first by the header the Subscription's channel carries (compared in
constant time); a refusal stores nothing. An answer of 2xx is sent only after the store committed.
Errors are OperationOutcomes: 401, 413, 415 and 4xx for bad input here, 503/502 when the EMR server
failed us while fetching (nothing acknowledged, the sender retries), 501 when a notification needs
an EMR server that is not configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapter.envelope import AppendOutcome
from adapter.errors import ConfigError, FHIRInputError, PermanentError, TransientError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.fhir.intake import DEFAULT_TYPES, FHIRIntake, IntakeResult
from adapter.fhir.outcome import (
    fhir_input_error_handler,
    informational,
    operation_outcome,
    outcome_response,
    upstream_error_response,
)
from adapter.fhir.validate import FHIRVersion, Issue, canonical_bytes, parse_json
from adapter.store.base import Store

__all__ = ["fhir_routes"]

log = structlog.get_logger(__name__)

_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir", ""})
_FHIR_VERSIONS: dict[str, FHIRVersion] = {"4.0": "R4", "4.0.1": "R4", "4.3": "R4B", "4.3.0": "R4B",
                                          "5.0": "R5", "5.0.0": "R5"}
_ACK_MESSAGES = {AppendOutcome.STORED: "stored", AppendOutcome.DUPLICATE: "duplicate: already stored",
                 AppendOutcome.CONFLICT: "same version with other content: kept for review"}
Endpoint = Callable[[Request], Awaitable[Response]]


def fhir_routes(*, store: Store, base_path: str = "/fhir", auth_header: str = "Authorization",
                secret: str | None, emr: EMRFHIRClient | None = None,
                criteria: Sequence[str] = DEFAULT_TYPES, types: Sequence[str] = DEFAULT_TYPES,
                patient_identifier_system: str | None = None, fhir_version: FHIRVersion = "R4",
                max_body_bytes: int = 10 * 1024 * 1024,
                catchup_lookback: timedelta = timedelta(hours=24),
                oncall_base_url: str | None = None) -> list[BaseRoute]:
    """The FHIR subscription routes. `secret` is the exact value of `auth_header` that the
    Subscription's channel sends (e.g. ``Bearer s3cret``); None accepts unauthenticated deliveries."""
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    intake = FHIRIntake(store, emr=emr, version=fhir_version, criteria=criteria, types=types,
                        patient_identifier_system=patient_identifier_system,
                        catchup_lookback=catchup_lookback, oncall_base_url=oncall_base_url)
    expected = secret.encode("utf-8") if secret is not None else None
    if expected is None:
        log.warning("fhir_auth_disabled", path=base or "/")

    def guarded(endpoint: Endpoint) -> Endpoint:
        """Auth, then the endpoint; input errors and upstream failures become OperationOutcomes."""
        async def wrapper(request: Request) -> Response:
            if expected is not None:
                given = request.headers.get(auth_header, "").encode("utf-8")
                if not hmac.compare_digest(given, expected):
                    log.warning("fhir_auth_failed", url_path=request.url.path, method=request.method)
                    issue = Issue(None, f"missing or wrong {auth_header} header", "login")
                    return outcome_response(operation_outcome([issue]), 401,
                                            headers={"WWW-Authenticate": auth_header})
            try:
                return await endpoint(request)
            except FHIRInputError as exc:
                return await fhir_input_error_handler(request, exc)
            except (TransientError, PermanentError) as exc:
                log.warning("fhir_upstream_failed", url_path=request.url.path, error_type=type(exc).__name__,
                            status=getattr(exc, "status", None))
                return upstream_error_response(exc)
            except ConfigError as exc:
                return outcome_response(operation_outcome([Issue(None, str(exc), "not-supported")]), 501)
        wrapper.__name__ = endpoint.__name__
        return wrapper

    async def read_body(request: Request) -> tuple[bytes, FHIRVersion]:
        ctype = request.headers.get("content-type", "")
        media, *params = [p.strip() for p in ctype.split(";")]
        media = media.lower()
        if media not in _JSON_TYPES:
            said = "XML is not accepted: " if "xml" in media else ""
            raise FHIRInputError(f"{said}content type {media!r} is not supported; JSON is required",
                                 status=415,
                                 hint="configure the Subscription's payload as application/fhir+json")
        version = fhir_version
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "fhirversion" and value.strip() in _FHIR_VERSIONS:
                version = _FHIR_VERSIONS[value.strip()]
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise _too_large(max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():     # bounded even without a Content-Length
            size += len(chunk)
            if size > max_body_bytes:
                raise _too_large(max_body_bytes)
            chunks.append(chunk)
        return b"".join(chunks), version

    async def resource_endpoint(request: Request) -> Response:
        rtype = request.path_params["resource_type"]
        url_id = request.path_params.get("resource_id")
        if rtype not in intake.types:
            raise FHIRInputError(f"resource type {rtype!r} is not taken here (taken: "
                                 f"{', '.join(sorted(intake.types))})", status=404,
                                 hint="point the Subscription's criteria at Patient or Appointment")
        body, version = await read_body(request)
        if not body.strip():
            if url_id is None:
                raise FHIRInputError("empty body", status=400, hint="send the resource, or POST to the base")
            data = await intake.require_emr("rest-hook without payload").read(rtype, url_id)
            body = canonical_bytes(data)
        else:
            data = parse_json(body)
        if url_id is None:
            url_id = data.get("id") if isinstance(data.get("id"), str) else None
            if url_id is None:
                raise FHIRInputError("the resource has no id", expression=f"{rtype}.id", status=400,
                                     hint="deliver resources with their server id")
        appended = await intake.accept_resource(body, data, resource_type=rtype, url_id=url_id,
                                                version=version)
        status = 201 if request.method == "POST" and appended.outcome is AppendOutcome.STORED else 200
        message = _ACK_MESSAGES[appended.outcome]
        severity = "warning" if appended.outcome is AppendOutcome.CONFLICT else "information"
        return outcome_response(informational(message, severity=severity,
                                              extra={"envelope": str(appended.envelope.id)}), status)

    async def notification_endpoint(request: Request) -> Response:
        body, version = await read_body(request)
        if not body.strip():
            result = await intake.catch_up(reason="rest_hook_ping")
            return _result_response(result, "checked the EMR server")
        data = parse_json(body)
        rtype = data.get("resourceType")
        if isinstance(rtype, str) and rtype in intake.types:
            rid = data.get("id")
            if not isinstance(rid, str):
                raise FHIRInputError("the resource has no id", expression=f"{rtype}.id", status=400)
            appended = await intake.accept_resource(body, data, resource_type=rtype, url_id=rid,
                                                    version=version)
            return outcome_response(informational(appended.outcome.value,
                                                  extra={"envelope": str(appended.envelope.id)}), 200)
        note, result = await intake.accept_notification(data)
        log.info("fhir_notification", event_type=note.type, version=note.version, count=len(result.appended),
                 duplicate=result.duplicates)
        if note.type in ("handshake", "heartbeat", "query-status") and not result.gap:
            return outcome_response(informational(f"{note.type} received"), 200)
        return _result_response(result, f"{note.type} received")

    routes: list[BaseRoute] = [
        Route(base or "/", guarded(notification_endpoint), methods=["POST"], name="fhir_notification"),
        Route(f"{base}/{{resource_type}}/{{resource_id}}", guarded(resource_endpoint),
              methods=["PUT", "POST"], name="fhir_resource"),
        Route(f"{base}/{{resource_type}}", guarded(resource_endpoint), methods=["POST"], name="fhir_create"),
    ]
    if base:
        routes.append(Route(f"{base}/", guarded(notification_endpoint), methods=["POST"]))
    return routes


def _too_large(limit: int) -> FHIRInputError:
    return FHIRInputError(f"the body exceeds the limit of {limit} bytes", status=413,
                          hint="send smaller notifications (id-only content)")


def _result_response(result: IntakeResult, what: str) -> Response:
    """2xx once committed, or the refused resources' issues (they are stored REJECTED)."""
    if result.issues:
        return outcome_response(operation_outcome(result.issues), result.refused_status)
    extra = {"stored": str(result.stored), "duplicates": str(result.duplicates)}
    if result.caught_up:
        extra["caught_up"] = str(result.caught_up)
    return outcome_response(informational(what, extra=extra), 200)
