"""The OnCall sandbox over real HTTP: each rule of the reference (oncall-api.md) one by one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.oncall_fixtures import (
    COORDINATOR_TOKEN,
    SandboxHandle,
    WebhookReceiver,
    make_oncall_sandbox,
    oncall_sandbox,
    webhook_receiver,
)

__all__ = ["make_oncall_sandbox", "oncall_sandbox", "webhook_receiver"]   # fixtures used here

MakeSandbox = Callable[..., SandboxHandle]


def appointment(base: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Follow-up", "type": "online", "datetime": "2030-03-01T09:30:00-05:00", "duration": 30,
        "division": f"{base}/divisions/1/",
        "participants": [{"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.test"}],
    }
    body.update(over)
    return body


def create(sandbox: SandboxHandle, **over: Any) -> dict[str, Any]:
    with sandbox.api() as api:
        response = api.post("/appointments/", json=appointment(sandbox.base_url, **over))
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def test_create_returns_hyperlinked_appointment_with_participant_urls(oncall_sandbox: SandboxHandle) -> None:
    """POST /appointments/ -> 201, absolute URLs with trailing slashes, UTC datetime with Z, ids 1, 2, ..."""
    first = create(oncall_sandbox)
    second = create(oncall_sandbox)
    base = oncall_sandbox.base_url
    assert first["url"] == f"{base}/appointments/1/" and second["url"] == f"{base}/appointments/2/"
    assert first["datetime"] == "2030-03-01T14:30:00Z"
    assert first["division"] == f"{base}/divisions/1/" and first["provider"] == f"{base}/providers/1/"
    assert first["participants"][0]["url"] == f"{base}/participants/1/"
    assert first["participants"][0]["appointment"] == first["url"]
    assert first["cancelled"] is False and first["status"] == "Incomplete"


def test_required_fields_each_named(oncall_sandbox: SandboxHandle) -> None:
    """Missing title/type/datetime/duration/division/participants -> 400 naming each field, DRF style."""
    with oncall_sandbox.api() as api:
        response = api.post("/appointments/", json={})
    assert response.status_code == 400
    assert response.json() == {name: ["This field is required."] for name in
                               ("title", "type", "duration", "division", "participants", "datetime")}


def test_type_enum_and_message_needs_no_datetime(oncall_sandbox: SandboxHandle) -> None:
    """`type` is one of online/inperson/phone/message; a message appointment needs no datetime."""
    base = oncall_sandbox.base_url
    with oncall_sandbox.api() as api:
        bad = api.post("/appointments/", json=appointment(base, type="video"))
        body = appointment(base, type="message")
        del body["datetime"]
        ok = api.post("/appointments/", json=body)
    assert bad.status_code == 400 and bad.json() == {"type": ['"video" is not a valid choice.']}
    assert ok.status_code == 201 and ok.json()["datetime"] is None


def test_naive_datetime_and_bad_hyperlinks_refused(oncall_sandbox: SandboxHandle) -> None:
    """A datetime without offset, a division URL without trailing slash or of a missing object -> 400."""
    base = oncall_sandbox.base_url
    with oncall_sandbox.api() as api:
        naive = api.post("/appointments/", json=appointment(base, datetime="2030-03-01T09:30:00"))
        no_slash = api.post("/appointments/", json=appointment(base, division=f"{base}/divisions/1"))
        missing = api.post("/appointments/", json=appointment(base, division=f"{base}/divisions/99/"))
    assert "datetime" in naive.json()
    assert no_slash.json() == {"division": ["Invalid hyperlink - No URL match."]}
    assert missing.json() == {"division": ["Invalid hyperlink - Object does not exist."]}


@pytest.mark.parametrize(("count", "status"), [(0, 400), (1, 201), (25, 201), (26, 400)])
def test_one_to_25_participants(oncall_sandbox: SandboxHandle, count: int, status: int) -> None:
    """An appointment has 1 to 25 participants."""
    people = [{"name": f"P{i}", "email": f"p{i}@example.test"} for i in range(count)]
    with oncall_sandbox.api() as api:
        response = api.post("/appointments/", json=appointment(oncall_sandbox.base_url, participants=people))
    assert response.status_code == status, response.text
    if status == 400:
        assert "participants" in response.json()


def test_participant_errors_are_nested_per_item(oncall_sandbox: SandboxHandle) -> None:
    """An invalid participant is reported at its index, the valid ones as {} (DRF list errors)."""
    people = [{"name": "Ok", "email": "ok@example.test"}, {"name": "Bad", "email": "not-an-email"}]
    with oncall_sandbox.api() as api:
        response = api.post("/appointments/", json=appointment(oncall_sandbox.base_url, participants=people))
    assert response.json() == {"participants": [{}, {"email": ["Enter a valid email address."]}]}


@pytest.mark.parametrize("metadata", [
    {f"k{i}": i for i in range(51)},
    {"k" * 101: "x"},
    {"long": "x" * 2001},
    {"big": 2 ** 31},
    {"nested": {"a": 1}},
    {"list": [1]},
    ["not", "an", "object"],
])
def test_metadata_limits_refused(oncall_sandbox: SandboxHandle, metadata: Any) -> None:
    """metadata: flat, <= 50 keys, keys <= 100 chars, values str <= 2000 / 32-bit int / bool / null."""
    with oncall_sandbox.api() as api:
        response = api.post("/appointments/", json=appointment(oncall_sandbox.base_url, metadata=metadata))
    assert response.status_code == 400 and "metadata" in response.json()


def test_metadata_at_the_limits_accepted(oncall_sandbox: SandboxHandle) -> None:
    """50 keys of 100 chars, a 2000-char string, the 32-bit bounds, bools and null are accepted."""
    metadata: dict[str, Any] = {f"{i:03d}".ljust(100, "k"): None for i in range(45)}
    metadata.update({"s": "x" * 2000, "min": -(2 ** 31), "max": 2 ** 31 - 1, "t": True, "f": False})
    created = create(oncall_sandbox, metadata=metadata)
    assert created["metadata"] == metadata


def test_cancel_is_one_way_and_emails_everyone(oncall_sandbox: SandboxHandle) -> None:
    """PATCH cancelled=true cancels and e-mails each participant; cancelled=false afterwards -> 400."""
    people = [{"name": "A", "email": "a@example.test"}, {"name": "B", "email": "b@example.test"}]
    created = create(oncall_sandbox, participants=people)
    with oncall_sandbox.api() as api:
        cancelled = api.patch("/appointments/1/", json={"cancelled": True})
        undo = api.patch("/appointments/1/", json={"cancelled": False})
    assert created["cancelled"] is False and cancelled.json()["cancelled"] is True
    assert undo.status_code == 400 and undo.json() == {
        "cancelled": ["A cancelled appointment cannot be reinstated."]}
    kinds = [(e["kind"], e["to_email"]) for e in oncall_sandbox.emails()]
    assert kinds == [("invitation", "a@example.test"), ("invitation", "b@example.test"),
                     ("appointment_cancelled", "a@example.test"), ("appointment_cancelled", "b@example.test")]


def test_reschedule_emails_and_participant_cancel(oncall_sandbox: SandboxHandle) -> None:
    """A new datetime e-mails the participants; a participant cancelled by URL is e-mailed alone, one way."""
    create(oncall_sandbox)
    with oncall_sandbox.api() as api:
        moved = api.patch("/appointments/1/", json={"datetime": "2030-03-02T10:00:00Z"})
        gone = api.patch("/participants/1/", json={"cancelled": True})
        back = api.patch("/participants/1/", json={"cancelled": False})
    assert moved.json()["datetime"] == "2030-03-02T10:00:00Z"
    assert gone.json()["cancelled"] is True and back.status_code == 400
    assert [e["kind"] for e in oncall_sandbox.emails()] == [
        "invitation", "appointment_rescheduled", "participant_cancelled"]


def test_participants_patch_adds_by_absence_of_url(oncall_sandbox: SandboxHandle) -> None:
    """PATCH participants: existing ones by url kept (and updated), one without url added and invited."""
    created = create(oncall_sandbox)
    existing = created["participants"][0]["url"]
    with oncall_sandbox.api() as api:
        response = api.patch("/appointments/1/", json={"participants": [
            {"url": existing, "fee": "12.50"}, {"name": "Grace", "email": "grace@example.test"}]})
        foreign = api.patch("/appointments/1/", json={"participants": [
            {"url": f"{oncall_sandbox.base_url}/participants/99/"}]})
    people = response.json()["participants"]
    assert people[0]["url"] == existing and len(people) == 2
    assert people[0]["fee"] == 12.5 and people[1]["email"] == "grace@example.test"
    assert foreign.status_code == 400 and "participants" in foreign.json()
    assert [e["to_email"] for e in oncall_sandbox.emails()] == ["ada@example.test", "grace@example.test"]


def test_participant_writable_fields(oncall_sandbox: SandboxHandle) -> None:
    """A participant is addressable by URL; name/first_name/last_name/email/fee/cancelled are writable."""
    create(oncall_sandbox)
    fields = {"name": "Ada K.", "first_name": "Ada", "last_name": "King", "email": "ada.king@example.test",
              "fee": 20}
    with oncall_sandbox.api() as api:
        patched = api.patch("/participants/1/", json={**fields, "user_id": 7, "appointment": "x"}).json()
        fetched = api.get("/participants/1/").json()
    assert patched == fetched
    assert {k: fetched[k] for k in fields} == fields and fetched["user_id"] is None


def test_contacts_custom_fields_merged_per_key(make_oncall_sandbox: MakeSandbox) -> None:
    """PATCH of one custom field id leaves the other ids as they were."""
    sandbox = make_oncall_sandbox(custom_fields={"2": "EMR id", "3": "Chart"})
    with sandbox.api() as api:
        created = api.post("/contacts/", json={"first_name": "Ada", "last_name": "Lovelace",
                                                "custom_field_values": {"2": "MRN1", "3": "C9"}}).json()
        patched = api.patch(created["url"], json={"custom_field_values": {"3": "C10"}}).json()
        unknown = api.patch(created["url"], json={"custom_field_values": {"9": "x"}})
    assert created["custom_field_names"] == {"2": "EMR id", "3": "Chart"}
    assert patched["custom_field_values"] == {"2": "MRN1", "3": "C10"}
    assert unknown.status_code == 400 and "custom_field_values" in unknown.json()


def test_contact_queries_by_email_name_phone(oncall_sandbox: SandboxHandle) -> None:
    """GET /contacts/?email= (any case), ?name=, ?phone= (digits) filter; unknown params are ignored."""
    oncall_sandbox.seed(contacts=[
        {"first_name": "Ada", "last_name": "Lovelace", "email": "Ada@Example.test",
         "phone": "+1 (416) 555-0101"},
        {"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.test",
         "phone": "416-555-0202"},
    ])
    with oncall_sandbox.api() as api:
        def names(query: str) -> list[str]:
            return [c["name"] for c in api.get(f"/contacts/{query}").json()["results"]]

        assert names("?email=ada@example.TEST") == ["Ada Lovelace"]
        assert names("?name=hopper") == ["Grace Hopper"]
        assert names("?phone=4165550101") == ["Ada Lovelace"]
        assert names("?mrn=123") == ["Ada Lovelace", "Grace Hopper"]


def test_auth_errors_and_not_found_and_method_not_allowed(oncall_sandbox: SandboxHandle) -> None:
    """401 without or with a bad key; 404 JSON for a missing object; 405 for PUT/DELETE once authenticated."""
    base = oncall_sandbox.base_url
    create(oncall_sandbox)
    with httpx.Client(base_url=base) as anonymous, oncall_sandbox.api("wrong") as bad, \
            oncall_sandbox.api() as api:
        assert anonymous.get("/appointments/").json() == {
            "detail": "Authentication credentials were not provided."}
        assert bad.get("/appointments/").json() == {"detail": "Invalid token."}
        assert anonymous.delete("/appointments/1/").status_code == 401
        missing = api.get("/appointments/99/")
        deleted = api.delete("/appointments/1/")
        put = api.put("/appointments/1/", json={})
        unknown_route = api.get("/nothing-here/")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found."}
    assert deleted.status_code == 405 and deleted.json() == {"detail": 'Method "DELETE" not allowed.'}
    assert put.status_code == 405 and "PATCH" in put.headers["allow"]
    assert unknown_route.status_code == 404 and "text/html" in unknown_route.headers["content-type"]


def test_missing_trailing_slash(oncall_sandbox: SandboxHandle) -> None:
    """APPEND_SLASH: a GET without trailing slash -> 301 to the slashed path; a POST -> 404."""
    with oncall_sandbox.api() as api:
        get = api.get("/divisions?page=1")
        post = api.post("/appointments", json={})
    assert get.status_code == 301 and get.headers["location"] == "/divisions/?page=1"
    assert post.status_code == 404


def test_pagination(oncall_sandbox: SandboxHandle) -> None:
    """Page size 2: count/next/previous absolute, other params kept, page 1 link without ?page,
    out of range -> 404 Invalid page."""
    oncall_sandbox.seed(contacts=[{"first_name": f"F{i}", "last_name": "L"} for i in range(5)])
    base = oncall_sandbox.base_url
    with oncall_sandbox.api() as api:
        first = api.get("/contacts/?x=1").json()
        second = api.get(first["next"]).json()
        third = api.get(second["next"]).json()
        beyond = api.get("/contacts/?page=4")
        zero = api.get("/contacts/?page=0")
    assert first["count"] == 5 and first["previous"] is None
    assert first["next"] == f"{base}/contacts/?x=1&page=2"
    assert second["previous"] == f"{base}/contacts/?x=1"
    assert [c["id"] for c in first["results"] + second["results"] + third["results"]] == [1, 2, 3, 4, 5]
    assert third["next"] is None
    assert beyond.status_code == zero.status_code == 404 and beyond.json() == {"detail": "Invalid page."}


def test_coordinator_key_must_name_provider_and_provider_keys_see_their_own(
        oncall_sandbox: SandboxHandle) -> None:
    """A coordinator create without `provider` -> 400; a provider key does not see provider 2's objects."""
    base = oncall_sandbox.base_url
    with oncall_sandbox.api(COORDINATOR_TOKEN) as coordinator, oncall_sandbox.api() as provider_one:
        refused = coordinator.post("/appointments/", json=appointment(base))
        made = coordinator.post("/appointments/", json=appointment(base, provider=f"{base}/providers/2/"))
        hidden = provider_one.get(made.json()["url"])
        listed = coordinator.get("/appointments/").json()["count"]
    assert refused.status_code == 400 and "provider" in refused.json()
    assert made.status_code == 201 and made.json()["provider"] == f"{base}/providers/2/"
    assert hidden.status_code == 404 and listed == 1


