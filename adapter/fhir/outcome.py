"""OperationOutcome bodies and the HTTP exception handlers that answer FHIR errors with them.

`FHIR_EXCEPTION_HANDLERS` is the table the lead installs on the one Starlette app: a
`FHIRInputError` becomes a 4xx OperationOutcome whose `issue.expression` holds the path. Bodies
never echo the payload; diagnostics say what and where, the `hint` what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from adapter.errors import FHIRInputError, PermanentError, TransientError
from adapter.fhir.validate import FHIRValidationError, Issue

__all__ = [
    "FHIR_EXCEPTION_HANDLERS",
    "FHIR_JSON",
    "fhir_input_error_handler",
    "informational",
    "operation_outcome",
    "outcome_response",
    "upstream_error_response",
]

FHIR_JSON = "application/fhir+json"
log = structlog.get_logger(__name__)


def operation_outcome(issues: Sequence[Issue], *, hint: str | None = None) -> dict[str, Any]:
    """An OperationOutcome resource (R4/R4B/R5 share its shape) from issues."""
    out = []
    for issue in issues:
        entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code, "diagnostics": issue.message}
        if hint:
            entry["diagnostics"] = f"{issue.message} ({hint})"
        if issue.expression:
            entry["expression"] = [issue.expression]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def informational(message: str, *, code: str = "informational", severity: str = "information",
                  extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A one-issue OperationOutcome for a success (what was stored, or why nothing was)."""
    outcome = operation_outcome([Issue(None, message, code, severity)])
    if extra:
        # Ids only (envelope ids, counts): never content.
        outcome["issue"][0]["details"] = {"text": ", ".join(f"{k}={v}" for k, v in extra.items())}
    return outcome


def outcome_response(outcome: Mapping[str, Any], status: int, *,
                     headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(outcome, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=dict(headers or {}))


def _issues_of(exc: FHIRInputError) -> list[Issue]:
    if isinstance(exc, FHIRValidationError):
        return exc.issues
    code = {401: "login", 403: "forbidden", 404: "not-found", 413: "too-costly", 415: "not-supported"}
    return [Issue(exc.expression, exc.message, code.get(exc.status, "invalid"))]


async def fhir_input_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler: FHIRInputError -> its status (4xx) with an OperationOutcome."""
    assert isinstance(exc, FHIRInputError)
    status = exc.status if 400 <= exc.status < 500 else 400
    issues = _issues_of(exc)
    log.info("fhir_input_refused", status=status, path=request.url.path, issues=len(issues),
             expression=issues[0].expression if issues else None)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return outcome_response(operation_outcome(issues, hint=exc.hint), status, headers=headers)


def upstream_error_response(exc: TransientError | PermanentError) -> Response:
    """The EMR's FHIR server failed while we fetched what a notification points at: nothing was
    stored, so answer 5xx and let the sender retry (503 when a retry can help, 502 otherwise)."""
    transient = isinstance(exc, TransientError)
    issue = Issue(None, exc.message, "transient" if transient else "exception",
                  "error" if transient else "fatal")
    headers = {}
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return outcome_response(operation_outcome([issue], hint=exc.hint), 503 if transient else 502,
                            headers=headers)


# Installed by the app assembly: `Starlette(..., exception_handlers={**FHIR_EXCEPTION_HANDLERS, ...})`.
FHIR_EXCEPTION_HANDLERS: dict[Any, Any] = {FHIRInputError: fhir_input_error_handler}
