"""OnCallClient against the sandbox over real HTTP: every operation, paging, each error kind."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import anyio
import pytest

from adapter.errors import OutcomeUnknownError, PermanentError, TransientError
from adapter.oncall.client import OnCallClient
from adapter.oncall.sandbox.server import bind_socket
from tests.integration.oncall_fixtures import (
    TOKEN,
    SandboxHandle,
    make_oncall_sandbox,
    oncall_client,
    oncall_sandbox,
)

__all__ = ["make_oncall_sandbox", "oncall_client", "oncall_sandbox"]   # fixtures used here

pytestmark = pytest.mark.anyio
MakeSandbox = Callable[..., SandboxHandle]
EST = timezone(timedelta(hours=-5))


def appointment_payload(base: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Consult", "type": "online", "datetime": datetime(2030, 5, 1, 9, 0, tzinfo=EST),
        "duration": 20, "division": f"{base}/divisions/1/",
        "participants": [{"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.test",
                          "fee": Decimal("15.50")}],
        "metadata": {"emr_appointment_id": "A1"},
    }
    body.update(over)
    return body


def contact_payload(i: int, **over: Any) -> dict[str, Any]:
    body = {"first_name": f"First{i}", "last_name": f"Last{i}", "email": f"p{i}@example.test",
            "phone": f"416-555-01{i:02d}"}
    body.update(over)
    return body


def client_for(sandbox: SandboxHandle, **opts: Any) -> OnCallClient:
    opts.setdefault("get_retries", 0)
    return OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, seed=3, **opts)


async def test_appointment_lifecycle(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle) -> None:
    """create -> get -> patch -> cancel; typed fields (aware datetime, Decimal fee, ids from URLs)."""
    base = oncall_sandbox.base_url
    created = await oncall_client.create_appointment(appointment_payload(base))
    assert created.id == 1 and created.url == f"{base}/appointments/1/"
    assert created.datetime == datetime(2030, 5, 1, 14, 0, tzinfo=UTC)
    assert created.participants[0].fee == Decimal("15.5") and created.participants[0].id == 1
    fetched = await oncall_client.get_appointment(1)
    assert fetched.model_dump() == created.model_dump()
    patched = await oncall_client.patch_appointment(created.url, {"duration": 45, "title": "Longer"})
    assert (patched.duration, patched.title) == (45, "Longer")
    cancelled = await oncall_client.cancel_appointment(created.url)
    assert cancelled.cancelled is True
    with pytest.raises(PermanentError) as refused:
        await oncall_client.patch_appointment(created.url, {"cancelled": False})
    assert refused.value.status == 400 and "cancelled" in refused.value.fields


async def test_participants(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle) -> None:
    """add_participant PATCHes existing ones by url plus the new one; participants get/patch/cancel by URL."""
    created = await oncall_client.create_appointment(appointment_payload(oncall_sandbox.base_url))
    updated, added = await oncall_client.add_participant(created.url, {"name": "Grace Hopper",
                                                                       "email": "grace@example.test"})
    assert [p.id for p in updated.participants] == [1, 2] and added.id == 2
    assert added.email == "grace@example.test"
    got = await oncall_client.get_participant(added.url or "")
    assert got.appointment == created.url
    patched = await oncall_client.patch_participant(2, {"fee": "7.25", "last_name": "Hopper"})
    assert patched.fee == Decimal("7.25") and patched.last_name == "Hopper"
    assert (await oncall_client.cancel_participant(2)).cancelled is True
    kinds = [e["kind"] for e in oncall_sandbox.emails()]
    assert kinds == ["invitation", "invitation", "participant_cancelled"]


async def test_contacts_and_custom_field(oncall_client: OnCallClient) -> None:
    """create/get/patch contacts; custom_field_id reads custom_field_names; values merge per key."""
    created = await oncall_client.create_contact(contact_payload(1, sex="female", date_of_birth="1990-02-03"))
    assert created.id == 1 and created.name == "First1 Last1"
    field_id = await oncall_client.custom_field_id("EMR id")
    assert field_id == "2"
    patched = await oncall_client.patch_contact(created.url, {"custom_field_values": {field_id: "MRN-1"}})
    assert patched.custom_value("EMR id") == "MRN-1"
    assert (await oncall_client.get_contact(1)).date_of_birth is not None
    with pytest.raises(PermanentError, match="no OnCall contact custom field labelled 'Chart'"):
        await oncall_client.custom_field_id("Chart")


async def test_custom_field_id_without_contacts(oncall_client: OnCallClient) -> None:
    """With no contact to read custom_field_names from, the error says so and what to do."""
    with pytest.raises(PermanentError, match="no contact to read them from"):
        await oncall_client.custom_field_id("EMR id")


async def test_paging_follows_next_across_pages(oncall_client: OnCallClient,
                                                oncall_sandbox: SandboxHandle) -> None:
    """Page size 2: iter_contacts and list_appointments read every page, in order."""
    base = oncall_sandbox.base_url
    oncall_sandbox.seed(contacts=[contact_payload(i) for i in range(7)],
                        appointments=[appointment_payload(base, datetime="2030-01-01T10:00:00Z",
                                                          title=f"T{i}", participants=[{"name": "X"}])
                                      for i in range(5)])
    assert [c.id async for c in oncall_client.iter_contacts()] == list(range(1, 8))
    assert [a.title async for a in oncall_client.list_appointments()] == [f"T{i}" for i in range(5)]
    assert [p.id for p in await oncall_client.list_providers()] == [1, 2]
    assert [d.id for d in await oncall_client.list_divisions()] == [1, 2]
    assert (await oncall_client.get_provider(2)).full_name
    assert (await oncall_client.get_division(f"{base}/divisions/1/")).name


@pytest.mark.parametrize("filters", [True, False])
async def test_find_contacts_rechecks_every_result(make_oncall_sandbox: MakeSandbox, filters: bool) -> None:
    """find_contacts answers right whether or not OnCall honours ?email=/?name=/?phone=."""
    sandbox = make_oncall_sandbox(page_size=2, contact_filters=filters)
    sandbox.seed(contacts=[contact_payload(i) for i in range(5)]
                 + [contact_payload(9, email="Ada.Lovelace@Example.test", phone="+1 (905) 555-0199",
                                    first_name="Ada", last_name="Lovelace")])
    async with client_for(sandbox) as client:
        by_email = await client.find_contacts(email="ada.lovelace@example.TEST")
        by_phone = await client.find_contacts(phone="905.555.0199")
        by_name = await client.find_contacts(name="lovelace ada")
        nobody = await client.find_contacts(email="nobody@example.test")
        with pytest.raises(PermanentError):
            await client.find_contacts()
    assert [c.id for c in by_email] == [c.id for c in by_phone] == [c.id for c in by_name] == [6]
    assert nobody == []


async def test_contact_appointments(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle) -> None:
    """GET /contacts/{id}/appointments/ lists the contact's appointments (matched by e-mail)."""
    contact = await oncall_client.create_contact(contact_payload(1, email="ada@example.test"))
    made = await oncall_client.create_appointment(appointment_payload(oncall_sandbox.base_url))
    assert [a.url for a in await oncall_client.contact_appointments(contact)] == [made.url]
    assert [a.url for a in await oncall_client.contact_appointments(contact.url)] == [made.url]


