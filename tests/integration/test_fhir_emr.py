"""Deliveries that need the EMR's FHIR server, against a real one: @medplum/fhir-router in Node.

The EMR client (read, search with _lastUpdated and paging, transaction, bearer and basic auth, error
translation), id-only and empty notifications, R4 rest-hook without payload, and the catch-up a gap
in the events-since-start counter triggers. Every test tags what it seeds (meta.tag) and points the
criteria at its tag, so tests share one server without seeing each other's resources.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from adapter.envelope import Source, State
from adapter.errors import OutcomeUnknownError, PermanentError, TransientError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.fhir.outcome import FHIR_EXCEPTION_HANDLERS
from adapter.store.base import Store
from listeners.fhir import fhir_routes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fhir_server"))
from fhir_harness import NodeFHIRServer, serve_app

pytestmark = pytest.mark.anyio

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir"
TOKEN = "emr-token-for-tests"
SECRET = "Bearer channel-secret"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
TAG_SYSTEM = "urn:oncall-adapter:test"


@pytest.fixture(scope="module")
def emr_server() -> Iterator[NodeFHIRServer]:
    with NodeFHIRServer(bearer=TOKEN) as server:
        yield server


class Seeder:
    """Writes resources to the EMR server through plain FHIR REST, each tagged with this test's tag."""

    def __init__(self, base_url: str) -> None:
        self.tag = uuid.UUID(int=uuid.uuid4().int).hex[:12]
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}", **FHIR_JSON})

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def put(self, data: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(json.dumps(data))
        data.pop("meta", None)
        data["meta"] = {"tag": [{"system": TAG_SYSTEM, "code": self.tag}]}
        response = self.http.put(f"{data['resourceType']}/{data['id']}", json=data)
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    def patient(self, name: str = "pat", **changes: Any) -> dict[str, Any]:
        data = json.loads((SAMPLES / "r4/Patient.json").read_text())
        return self.put({**data, "id": self.id(name), **changes})

    def appointment(self, name: str = "appt", patient: str = "pat", **changes: Any) -> dict[str, Any]:
        data = json.loads((SAMPLES / "r4/Appointment.json").read_text())
        data["participant"][0]["actor"]["reference"] = f"Patient/{self.id(patient)}"
        return self.put({**data, "id": self.id(name), **changes})

    @property
    def criteria(self) -> list[str]:
        return [f"Patient?_tag={TAG_SYSTEM}|{self.tag}", f"Appointment?_tag={TAG_SYSTEM}|{self.tag}"]

    def notification(self, rel: str, **ids: str) -> bytes:
        """A sample notification, its resource ids (e.g. appt-5001) moved to this test's."""
        text = (SAMPLES / rel).read_text()
        for old, new in ids.items():
            text = text.replace(old.replace("_", "-"), self.id(new))
        return text.encode()


@pytest.fixture
def seed(emr_server: NodeFHIRServer) -> Iterator[Seeder]:
    seeder = Seeder(emr_server.base_url)
    yield seeder
    seeder.http.close()


@pytest.fixture
async def emr(emr_server: NodeFHIRServer) -> AsyncIterator[EMRFHIRClient]:
    async with EMRFHIRClient(emr_server.base_url, bearer_token=TOKEN) as client:
        yield client


@asynccontextmanager
async def endpoint(store: Store, emr: EMRFHIRClient | None, seed: Seeder,
                   **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    routes = fhir_routes(store=store, secret=SECRET, emr=emr, criteria=seed.criteria, **options)
    app = Starlette(routes=routes, exception_handlers=FHIR_EXCEPTION_HANDLERS)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, headers={"Authorization": SECRET},
                                                        timeout=20) as client:
        yield client


async def envelopes(store: Store) -> list:
    return await store.list(source=Source.FHIR.value, newest_first=False, limit=1000)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the EMR client ---------------------------------------------------------------------------------

async def test_client_read_and_transaction(emr: EMRFHIRClient, seed: Seeder) -> None:
    """read returns what the server holds; a transaction Bundle creates a Patient and an Appointment
    that references it through a urn:uuid, resolved by the server."""
    created = seed.patient()
    assert (await emr.read("Patient", seed.id("pat")))["meta"]["versionId"] == created["meta"]["versionId"]
    placeholder = "urn:uuid:0c7f0f6e-0000-4000-8000-000000000001"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": placeholder, "resource": {"resourceType": "Patient", "gender": "other"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Appointment", "status": "proposed", "participant": [
            {"actor": {"reference": placeholder}, "status": "needs-action"}]},
         "request": {"method": "POST", "url": "Appointment"}}]}
    response = await emr.transaction(bundle)
    assert response["type"] == "transaction-response"
    patient_ref = response["entry"][0]["response"]["location"]
    appointment = await emr.read_reference(response["entry"][1]["response"]["location"])
    assert appointment["participant"][0]["actor"]["reference"] == patient_ref


