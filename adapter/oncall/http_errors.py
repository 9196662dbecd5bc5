"""The one place where httpx outcomes become adapter errors.

Decision table (the worker acts on the class alone, see adapter/errors.py):

    timeout / connection error before the request was sent   TransientError
    timeout / connection lost after sending a create (POST)  OutcomeUnknownError  (look before retrying)
    429                                                      TransientError(retry_after from Retry-After)
    500, 502, 503, 504                                       TransientError   (500 too: OnCall's 500s are
                                                                               mostly passing faults)
    other 5xx                                                TransientError
    400                                                      PermanentError(fields=...)
    401, 403, 404, 405, other 4xx                            PermanentError
    URL not on the configured base                           PermanentError   (see urls.Base.url_for)

Messages name the method, the path (query values hidden: they can be e-mails or phones), the
status and the server's own text, read from any of the body shapes OnCall is known to use:
DRF ``{"field": ["msg"], "non_field_errors": [...]}``, ``{"detail": "..."}``, ``{"error": "..."}``,
bare ``["..."]``, HTML pages and empty bodies. Bodies are never logged.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from adapter.errors import AdapterError, OutcomeUnknownError, PermanentError, TransientError
from adapter.oncall.urls import redact_query

__all__ = [
    "TRANSIENT_STATUSES",
    "body_fields",
    "body_text",
    "error_for_exception",
    "error_for_response",
    "parse_retry_after",
]

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_TEXT = 600
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_H1 = re.compile(rb"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
# Keys whose text is shown without its key name.
_BARE = frozenset({"", "detail", "error", "errors", "message", "non_field_errors"})

_HINTS = {
    400: "the request was refused as invalid: fix the mapped fields named above and replay",
    401: "the OnCall API key is missing or invalid: check oncall.api_key and oncall.auth_scheme",
    403: "the API key may not do this: check the key's role (provider or coordinator) and division",
    404: "the object does not exist on this OnCall base (deleted, other region, or a stale crosswalk)",
    405: "OnCall does not allow this method here (no PUT/DELETE: use PATCH, cancel with cancelled=true)",
    429: "OnCall is rate limiting: retried after Retry-After; lower oncall.max_in_flight if it persists",
}


def _flatten(value: Any, prefix: str, out: list[str], fields: dict[str, list[str]]) -> None:
    """Walk any JSON value, collecting "path: message" lines and the field -> messages map."""
    if isinstance(value, dict):
        if not value and prefix:
            return
        for key, item in value.items():
            name = " ".join(str(key).split()) or "?"
            path = f"{prefix}.{name}" if prefix else name
            _flatten(item, path, out, fields)
    elif isinstance(value, list):
        strings = all(not isinstance(v, dict | list) for v in value)
        if strings:
            texts = [_scalar(v) for v in value]
            texts = [t for t in texts if t]
            if texts:
                if prefix:
                    fields.setdefault(prefix, []).extend(texts)
                bare = prefix in _BARE
                out.append("; ".join(texts) if bare else f"{prefix}: {'; '.join(texts)}")
        else:
            for i, item in enumerate(value):
                _flatten(item, f"{prefix}[{i}]" if prefix else f"[{i}]", out, fields)
    else:
        text = _scalar(value)
        if not text:
            return
        if prefix in _BARE:
            out.append(text)
            if prefix == "non_field_errors":
                fields.setdefault(prefix, []).append(text)
        else:
            fields.setdefault(prefix, []).append(text)
            out.append(f"{prefix}: {text}")


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return " ".join(str(value).split())


def _decode(body: bytes | str) -> Any:
    """The JSON value of a body, or the sentinel `_NOT_JSON`."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def body_fields(body: bytes | str) -> dict[str, list[str]]:
    """Field -> messages from a DRF validation body (``{"email": ["Enter a valid ..."]}``)."""
    data = _decode(body)
    fields: dict[str, list[str]] = {}
    if data is not _NOT_JSON:
        _flatten(data, "", [], fields)
    return fields


def body_text(body: bytes | str, content_type: str | None = None) -> str:
    """A one-line readable text for any error body; never raises."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body)
    if not raw.strip():
        return "empty body"
    data = _decode(raw)
    if data is not _NOT_JSON:
        lines: list[str] = []
        _flatten(data, "", lines, {})
        text = " | ".join(lines) if lines else f"JSON body without a message ({type(data).__name__})"
        return _clip(text)
    ctype = (content_type or "").lower()
    if "html" in ctype or raw.lstrip()[:1] == b"<":
        found = _TITLE.search(raw) or _H1.search(raw)
        if found:
            title = _TAGS.sub("", found.group(1).decode("utf-8", "replace"))
            return _clip(f"HTML page: {' '.join(title.split())}")
        return f"HTML page ({len(raw)} bytes)"
    return _clip(" ".join(raw.decode("utf-8", "replace").split()))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):   # NaN / inf
        return None
    return max(0.0, seconds)


def error_for_response(method: str, url: str, status: int, headers: httpx.Headers | dict[str, str],
                       body: bytes) -> AdapterError:
    """The adapter error for a non-2xx answer."""
    headers = httpx.Headers(headers)
    text = body_text(body, headers.get("content-type"))
    where = f"OnCall {method} {redact_query(url)} answered {status}"
    message = f"{where}: {text}"
    if status in TRANSIENT_STATUSES or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
        hint = _HINTS.get(status, "a server-side failure: retried with backoff")
        return TransientError(message, retry_after=retry_after, status=status, hint=hint)
    fields = body_fields(body) if status == 400 else None
    return PermanentError(message, status=status, fields=fields,
                          hint=_HINTS.get(status, "the request is refused: retrying cannot help"))


# Exceptions raised before any byte of the request left: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def error_for_exception(method: str, url: str, exc: httpx.HTTPError, *, idempotent: bool) -> AdapterError:
    """The adapter error for a transport failure (no answer)."""
    where = f"OnCall {method} {redact_query(url)}"
    kind = type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return PermanentError(f"{where}: invalid URL ({kind})", hint="check oncall.base_url")
    if isinstance(exc, _NOT_SENT):
        return TransientError(f"{where}: no connection ({kind}: {exc})",
                              hint="OnCall unreachable: retried with backoff; check network and base URL")
    if not idempotent:
        return OutcomeUnknownError(
            f"{where}: sent but no answer ({kind}); the create may have been applied",
            hint="look the object up (metadata / e-mail) and adopt it before creating again")
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{where}: timed out ({kind})", hint="retried with backoff; "
                              "raise oncall.read_timeout if OnCall is slow")
    return TransientError(f"{where}: connection lost ({kind})", hint="retried with backoff")