async def test_resolve_webhook_url_onto_the_configured_base(oncall_client: OnCallClient,
                                                            oncall_sandbox: SandboxHandle) -> None:
    """The documented webhook URL (other host, no slash) resolves to the configured base by id."""
    resolved = oncall_client.resolve_appointment_url("https://api.oncallhealth.com/appointments/17")
    assert resolved == f"{oncall_sandbox.base_url}/appointments/17/"
    with pytest.raises(PermanentError):
        oncall_client.resolve_appointment_url("https://api.oncallhealth.com/contacts/17/")


async def test_key_never_sent_to_another_host(oncall_client: OnCallClient) -> None:
    """A URL on another host, scheme or port is refused before sending, without showing the key."""
    for url in ("https://evil.example/appointments/1/", "https://127.0.0.1/appointments/1/",
                "http://127.0.0.1:1/appointments/1/"):
        with pytest.raises(PermanentError, match="refusing to send the OnCall API key to") as refused:
            await oncall_client.get_appointment(url)
        assert TOKEN not in str(refused.value)


async def test_foreign_next_link_refused(make_oncall_sandbox: MakeSandbox) -> None:
    """A `next` link on another host stops paging with PermanentError; nothing is sent there."""
    sandbox = make_oncall_sandbox(page_size=2, base_url="https://api.oncallhealth.ca")
    sandbox.seed(contacts=[contact_payload(i) for i in range(3)])
    seen: list[int | None] = []
    async with client_for(sandbox) as client:
        with pytest.raises(PermanentError, match=r"api\.oncallhealth\.ca"):
            async for contact in client.iter_contacts():
                seen.append(contact.id)
    assert seen == [1, 2]


