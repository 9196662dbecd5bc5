"""The FHIR subscription endpoint over real HTTP (uvicorn on port 0) into a real store (SQLite, PostgreSQL).

Deliveries that carry their resources: R4 rest-hook with payload, full-resource notification
Bundles (R4 backport, R4B, R5), handshakes and heartbeats; authentication, content types, refusals.
Deliveries that need the EMR's FHIR server are in test_fhir_emr.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from adapter.envelope import Source, State
from adapter.fhir.outcome import FHIR_EXCEPTION_HANDLERS
from adapter.store.base import Store
from listeners.fhir import fhir_routes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fhir_server"))
from fhir_harness import serve_app

pytestmark = pytest.mark.anyio

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir"
SECRET = "Bearer s3cret-for-tests"
MRN_SYSTEM = "http://clinic.example.org/fhir/sid/mrn"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def sample(rel: str) -> bytes:
    return (SAMPLES / rel).read_bytes()


@asynccontextmanager
async def endpoint(store: Store, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The FHIR routes on a minimal Starlette app served by uvicorn; a client that authenticates."""
    options.setdefault("secret", SECRET)
    options.setdefault("patient_identifier_system", MRN_SYSTEM)
    app = Starlette(routes=fhir_routes(store=store, **options), exception_handlers=FHIR_EXCEPTION_HANDLERS)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, headers={"Authorization": SECRET},
                                                        timeout=10) as client:
        yield client


async def envelopes(store: Store) -> list:
    return await store.list(source=Source.FHIR.value, newest_first=False, limit=1000)