async def test_client_search_since_and_paging(emr: EMRFHIRClient, seed: Seeder) -> None:
    """search follows next links page by page and _lastUpdated=ge filters out older resources."""
    first = [seed.patient(f"p{i}") for i in range(5)]
    params = [("_tag", f"{TAG_SYSTEM}|{seed.tag}"), ("_count", "2")]
    found = await emr.search_all("Patient", params)
    assert sorted(r["id"] for r in found) == sorted(r["id"] for r in first)
    since = datetime.fromisoformat(first[-1]["meta"]["lastUpdated"].replace("Z", "+00:00"))
    later = seed.patient("p9")
    recent = await emr.search_all("Patient", params, since=since)
    assert {r["id"] for r in recent} >= {first[-1]["id"], later["id"]}
    assert all(r["meta"]["lastUpdated"] >= first[-1]["meta"]["lastUpdated"] for r in recent)


async def test_client_auth_bearer_and_basic(emr_server: NodeFHIRServer) -> None:
    """Wrong credentials are a PermanentError 401 saying to check them; basic auth works."""
    async with EMRFHIRClient(emr_server.base_url, bearer_token="wrong") as client:
        with pytest.raises(PermanentError) as info:
            await client.read("Patient", "x")
    assert info.value.status == 401
    assert "credentials" in str(info.value)
    with NodeFHIRServer(basic="adapter:pa55") as basic_server:
        async with EMRFHIRClient(basic_server.base_url, basic=("adapter", "pa55")) as client:
            assert (await client.capabilities())["resourceType"] == "CapabilityStatement"
        async with EMRFHIRClient(basic_server.base_url, basic=("adapter", "nope")) as client:
            with pytest.raises(PermanentError):
                await client.capabilities()


async def test_client_errors_translated(emr: EMRFHIRClient) -> None:
    """404 is permanent; a refused connection transient; a reference to another host is refused."""
    with pytest.raises(PermanentError) as info:
        await emr.read("Patient", "does-not-exist")
    assert info.value.status == 404
    async with EMRFHIRClient(f"http://127.0.0.1:{closed_port()}/fhir") as down:
        with pytest.raises(TransientError) as transient:
            await down.read("Patient", "x")
        assert not isinstance(transient.value, OutcomeUnknownError)
    with pytest.raises(PermanentError, match="outside the configured FHIR server"):
        await emr.read_reference("https://elsewhere.example.org/fhir/Patient/1")


# -- deliveries that read from the EMR server -------------------------------------------------------

@pytest.mark.parametrize("rel", ["r4/notification-id-only.json", "r5/notification-id-only.json"])
async def test_id_only_notification_reads_each_resource(store: Store, emr: EMRFHIRClient, seed: Seeder,
                                                        rel: str) -> None:
    """Id-only content: the focus is read from the EMR server and stored with the server's version
    as its dedup key; a second delivery is a duplicate."""
    appointment = seed.appointment("appt")
    body = seed.notification(rel, appt_5001="appt", appt_6001="appt")
    async with endpoint(store, emr, seed) as client:
        response = await client.post("/fhir", content=body, headers=FHIR_JSON)
        again = await client.post("/fhir", content=body, headers=FHIR_JSON)
    assert response.status_code == again.status_code == 200, response.text
    [env] = await envelopes(store)
    assert env.kind == "Appointment"
    assert env.dedup_key == f"fhir:Appointment/{seed.id('appt')}/_history/{appointment['meta']['versionId']}"
    assert json.loads(env.payload) == appointment
    assert env.meta["delivery"] == "id-only"


async def test_id_only_for_deleted_resource_is_skipped(store: Store, emr: EMRFHIRClient,
                                                       seed: Seeder) -> None:
    """An id-only focus the EMR server no longer has (404) leaves nothing to sync: 200, nothing stored."""
    body = seed.notification("r4/notification-id-only.json", appt_5001="never-created")
    async with endpoint(store, emr, seed) as client:
        response = await client.post("/fhir", content=body, headers=FHIR_JSON)
    assert response.status_code == 200
    assert await envelopes(store) == []


async def test_emr_server_down_answers_503_and_stores_nothing(store: Store, seed: Seeder) -> None:
    """When the EMR server cannot be reached for an id-only notification: 503, nothing stored, so the
    sender retries it."""
    async with EMRFHIRClient(f"http://127.0.0.1:{closed_port()}/fhir") as down, \
            endpoint(store, down, seed) as client:
        body = seed.notification("r4/notification-id-only.json", appt_5001="appt")
        response = await client.post("/fhir", content=body, headers=FHIR_JSON)
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"
    assert await envelopes(store) == []