async def test_redirects_not_followed(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle) -> None:
    """A 301 (missing trailing slash) is not followed: the Authorization header goes nowhere else."""
    with pytest.raises(PermanentError, match="answered 301"):
        await oncall_client.get_division(f"{oncall_sandbox.base_url}/divisions/1")


@pytest.mark.parametrize(("shape", "expected"), [
    (None, "title: This field is required."),
    ("detail", "title: This field is required."),
    ("error", "title: This field is required."),
    ("list", "title: This field is required."),
    ("html", "HTML page: Error 400"),
    ("empty", "empty body"),
])
async def test_400_error_shapes(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle,
                                shape: str | None, expected: str) -> None:
    """Every 400 body shape becomes PermanentError naming method, path, status and the server's text."""
    if shape:
        oncall_sandbox.faults({"path": "/appointments/", "error_shape": shape})
    with pytest.raises(PermanentError) as refused:
        await oncall_client.create_appointment({"type": "online"})
    message = str(refused.value)
    assert refused.value.status == 400 and "OnCall POST /appointments/ answered 400" in message
    assert expected in message
    if shape is None:
        assert refused.value.fields["title"] == ["This field is required."]


async def test_401_404_405(make_oncall_sandbox: MakeSandbox, oncall_client: OnCallClient) -> None:
    """401 (bad key), 404 (missing object) and 405 (DELETE) are PermanentError with DRF's detail text."""
    sandbox = make_oncall_sandbox()
    async with OnCallClient(api_key="wrong", base_url=sandbox.base_url) as bad:
        with pytest.raises(PermanentError, match="answered 401: Invalid token") as unauthorised:
            await bad.list_divisions()
    assert "wrong" not in str(unauthorised.value)
    with pytest.raises(PermanentError, match=r"answered 404: Not found\.") as missing:
        await oncall_client.get_appointment(99)
    assert missing.value.status == 404
    with pytest.raises(PermanentError, match=r'answered 405: Method "DELETE" not allowed\.'):
        await oncall_client._request("DELETE", "/appointments/1/")


@pytest.mark.parametrize(("status", "text"), [(500, "Server Error (500)"), (502, "502 Bad Gateway"),
                                              (503, "empty body"), (504, "504 Gateway Time-out")])
async def test_5xx_are_transient(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle,
                                 status: int, text: str) -> None:
    """500, 502, 503 and 504 (HTML or empty bodies) are TransientError with a readable message."""
    oncall_sandbox.faults({"path": "/divisions/", f"rate_{status}": 1.0})
    with pytest.raises(TransientError) as failed:
        await oncall_client.list_divisions()
    assert failed.value.status == status and text in str(failed.value)
    assert not isinstance(failed.value, OutcomeUnknownError)


@pytest.mark.parametrize("as_date", [False, True])
async def test_429_carries_retry_after(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle,
                                       as_date: bool) -> None:
    """429 -> TransientError with retry_after from Retry-After, in seconds or as an HTTP-date."""
    oncall_sandbox.faults({"path": "/providers/", "rate_429": 1.0, "retry_after": 30,
                           "retry_after_date": as_date})
    with pytest.raises(TransientError) as throttled:
        await oncall_client.list_providers()
    assert throttled.value.status == 429 and throttled.value.retry_after is not None
    assert 28 <= throttled.value.retry_after <= 30