def test_regional_url_shapes(make_oncall_sandbox: MakeSandbox) -> None:
    """With a configured public base (e.g. the US region's), every emitted URL uses it."""
    sandbox = make_oncall_sandbox(base_url="https://api.oncallhealth.us")
    body = appointment("https://api.oncallhealth.us")
    with sandbox.api() as api:
        created = api.post("/appointments/", json=body).json()
        divisions = api.get("/divisions/").json()
    assert created["url"] == "https://api.oncallhealth.us/appointments/1/"
    assert divisions["results"][0]["url"] == "https://api.oncallhealth.us/divisions/1/"


def test_webhooks_on_create_update_participant_and_inside_change(
        make_oncall_sandbox: MakeSandbox, webhook_receiver: WebhookReceiver) -> None:
    """appointment_created then appointment_updated for a PATCH, a participant PATCH and a change made
    inside OnCall, in order, with the shared-secret header."""
    sandbox = make_oncall_sandbox(webhook_url=webhook_receiver.url, webhook_secret_header="X-Hook-Secret: s3")
    create(sandbox)
    url = f"{sandbox.base_url}/appointments/1/"
    with sandbox.api() as api:
        api.patch("/appointments/1/", json={"title": "Renamed"}).raise_for_status()
        api.patch("/participants/1/", json={"fee": 5}).raise_for_status()
    changed = sandbox.change(1, status="Complete")
    received = webhook_receiver.wait_for(4)
    assert received == [{"event": "appointment_created", "url": url}] + [
        {"event": "appointment_updated", "url": url}] * 3
    assert {h["x-hook-secret"] for h in webhook_receiver.headers} == {"s3"}
    assert changed["status"] == "Complete"