@pytest.mark.parametrize("rel", ["r4/notification-empty.json", "r5/notification-empty.json"])
async def test_empty_notification_catches_up(store: Store, emr: EMRFHIRClient, seed: Seeder,
                                             rel: str) -> None:
    """Empty content: the adapter asks the EMR server what changed since its last check; the next
    check starts at the newest meta.lastUpdated seen, so only new versions are stored."""
    seed.patient()
    seed.appointment()
    async with endpoint(store, emr, seed, patient_identifier_system=
                        "http://clinic.example.org/fhir/sid/mrn") as client:
        first = await client.post("/fhir", content=(SAMPLES / rel).read_bytes(), headers=FHIR_JSON)
        assert first.status_code == 200, first.text
        stored = await envelopes(store)
        assert sorted(e.kind for e in stored) == ["Appointment", "Patient"]
        assert {e.meta["delivery"] for e in stored} == {"catch-up"}
        assert {e.ordering_key for e in stored} == {"patient:MRN100234"}
        assert await store.kv_get(f"fhir:cursor:{seed.criteria[0]}")
        seed.appointment(status="cancelled")
        second = await client.post("/fhir", content=(SAMPLES / rel).read_bytes(), headers=FHIR_JSON)
    assert second.status_code == 200
    stored = await envelopes(store)
    assert len(stored) == 3
    assert json.loads(stored[-1].payload)["status"] == "cancelled"


async def test_rest_hook_without_payload_catches_up(store: Store, emr: EMRFHIRClient, seed: Seeder) -> None:
    """R4 rest-hook without payload: POST of an empty body to the base makes the adapter query the
    EMR server for every configured criteria."""
    seed.patient()
    async with endpoint(store, emr, seed) as client:
        response = await client.post("/fhir", content=b"")
    assert response.status_code == 200, response.text
    [env] = await envelopes(store)
    assert (env.kind, env.state, env.meta["delivery"]) == ("Patient", State.QUEUED, "catch-up")


async def test_empty_put_reads_that_resource(store: Store, emr: EMRFHIRClient, seed: Seeder) -> None:
    """An empty PUT to Patient/{id} means "this one changed": it is read from the EMR server."""
    seed.patient()
    async with endpoint(store, emr, seed) as client:
        response = await client.put(f"/fhir/Patient/{seed.id('pat')}", content=b"", headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    [env] = await envelopes(store)
    assert json.loads(env.payload)["id"] == seed.id("pat")


async def test_gap_in_event_counter_triggers_catch_up(store: Store, emr: EMRFHIRClient, seed: Seeder) -> None:
    """Events 1 then 4 of a subscription: 2 and 3 never came, so the adapter catches up and stores
    what changed meanwhile; the counter then stands at 4."""
    seed.patient()
    seed.appointment()
    missed = seed.patient("missed")
    first = json.loads(seed.notification("r5/notification-full-resource.json"))
    fourth = json.loads(seed.notification("r5/notification-full-resource.json"))
    status = fourth["entry"][0]["resource"]
    status["eventsSinceSubscriptionStart"] = "4"
    status["notificationEvent"][0]["eventNumber"] = "4"
    async with endpoint(store, emr, seed) as client:
        assert (await client.post("/fhir", json=first, headers=FHIR_JSON)).status_code == 200
        before = {e.dedup_key for e in await envelopes(store)}
        response = await client.post("/fhir", json=fourth, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    after = await envelopes(store)
    new = [e for e in after if e.dedup_key not in before]
    assert f"fhir:Patient/{missed['id']}/_history/{missed['meta']['versionId']}" in {e.dedup_key for e in new}
    subscription = status["subscription"]["reference"]
    assert await store.kv_get(f"fhir:events:{subscription}") == "4"


async def test_heartbeat_ahead_of_counter_catches_up(store: Store, emr: EMRFHIRClient, seed: Seeder) -> None:
    """A heartbeat whose counter is ahead of the last event received means events were lost: catch up."""
    handshake = (SAMPLES / "r4/notification-handshake.json").read_bytes()
    heartbeat = (SAMPLES / "r4/notification-heartbeat.json").read_bytes()   # says 2 events so far
    seed.patient()
    async with endpoint(store, emr, seed) as client:
        assert (await client.post("/fhir", content=handshake, headers=FHIR_JSON)).status_code == 200
        assert await envelopes(store) == []
        response = await client.post("/fhir", content=heartbeat, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert [e.kind for e in await envelopes(store)] == ["Patient"]