async def test_get_retries_honour_retry_after(oncall_sandbox: SandboxHandle) -> None:
    """A GET throttled once with Retry-After: 1 is re-sent after at least one second and succeeds."""
    oncall_sandbox.faults({"path": "/providers/", "rate_429": 1.0, "retry_after": 1, "times": 1})
    async with client_for(oncall_sandbox, get_retries=2) as client:
        started = time.perf_counter()
        providers = await client.list_providers()
    assert len(providers) == 2 and time.perf_counter() - started >= 1.0


async def test_create_timeout_is_outcome_unknown(oncall_sandbox: SandboxHandle) -> None:
    """A POST whose answer does not come in time -> OutcomeUnknownError (it was in fact applied);
    a GET timing out is a plain TransientError."""
    oncall_sandbox.faults({"path": "/appointments/*", "latency_ms": 1500, "latency_after_processing": True})
    async with client_for(oncall_sandbox, read_timeout=0.3) as client:
        with pytest.raises(OutcomeUnknownError, match="may have been applied"):
            await client.create_appointment(appointment_payload(oncall_sandbox.base_url))
        with pytest.raises(TransientError) as read:
            await client.get_appointment(1)
    assert not isinstance(read.value, OutcomeUnknownError)
    assert len(oncall_sandbox.state()["appointments"]) == 1


async def test_dropped_connection_after_create_is_outcome_unknown(oncall_sandbox: SandboxHandle) -> None:
    """The connection dropped after the create was applied -> OutcomeUnknownError, never a silent retry."""
    oncall_sandbox.faults({"path": "/appointments/", "method": "POST", "drop_rate": 1.0,
                           "drop_after_processing": True})
    async with client_for(oncall_sandbox) as client:
        with pytest.raises(OutcomeUnknownError):
            await client.create_appointment(appointment_payload(oncall_sandbox.base_url))
        oncall_sandbox.faults({"path": "/appointments/*", "drop_rate": 1.0})
        with pytest.raises(TransientError) as dropped_get:
            await client.get_appointment(1)
    assert not isinstance(dropped_get.value, OutcomeUnknownError)
    assert len(oncall_sandbox.state()["appointments"]) == 1


async def test_connection_refused_is_transient() -> None:
    """Nothing listening: TransientError (the request never left, so even a create is safe to retry)."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    async with OnCallClient(api_key=TOKEN, base_url=f"http://127.0.0.1:{port}", get_retries=0) as client:
        with pytest.raises(TransientError) as refused:
            await client.create_contact(contact_payload(1))
    assert not isinstance(refused.value, OutcomeUnknownError)


async def test_fee_as_string_parsed(oncall_client: OnCallClient, oncall_sandbox: SandboxHandle) -> None:
    """Fees sent as decimal strings (the internal API's shape) parse to the same Decimal."""
    await oncall_client.create_appointment(appointment_payload(oncall_sandbox.base_url))
    oncall_sandbox.faults({"path": "/appointments/*", "fee_as_string": True})
    fetched = await oncall_client.get_appointment(1)
    assert fetched.participants[0].fee == Decimal("15.50")


async def test_naive_datetime_refused_before_sending(oncall_client: OnCallClient,
                                                     oncall_sandbox: SandboxHandle) -> None:
    """A datetime without offset is refused by the client, naming the JSON path."""
    payload = appointment_payload(oncall_sandbox.base_url, datetime=datetime(2030, 1, 1, 9, 0))
    with pytest.raises(PermanentError, match=r"\$\.datetime: datetime .* has no UTC offset"):
        await oncall_client.create_appointment(payload)
    assert oncall_sandbox.state()["appointments"] == []


async def test_max_in_flight_bounds_concurrency(oncall_sandbox: SandboxHandle) -> None:
    """With max_in_flight=2 and 200 ms answers, 6 concurrent GETs take at least 3 rounds."""
    oncall_sandbox.faults({"path": "/divisions/*", "latency_ms": 200})
    async with client_for(oncall_sandbox, max_in_flight=2) as client:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(client.get_division, 1)
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.6
