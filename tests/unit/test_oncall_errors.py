"""Error translation for the OnCall client (pure): body shapes, Retry-After, the status table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import OutcomeUnknownError, PermanentError, TransientError
from adapter.oncall.http_errors import (
    body_fields,
    body_text,
    error_for_exception,
    error_for_response,
    parse_retry_after,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_body_gives_a_one_line_message(value: object) -> None:
    """Whatever JSON OnCall sends, the message is a non-empty single line and parsing never raises."""
    body = json.dumps(value).encode()
    text = body_text(body, "application/json")
    assert isinstance(text, str) and text and "\n" not in text and len(text) <= 600
    assert isinstance(body_fields(body), dict)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, "text/html", "application/json", "text/plain"]))
def test_any_bytes_give_a_message(body: bytes, content_type: str | None) -> None:
    """Arbitrary bytes (truncated JSON, binary, HTML) never raise either."""
    assert isinstance(body_text(body, content_type), str)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"email": ["Enter a valid email address."], "non_field_errors": ["Bad."]}',
     "email: Enter a valid email address. | Bad."),
    (b'{"detail": "Not found."}', "Not found."),
    (b'{"error": "Appointment is locked"}', "Appointment is locked"),
    (b'["Something went wrong"]', "Something went wrong"),
    (b'{"participants": [{}, {"email": ["Enter a valid email address."]}]}',
     "participants[1].email: Enter a valid email address."),
    (b"<html><head><title>502 Bad Gateway</title></head></html>", "HTML page: 502 Bad Gateway"),
    (b"", "empty body"),
    (b"  ", "empty body"),
])
def test_known_body_shapes(body: bytes, expected: str) -> None:
    """DRF field errors, detail, error, bare list, nested list errors, HTML and empty bodies."""
    assert body_text(body) == expected


def test_fields_from_drf_validation_body() -> None:
    """400 bodies give field -> messages, nested paths included."""
    fields = body_fields(b'{"title": ["This field is required."], "participants": [{}, {"fee": ["Bad."]}]}')
    assert fields == {"title": ["This field is required."], "participants[1].fee": ["Bad."]}


def test_retry_after_seconds_and_date() -> None:
    """Retry-After as delta-seconds or HTTP-date; garbage or absent gives None; never negative."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


@pytest.mark.parametrize(("status", "cls"), [
    (400, PermanentError), (401, PermanentError), (403, PermanentError), (404, PermanentError),
    (405, PermanentError), (409, PermanentError), (429, TransientError), (500, TransientError),
    (502, TransientError), (503, TransientError), (504, TransientError), (507, TransientError),
])
def test_status_table(status: int, cls: type[Exception]) -> None:
    """Every status maps to the class the worker acts on; messages name method, path and status."""
    error = error_for_response("GET", "https://api.oncallhealth.ca/contacts/?email=ada@example.test&page=2",
                               status, {"retry-after": "3"}, b'{"detail": "x"}')
    assert type(error) is cls
    text = str(error)
    assert "OnCall GET /contacts/?email=...&page=2 answered" in text and str(status) in text
    assert "ada@example.test" not in text
    if status == 429:
        assert isinstance(error, TransientError) and error.retry_after == 3.0


def test_transport_failures() -> None:
    """No connection -> transient; a create sent without answer -> outcome unknown; a read -> transient."""
    request = httpx.Request("POST", "https://api.oncallhealth.ca/appointments/")
    url = str(request.url)
    refused = httpx.ConnectError("refused", request=request)
    connect = error_for_exception("POST", url, refused, idempotent=False)
    assert type(connect) is TransientError
    timed_out = error_for_exception("POST", url, httpx.ReadTimeout("slow", request=request), idempotent=False)
    assert isinstance(timed_out, OutcomeUnknownError)
    gone = httpx.RemoteProtocolError("gone", request=request)
    lost = error_for_exception("POST", url, gone, idempotent=False)
    assert isinstance(lost, OutcomeUnknownError)
    read = error_for_exception("GET", url, httpx.ReadTimeout("slow", request=request), idempotent=True)
    assert type(read) is TransientError