async def test_rest_hook_put_patient_is_stored_before_200(store: Store) -> None:
    """PUT /fhir/Patient/{id} as HAPI delivers it: 200 after commit; the envelope carries the resource
    (canonically serialised), kind Patient, the MRN ordering key and the versioned dedup key."""
    body = sample("r4/Patient.json")
    async with endpoint(store) as client:
        response = await client.put("/fhir/Patient/pat-1001", content=body, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["resourceType"] == "OperationOutcome"
    [env] = await envelopes(store)
    assert (env.source, env.kind, env.state) == (Source.FHIR, "Patient", State.QUEUED)
    assert env.ordering_key == "patient:MRN100234"
    assert env.dedup_key == "fhir:Patient/pat-1001/_history/3"
    assert env.payload is not None and json.loads(env.payload) == json.loads(body)
    assert env.meta["resource_id"] == "pat-1001"


async def test_rest_hook_post_appointment_201_and_shares_patient_key(store: Store) -> None:
    """POST of an Appointment answers 201; it orders under its Patient participant's MRN key, known
    from the Patient stored before it."""
    async with endpoint(store) as client:
        await client.put("/fhir/Patient/pat-1001", content=sample("r4/Patient.json"), headers=FHIR_JSON)
        response = await client.post("/fhir/Appointment/appt-5001", content=sample("r4/Appointment.json"),
                                     headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    patient, appointment = await envelopes(store)
    assert appointment.kind == "Appointment"
    assert appointment.ordering_key == patient.ordering_key == "patient:MRN100234"


async def test_appointment_without_known_patient_orders_by_fhir_id(store: Store) -> None:
    """An Appointment whose Patient was never seen orders under patient:<fhir id>."""
    async with endpoint(store) as client:
        response = await client.put("/fhir/Appointment/appt-5001", content=sample("r4/Appointment.json"),
                                    headers=FHIR_JSON)
    assert response.status_code == 200
    [env] = await envelopes(store)
    assert env.ordering_key == "patient:pat-1001"


async def test_duplicate_delivery_acknowledged_not_stored_twice(store: Store) -> None:
    """The same version delivered twice: both acknowledged, one envelope."""
    body = sample("r4/Appointment.json")
    async with endpoint(store) as client:
        first = await client.put("/fhir/Appointment/appt-5001", content=body, headers=FHIR_JSON)
        second = await client.put("/fhir/Appointment/appt-5001", content=body, headers=FHIR_JSON)
    assert (first.status_code, second.status_code) == (200, 200)
    assert "duplicate" in second.json()["issue"][0]["diagnostics"]
    assert len(await envelopes(store)) == 1


async def test_versionless_resource_deduplicated_by_content(store: Store) -> None:
    """Without meta.versionId the dedup key is a content hash: same content once, new content again."""
    data = json.loads(sample("r4/Patient-no-version.json"))
    async with endpoint(store) as client:
        for _ in range(2):
            await client.put("/fhir/Patient/pat-1002", json=data, headers=FHIR_JSON)
        data["telecom"][0]["use"] = "work"
        await client.put("/fhir/Patient/pat-1002", json=data, headers=FHIR_JSON)
    stored = await envelopes(store)
    assert len(stored) == 2
    assert all(e.dedup_key.startswith("fhir:Patient/pat-1002/sha256:") for e in stored)
    assert stored[0].dedup_key != stored[1].dedup_key


@pytest.mark.parametrize(("rel", "status", "expression"), [
    ("r4/invalid/Patient-gender-x.json", 422, "Patient.gender"),
    ("r4/invalid/Appointment-participant-no-actor.json", 422, "Appointment.participant[0].actor"),
    ("r4/invalid/Appointment-bad-date.json", 400, "Appointment.start"),
])
async def test_invalid_resource_refused_with_outcome_and_stored_rejected(
        store: Store, rel: str, status: int, expression: str) -> None:
    """An invalid resource: 4xx OperationOutcome whose issue.expression names the path; stored REJECTED
    with the reason, never queued."""
    data = json.loads(sample(rel))
    rtype, rid = data["resourceType"], data["id"]
    async with endpoint(store) as client:
        response = await client.put(f"/fhir/{rtype}/{rid}", content=sample(rel), headers=FHIR_JSON)
    assert response.status_code == status
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [expression]
    assert outcome["issue"][0]["severity"] == "error"
    [env] = await envelopes(store)
    assert env.state == State.REJECTED
    assert expression in (env.reason or "")
    assert env.payload == sample(rel)


async def test_xml_refused_415_saying_json_required(store: Store) -> None:
    """An XML delivery is answered 415 with an OperationOutcome saying JSON is required; nothing stored."""
    async with endpoint(store) as client:
        response = await client.put("/fhir/Patient/p1", content=b"<Patient xmlns='http://hl7.org/fhir'/>",
                                    headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 415
    assert "JSON is required" in response.json()["issue"][0]["diagnostics"]
    assert await envelopes(store) == []


@pytest.mark.parametrize("header", [None, "Bearer wrong", "bearer s3cret-for-tests"])
async def test_unauthenticated_delivery_401_nothing_stored(store: Store, header: str | None) -> None:
    """A missing or wrong channel header: 401 with an OperationOutcome, nothing stored."""
    async with endpoint(store) as client:
        headers = dict(FHIR_JSON)
        if header is None:
            client.headers.pop("Authorization")
        else:
            headers["Authorization"] = header
        response = await client.put("/fhir/Patient/pat-1001", content=sample("r4/Patient.json"),
                                    headers=headers)
        notification = await client.post("/fhir", content=sample("r5/notification-full-resource.json"),
                                         headers=headers)
    assert response.status_code == notification.status_code == 401
    assert response.json()["issue"][0]["code"] == "login"
    assert await envelopes(store) == []


async def test_custom_header_and_base_path(store: Store) -> None:
    """The auth header name and the base path are configurable."""
    async with endpoint(store, base_path="/emr/hooks", auth_header="X-Channel-Secret",
                        secret="abc") as client:
        ok = await client.put("/emr/hooks/Patient/pat-1001", content=sample("r4/Patient.json"),
                              headers={**FHIR_JSON, "X-Channel-Secret": "abc"})
        old = await client.put("/fhir/Patient/pat-1001", content=sample("r4/Patient.json"),
                               headers={**FHIR_JSON, "X-Channel-Secret": "abc"})
    assert ok.status_code == 200
    assert old.status_code == 404


async def test_url_id_must_match_body(store: Store) -> None:
    """PUT to Patient/other with a body whose id differs: 400 at Patient.id, stored rejected."""
    async with endpoint(store) as client:
        response = await client.put("/fhir/Patient/other", content=sample("r4/Patient.json"),
                                    headers=FHIR_JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.id"]
    assert [e.state for e in await envelopes(store)] == [State.REJECTED]


async def test_other_resource_types_not_taken(store: Store) -> None:
    """Only Patient and Appointment are taken: an Encounter is a 404 OperationOutcome."""
    async with endpoint(store) as client:
        response = await client.put("/fhir/Encounter/e1", json={"resourceType": "Encounter"},
                                    headers=FHIR_JSON)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_body_over_limit_413(store: Store) -> None:
    """A body over the configured limit is refused 413 before it is read whole."""
    async with endpoint(store, max_body_bytes=1000) as client:
        response = await client.put("/fhir/Patient/pat-1001", content=sample("r4/Patient.json"),
                                    headers=FHIR_JSON)
    assert response.status_code == 413
    assert await envelopes(store) == []


async def test_r5_resource_by_media_type_version(store: Store) -> None:
    """An R5 Appointment is read as R5 when the media type says fhirVersion=5.0, and refused as R4."""
    body = sample("r5/Appointment.json")
    async with endpoint(store) as client:
        as_r4 = await client.put("/fhir/Appointment/appt-6001", content=body, headers=FHIR_JSON)
        as_r5 = await client.put("/fhir/Appointment/appt-6001", content=body,
                                 headers={"Content-Type": "application/fhir+json; fhirVersion=5.0"})
    assert as_r4.status_code == 400
    assert as_r5.status_code == 200
    queued = [e for e in await envelopes(store) if e.state == State.QUEUED]
    assert queued[0].meta["fhir_version"] == "R5"


@pytest.mark.parametrize(("rel", "kinds"), [
    ("r4/notification-full-resource.json", ["Patient", "Appointment"]),
    ("r4b/notification-full-resource.json", ["Appointment"]),
    ("r5/notification-full-resource.json", ["Appointment", "Patient"]),
])
async def test_full_resource_notification_stores_each_resource(store: Store, rel: str,
                                                               kinds: list[str]) -> None:
    """A full-resource notification Bundle stores one envelope per Patient/Appointment, payload the
    entry's resource serialized canonically, the Appointment ordered under its Patient's MRN key."""
    bundle = json.loads(sample(rel))
    async with endpoint(store) as client:
        response = await client.post("/fhir", content=sample(rel), headers=FHIR_JSON)
        again = await client.post("/fhir", content=sample(rel), headers=FHIR_JSON)
    assert response.status_code == again.status_code == 200, response.text
    stored = await envelopes(store)
    assert [e.kind for e in stored] == kinds
    by_kind = {e.kind: e for e in stored}
    entry = next(x["resource"] for x in bundle["entry"][1:] if x["resource"]["resourceType"] == kinds[0])
    assert json.loads(by_kind[kinds[0]].payload) == entry
    if "Patient" in by_kind:
        assert by_kind["Appointment"].ordering_key == by_kind["Patient"].ordering_key
    assert all(e.meta["subscription"].endswith("Subscription/oncall-appointments") for e in stored)


@pytest.mark.parametrize("rel", ["r4/notification-handshake.json", "r4/notification-heartbeat.json",
                                 "r4b/notification-heartbeat.json", "r5/notification-handshake.json",
                                 "r5/notification-heartbeat.json"])
async def test_handshake_and_heartbeat_200_no_work(store: Store, rel: str) -> None:
    """Handshakes and heartbeats (first of their subscription) are answered 200 and store nothing."""
    async with endpoint(store) as client:
        response = await client.post("/fhir", content=sample(rel), headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert await envelopes(store) == []


async def test_notification_with_invalid_entry(store: Store) -> None:
    """A notification whose Patient is invalid: the valid Appointment is stored, the Patient stored
    REJECTED, and the answer is a 422 naming Bundle.entry[1].resource.gender."""
    bundle = json.loads(sample("r4/notification-full-resource.json"))
    bundle["entry"][1]["resource"]["gender"] = "x"
    async with endpoint(store) as client:
        response = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.gender"]
    assert sorted((e.kind, e.state.value) for e in await envelopes(store)) == [
        ("Appointment", "queued"), ("Patient", "rejected")]


async def test_not_a_notification_bundle(store: Store) -> None:
    """A searchset Bundle posted to the base is a 400 naming Bundle.type."""
    async with endpoint(store) as client:
        response = await client.post("/fhir", json={"resourceType": "Bundle", "type": "searchset",
                                                    "entry": [{"resource": {"resourceType": "Patient"}}]},
                                     headers=FHIR_JSON)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]


@pytest.mark.parametrize("rel", ["r5/notification-empty.json", "r4/notification-id-only.json"])
async def test_needs_emr_server_but_none_configured(store: Store, rel: str) -> None:
    """Empty and id-only notifications with no EMR FHIR server configured: 501 saying what to set;
    nothing acknowledged, so the sender keeps it."""
    async with endpoint(store, emr=None) as client:
        response = await client.post("/fhir", content=sample(rel), headers=FHIR_JSON)
    assert response.status_code == 501
    assert "emr_base_url" in response.json()["issue"][0]["diagnostics"]


async def test_one_version_by_rest_hook_and_in_a_bundle_is_a_duplicate(store: Store) -> None:
    """The same Patient version delivered alone (pretty-printed) and then inside a notification
    Bundle (compact) is one envelope: a duplicate, not a quarantined content conflict."""
    resource = json.loads(sample("r4/Patient.json"))
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": "urn:uuid:0", "resource": {
            "resourceType": "Parameters", "parameter": [
                {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
                {"name": "topic", "valueCanonical": "http://example.org/topic"},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": "1"}]}},
        {"fullUrl": "Patient/pat-1001", "resource": resource}]}
    async with endpoint(store) as client:
        first = await client.put("/fhir/Patient/pat-1001", content=json.dumps(resource, indent=2),
                                 headers=FHIR_JSON)
        second = await client.post("/fhir", content=json.dumps(bundle), headers=FHIR_JSON)
    assert first.status_code == 200 and second.status_code == 200, second.text
    stored = await envelopes(store)
    assert [e.state for e in stored] == [State.QUEUED]
    [audit] = [await store.history(e.id) for e in stored]
    assert "duplicate" in [a.event for a in audit]


async def test_id_only_notification_about_other_types_needs_no_emr(store: Store) -> None:
    """An id-only R4 backport notification whose focus is an Encounter (the Backport IG's example):
    nothing the adapter takes is referenced, so no EMR read is needed: 200, nothing stored (it used
    to answer 501 and the sender retried it forever)."""
    bundle = {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": "urn:uuid:7", "resource": {"resourceType": "Parameters", "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/enc"}},
            {"name": "status", "valueCode": "active"}, {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": "1"},
            {"name": "notification-event", "part": [
                {"name": "event-number", "valueString": "1"},
                {"name": "focus",
                 "valueReference": {"reference": "https://emr.example.org/fhir/Encounter/e-1"}}]}]}}]}
    async with endpoint(store, emr=None) as client:
        response = await client.post("/fhir", json=bundle, headers=FHIR_JSON)
        assert response.status_code == 200, response.text
        sample_response = await client.post("/fhir", content=sample("r4/notification-id-only-encounter.json"),
                                            headers=FHIR_JSON)
        assert sample_response.status_code == 200, sample_response.text
    assert await envelopes(store) == []


async def test_r5_appointment_at_r4_endpoint_refused_with_version_hint(store: Store) -> None:
    """An R5 Appointment PUT without declaring its version: 400 whose diagnostics say it is valid R5
    and to send fhirVersion=5.0 (the path names participant[0].required)."""
    resource = {"resourceType": "Appointment", "id": "a5", "status": "booked",
                "start": "2030-01-02T10:00:00Z", "end": "2030-01-02T10:15:00Z",
                "participant": [{"actor": {"reference": "Patient/p"}, "required": True,
                                 "status": "accepted"}]}
    async with endpoint(store) as client:
        response = await client.put("/fhir/Appointment/a5", json=resource, headers=FHIR_JSON)
        assert response.status_code == 400
        issue = response.json()["issue"][0]
        assert issue["expression"] == ["Appointment.participant[0].required"]
        assert "fhirVersion=5.0" in issue["diagnostics"]
        declared = {"Content-Type": "application/fhir+json; fhirVersion=5.0"}
        assert (await client.put("/fhir/Appointment/a5", json=resource, headers=declared)).status_code == 200


async def test_a_patient_the_reverse_path_wrote_is_not_sent_back(store: Store) -> None:
    """Loop prevention: a Patient carrying an identifier of an OnCall collection (written to the EMR
    by the reverse path) that comes back through the subscription is acknowledged and stored with
    the reason, never queued for OnCall; the EMR's own patients are queued as usual."""
    base = "https://api.oncallhealth.ca"
    ours = {"resourceType": "Patient", "id": "emr-77", "meta": {"versionId": "1"},
            "identifier": [{"system": f"{base}/participants", "value": "41"}],
            "name": [{"family": "Lee", "given": ["Ada"]}]}
    theirs = {**ours, "id": "emr-78", "identifier": [{"system": MRN_SYSTEM, "value": "MRN9"}]}
    async with endpoint(store, oncall_base_url=base) as client:
        first = await client.put("/fhir/Patient/emr-77", content=json.dumps(ours), headers=FHIR_JSON)
        second = await client.put("/fhir/Patient/emr-78", content=json.dumps(theirs), headers=FHIR_JSON)
    assert first.status_code == 200 and second.status_code == 200
    echo, own = await envelopes(store)
    assert echo.state == State.REJECTED and "written to the EMR by this adapter" in (echo.reason or "")
    assert own.state == State.QUEUED
