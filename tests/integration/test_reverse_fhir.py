"""OnCall as system of record, end to end over real parts: the OnCall sandbox fires real webhooks at
the adapter's HTTP app, the envelopes land in a real store (SQLite file, PostgreSQL), the reverse
executor fetches each appointment from the sandbox and POSTs transaction Bundles to a real FHIR
server (Node, @medplum/fhir-router); the contacts scrape pages through the sandbox's contacts.
Afterwards the EMR holds exactly the expected Patients and Appointments, and doing it all again
changes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

import adapter.reverse.operations  # noqa: F401 - registers the reverse operation kinds
from adapter.envelope import Source
from adapter.errors import TransientError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.mapping.operations import AppointmentParticipant, AppointmentUpsert
from adapter.oncall.client import OnCallClient
from adapter.reverse.executor import ReverseExecutor, ReverseOutcome
from adapter.reverse.fhir import FHIRTarget
from adapter.store.base import Store
from adapter.worker.executor import Executor
from listeners.http import build_http_app
from listeners.scrape import scrape_contacts_once
from listeners.webhooks import webhook_routes
from tests.fhir_server.fhir_harness import NodeFHIRServer, serve_app
from tests.integration.oncall_fixtures import TOKEN, SandboxHandle, make_oncall_sandbox  # noqa: F401

pytestmark = pytest.mark.anyio
SECRET = "reverse-secret"
HEADER = "X-OnCall-Webhook-Secret"
EMR_TOKEN = "emr-token"
MAPPINGS = load_mapping_set([SHIPPED_DIR])


@pytest.fixture(scope="module")
def emr_server() -> Iterator[NodeFHIRServer]:
    with NodeFHIRServer(bearer=EMR_TOKEN) as server:
        yield server


class World:
    """The parts of one test, wired as `serve` wires them."""

    def __init__(self, store: Store, sandbox: SandboxHandle, client: OnCallClient, executor: ReverseExecutor,
                 emr: httpx.AsyncClient, adapter_url: str) -> None:
        self.store, self.sandbox, self.client, self.executor = store, sandbox, client, executor
        self.emr, self.adapter_url = emr, adapter_url

    async def drain(self) -> list[ReverseOutcome]:
        """Claim and apply every queued envelope (what the worker pool does for these sources)."""
        outcomes: list[ReverseOutcome] = []
        while claimed := await self.store.claim("test", limit=16, lease=dt.timedelta(seconds=60)):
            for envelope in claimed:
                outcome = await self.executor.process(envelope)
                assert await self.store.complete(envelope.id, "test", mapping_version=outcome.mapping_version,
                                                 detail=outcome.audit())
                outcomes.append(outcome)
        return outcomes

    async def webhooks_stored(self, count: int) -> None:
        with anyio.fail_after(15):
            while len(await self.store.list(source=Source.ONCALL_WEBHOOK.value)) < count:  # noqa: ASYNC110
                await anyio.sleep(0.02)   # the store has no change event: poll the condition under a deadline

    async def search(self, resource_type: str, system_kind: str) -> list[dict[str, Any]]:
        system = f"{self.sandbox.base_url}/{system_kind}"
        answer = await self.emr.get(resource_type, params={"identifier": f"{system}|", "_count": "100"})
        answer.raise_for_status()
        return [e["resource"] for e in answer.json().get("entry") or []]

    async def api(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            with self.sandbox.api() as api:
                response = api.request(method, path, **kwargs)
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
        return await anyio.to_thread.run_sync(call)


@asynccontextmanager
async def world(store: Store, make_sandbox: Callable[..., SandboxHandle],
                emr_server: NodeFHIRServer) -> AsyncIterator[World]:
    async def ready() -> dict[str, bool]:
        return {"store": True}

    routes = webhook_routes(store=store, secret=SECRET, secret_header=HEADER)
    async with serve_app(build_http_app(store, readiness=ready, routes=routes)) as adapter_url:
        sandbox = make_sandbox(webhook_url=f"{adapter_url}/oncall/webhooks",
                               webhook_secret_header=f"{HEADER}: {SECRET}", webhook_url_style="documented")
        target = FHIRTarget(EMRFHIRClient(emr_server.base_url, bearer_token=EMR_TOKEN))
        async with OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, seed=1) as client, \
                httpx.AsyncClient(base_url=emr_server.base_url + "/",
                                  headers={"Authorization": f"Bearer {EMR_TOKEN}"}) as emr:
            executor = ReverseExecutor(store, client, target, mappings=lambda: MAPPINGS,
                                       oncall_base_url=sandbox.base_url)
            try:
                yield World(store, sandbox, client, executor, emr, adapter_url)
            finally:
                await target.aclose()


def _appointment(base: str, title: str, *people: tuple[str, str]) -> dict[str, Any]:
    return {"title": title, "type": "online", "datetime": "2026-03-02T14:00:00Z", "duration": 30,
            "division": f"{base}/divisions/1/",
            "participants": [{"first_name": f, "last_name": last, "name": f"{f} {last}",
                              "email": f"{f.lower()}@example.org"} for f, last in people]}


async def test_webhooks_and_scrape_fill_the_emr_exactly_once(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle],  # noqa: F811
        emr_server: NodeFHIRServer) -> None:
    """Two appointments made and changed inside OnCall plus two roster contacts end up in the EMR as
    5 Patients and 2 Appointments with the right status, times and participant references;
    duplicate webhooks and a second scrape send nothing and leave every resource version as it was."""
    async with world(store, make_oncall_sandbox, emr_server) as w:
        base = w.sandbox.base_url
        first = await w.api("POST", "/appointments/", json=_appointment(base, "Follow-up", ("Ana", "Lima"),
                                                                         ("Bo", "Chen")))
        second = await w.api("POST", "/appointments/", json=_appointment(base, "Intake", ("Cy", "Diaz")))
        first_id = int(first["url"].rstrip("/").rsplit("/", 1)[1])
        await anyio.to_thread.run_sync(lambda: w.sandbox.change(first_id, title="Follow-up (moved)",
                                                                datetime="2026-03-03T15:00:00Z"))
        await w.api("PATCH", second["url"], json={"cancelled": True})
        await anyio.to_thread.run_sync(lambda: w.sandbox.seed(contacts=[
            {"first_name": "Di", "last_name": "Eng", "email": "di@example.org", "sex": "female",
             "date_of_birth": "1980-02-03", "custom_field_values": {"2": "MRN-77"}},
            {"first_name": "Ed", "last_name": "Fox", "phone": "+1 416 555 0100"}]))
        await w.webhooks_stored(4)
        outcomes = await w.drain()
        # Each webhook fetches the CURRENT appointment: the first one of each already carries the
        # later change, so the updates that follow find nothing new to send.
        assert sorted(o.action for o in outcomes) == ["delivered", "delivered", "unchanged", "unchanged"]
        report = await scrape_contacts_once(w.store, w.client)
        assert (report.seen, report.new, report.queued) == (2, 2, 2)
        assert [o.action for o in await w.drain()] == ["delivered", "delivered"]

        participants = await w.search("Patient", "participants")
        contacts = await w.search("Patient", "contacts")
        appointments = await w.search("Appointment", "appointments")
        assert sorted(p["name"][0]["text"] for p in participants) == ["Ana Lima", "Bo Chen", "Cy Diaz"]
        assert sorted(p["name"][0]["family"] for p in contacts) == ["Eng", "Fox"]
        di = next(p for p in contacts if p["name"][0]["family"] == "Eng")
        assert (di["gender"], di["birthDate"]) == ("female", "1980-02-03")
        by_title = {a.get("description"): a for a in appointments}
        assert set(by_title) == {"Follow-up (moved)", "Intake"}
        moved = by_title["Follow-up (moved)"]
        assert moved["status"] == "booked"
        assert dt.datetime.fromisoformat(moved["start"].replace("Z", "+00:00")) == dt.datetime(
            2026, 3, 3, 15, 0, tzinfo=dt.UTC)
        assert {p["actor"]["reference"] for p in moved["participant"]} <= {
            f"Patient/{p['id']}" for p in participants}
        assert by_title["Intake"]["status"] == "cancelled"
        # The crosswalk knows the EMR ids that came back.
        assert (await store.xref_get("emr_out", first["url"])).target == f"Appointment/{moved['id']}"

        versions = {r["id"]: r["meta"]["versionId"] for r in participants + contacts + appointments}
        # Again: OnCall re-delivers every webhook, and the scrape runs again.
        async with httpx.AsyncClient(base_url=w.adapter_url, headers={HEADER: SECRET}) as http:
            for item in (first, second):
                for event in ("appointment_created", "appointment_updated"):
                    (await http.post("/oncall/webhooks", json={"event": event, "url": item["url"]})
                     ).raise_for_status()
        again = await w.drain()
        assert [o.action for o in again] == ["unchanged"] * 4
        assert (await scrape_contacts_once(w.store, w.client)).queued == 0
        after = (await w.search("Patient", "participants") + await w.search("Patient", "contacts")
                 + await w.search("Appointment", "appointments"))
        assert {r["id"]: r["meta"]["versionId"] for r in after} == versions


async def test_the_adapters_own_write_is_not_echoed_back(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle],  # noqa: F811
        emr_server: NodeFHIRServer) -> None:
    """An appointment the forward path created (EMR -> OnCall) fires a webhook that is recognised as
    the adapter's own write and not sent to the EMR; a later change made inside OnCall is sent."""
    async with world(store, make_oncall_sandbox, emr_server) as w:
        base = w.sandbox.base_url
        forward = Executor(store, w.client)
        toronto = dt.timezone(dt.timedelta(hours=-4))   # the EMR's offset: OnCall answers in UTC
        op = AppointmentUpsert(emr_appointment_id="EMR-APPT-1", title="Consult", type="online",
                               datetime=dt.datetime(2026, 4, 1, 9, 0, tzinfo=toronto),
                               duration=20, division=f"{base}/divisions/1/",
                               participants=[AppointmentParticipant(emr_patient_id="MRN-1", first_name="Gil",
                                                                    last_name="Ho", email="gil@example.org")])
        await forward.apply(op, envelope_id=0)
        url = (await store.xref_get("appointment", "EMR-APPT-1")).target
        await w.webhooks_stored(1)
        assert [o.action for o in await w.drain()] == ["echo_skipped"]
        assert await w.search("Appointment", "appointments") == []

        appointment_id = int(url.rstrip("/").rsplit("/", 1)[1])
        await anyio.to_thread.run_sync(lambda: w.sandbox.change(appointment_id, title="Consult (by phone)"))
        await w.webhooks_stored(2)
        assert [o.action for o in await w.drain()] == ["delivered"]
        [sent] = await w.search("Appointment", "appointments")
        assert sent["description"] == "Consult (by phone)"


async def test_a_webhook_racing_the_forward_record_waits_for_it(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle],  # noqa: F811
        emr_server: NodeFHIRServer) -> None:
    """OnCall fires `appointment_created` as soon as it answers the forward path's POST, possibly
    before the worker records the appointment: that webhook is retried (transient), not echoed to
    the EMR; once the forward record exists, it is recognised as the adapter's own write."""
    async with world(store, make_oncall_sandbox, emr_server) as w:
        base = w.sandbox.base_url
        body = {**_appointment(base, "Consult", ("Ada", "Lee")),
                "metadata": {"emr_appointment_id": "EMR-RACE"}}
        await w.api("POST", "/appointments/", json=body)
        await w.webhooks_stored(1)
        [envelope] = await store.claim("test", limit=1, lease=dt.timedelta(seconds=30))
        with pytest.raises(TransientError) as info:
            await w.executor.process(envelope)
        assert "not recorded yet" in str(info.value)
        assert await w.search("Appointment", "appointments") == []