def test_webhook_documented_url_style_and_retries(
        make_oncall_sandbox: MakeSandbox, webhook_receiver: WebhookReceiver) -> None:
    """The documented body URL (.com host, no slash) can be emitted; a failing receiver is retried."""
    webhook_receiver.fail_first = 2
    sandbox = make_oncall_sandbox(webhook_url=webhook_receiver.url, webhook_url_style="documented")
    create(sandbox)
    assert webhook_receiver.wait_for(1) == [
        {"event": "appointment_created", "url": "https://api.oncallhealth.com/appointments/1"}]
    delivery = sandbox.webhooks()[0]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3


def test_webhook_never_blocks_the_response(
        make_oncall_sandbox: MakeSandbox, webhook_receiver: WebhookReceiver) -> None:
    """The API answers while the webhook receiver is still holding its answer."""
    webhook_receiver.hold = threading.Event()
    sandbox = make_oncall_sandbox(webhook_url=webhook_receiver.url)
    create(sandbox)
    create(sandbox)                  # answered although the first webhook is still held
    assert webhook_receiver.received == []
    webhook_receiver.hold.set()
    assert [w["url"].rsplit("/", 2)[-2] for w in webhook_receiver.wait_for(2)] == ["1", "2"]


def test_seed_state_and_reset(oncall_sandbox: SandboxHandle) -> None:
    """Seeding makes contacts and appointments without e-mails; reset empties and restarts ids."""
    seeded = oncall_sandbox.seed(contacts=[{"first_name": "A", "last_name": "B"}],
                                 appointments=[appointment(oncall_sandbox.base_url)])
    assert seeded["contacts"][0]["id"] == 1 and seeded["appointments"][0]["url"].endswith("/appointments/1/")
    state = oncall_sandbox.state()
    assert len(state["contacts"]) == 1 and len(state["appointments"]) == 1 and state["emails"] == []
    assert len(state["providers"]) == 2 and len(state["divisions"]) == 2
    oncall_sandbox.reset()
    assert oncall_sandbox.state()["appointments"] == []
    assert create(oncall_sandbox)["url"].endswith("/appointments/1/")


def test_fault_sequence_reproducible_with_seed(oncall_sandbox: SandboxHandle) -> None:
    """The same seed gives the same sequence of injected statuses; the control API is never faulted."""
    def run() -> list[int]:
        oncall_sandbox.faults({"path": "/divisions/*", "rate_429": 0.3, "rate_503": 0.3}, seed=42)
        with oncall_sandbox.api() as api:
            return [api.get("/divisions/").status_code for _ in range(20)]

    first, second = run(), run()
    assert first == second and {200, 429, 503} <= set(first)
    assert oncall_sandbox.control.get("/__sandbox__/state").status_code == 200


def test_fault_rule_times_and_retry_after(oncall_sandbox: SandboxHandle) -> None:
    """A rule with times=1 injects once; 429 carries Retry-After."""
    oncall_sandbox.faults({"path": "/providers/", "method": "GET", "rate_429": 1.0, "retry_after": 7,
                           "times": 1})
    with oncall_sandbox.api() as api:
        throttled = api.get("/providers/")
        fine = api.get("/providers/")
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "7"
    assert fine.status_code == 200


def test_dropped_connection(oncall_sandbox: SandboxHandle) -> None:
    """drop_rate=1 closes the connection without any answer: the client sees a protocol error."""
    oncall_sandbox.faults({"path": "/providers/", "drop_rate": 1.0})
    with oncall_sandbox.api() as api, pytest.raises(httpx.RemoteProtocolError):
        api.get("/providers/")


def test_latency_fault(oncall_sandbox: SandboxHandle) -> None:
    """latency_ms delays the answer by at least that long."""
    oncall_sandbox.faults({"path": "/divisions/", "latency_ms": 300})
    with oncall_sandbox.api() as api:
        started = time.perf_counter()
        api.get("/divisions/").raise_for_status()
    assert time.perf_counter() - started >= 0.3


def test_fee_as_string_and_error_shapes(oncall_sandbox: SandboxHandle) -> None:
    """fee_as_string sends fees as decimal strings; error_shape re-shapes real 4xx bodies."""
    create(oncall_sandbox, participants=[{"name": "A", "email": "a@example.test", "fee": 10}])
    oncall_sandbox.faults({"path": "/appointments/*", "fee_as_string": True, "error_shape": "list"})
    with oncall_sandbox.api() as api:
        fee = api.get("/appointments/1/").json()["participants"][0]["fee"]
        shaped = api.get("/appointments/9/")
    assert fee == "10.00"
    assert shaped.status_code == 404 and shaped.json() == ["Not found."]


@pytest.mark.anyio
async def test_serve_sandbox_in_a_task_group(tmp_path: Any) -> None:
    """serve_sandbox reports its port (port 0) to the task group, serves a SQLite file, and stops
    gracefully when cancelled; the state survives in the file."""
    import functools

    import anyio

    from adapter.oncall.sandbox.server import serve_sandbox

    db = str(tmp_path / "sandbox.db")
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(serve_sandbox, "127.0.0.1", 0, db_path=db, token="t1"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": "Token t1"}) as api:
            made = await api.post("/contacts/", json={"first_name": "A", "last_name": "B"})
        tg.cancel_scope.cancel()
    assert made.status_code == 201 and made.json()["url"] == f"http://127.0.0.1:{port}/contacts/1/"
    from adapter.oncall.sandbox.db import SandboxDB

    stored = SandboxDB(db)
    try:
        assert len(stored.select("contacts")) == 1
    finally:
        stored.close()


def test_cli_registers_sandbox_command() -> None:
    """`oncall-adapter sandbox` parses its options with the documented defaults."""
    import argparse

    from adapter.cli.sandbox import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandbox", "--port", "0", "--page-size", "2", "--webhook-url", "http://x/h"])
    assert (args.host, args.port, args.page_size, args.db, args.token) == (
        "127.0.0.1", 0, 2, ":memory:", "sandbox-token")
    assert args.webhook_url == "http://x/h" and args.handler is run
