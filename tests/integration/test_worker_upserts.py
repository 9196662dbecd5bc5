"""The executor against the real OnCall sandbox (HTTP on port 0) and a real store (SQLite and PostgreSQL):
create once, adopt what exists, patch only what changed, survive a lost create."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from adapter.envelope import Envelope, NewEnvelope, Source
from adapter.errors import OutcomeUnknownError
from adapter.mapping.engine import MappingResult
from adapter.mapping.operations import (
    AppointmentCancel,
    AppointmentParticipant,
    AppointmentUpsert,
    ContactUpsert,
    Operation,
    ParticipantCancel,
    PatientMerge,
)
from adapter.oncall.client import OnCallClient
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.executor import Executor, OperationFailed
from tests.integration.worker_fixtures import Sandbox, client, sandbox

__all__ = ["client", "sandbox"]   # fixtures used by name below

pytestmark = pytest.mark.anyio

_counter = itertools.count(1)
FUTURE = dt.datetime(2031, 5, 6, 14, 0, tzinfo=dt.UTC)


async def _envelope(store: Store, key: str = "patient:MRN1") -> Envelope:
    n = next(_counter)
    appended = await store.append(NewEnvelope(Source.MLLP, "ADT^A04", key, f"test:{n}:{key}", b"MSH|x"))
    return appended.envelope


async def _run(store: Store, executor: Executor, *ops: Operation) -> list[dict[str, Any]]:
    envelope = await _envelope(store)
    await executor.execute(envelope, MappingResult("TEST", list(ops), "v1"))
    return [e.detail for e in await store.history(envelope.id) if e.event == "op_applied"]


def _contact(**kw: Any) -> ContactUpsert:
    base: dict[str, Any] = {"emr_patient_id": "MRN1", "first_name": "Ada", "last_name": "Lovelace",
                            "email": "ada@example.org", "date_of_birth": dt.date(1990, 2, 3),
                            "phone": "+1 416 555 0101"}
    return ContactUpsert(**{**base, **kw})


def _appointment(sandbox: Sandbox, **kw: Any) -> AppointmentUpsert:
    base: dict[str, Any] = {
        "emr_appointment_id": "APPT1", "title": "Follow-up", "type": "online", "datetime": FUTURE,
        "duration": 30, "division": f"{sandbox.base_url}/divisions/1/",
        "participants": [AppointmentParticipant(emr_patient_id="MRN1", first_name="Ada", last_name="Lovelace",
                                                email="ada@example.org")],
        "metadata": {"emr_patient_id": "MRN1"}}
    return AppointmentUpsert(**{**base, **kw})


async def test_contact_created_once_with_emr_id(store: Store, client: OnCallClient, sandbox: Sandbox) -> None:
    """A new patient becomes one contact with the EMR id in the custom field; the same upsert again sends
    nothing; a changed phone is patched alone. The audit holds op kind, action and OnCall id only."""
    executor = Executor(store, client)
    first = await _run(store, executor, _contact())
    again = await _run(store, executor, _contact())
    changed = await _run(store, executor, _contact(phone="+1 416 555 0199"))
    contacts = (await sandbox.state())["contacts"]
    assert len(contacts) == 1
    contact = contacts[0]
    assert contact["custom_field_values"] == {"2": "MRN1"}
    assert (contact["first_name"], contact["last_name"], contact["email"], contact["date_of_birth"]) == (
        "Ada", "Lovelace", "ada@example.org", "1990-02-03")
    assert contact["phone"] == "+1 416 555 0199"
    assert [d["action"] for d in first + again + changed] == ["created", "unchanged", "patched"]
    assert first[0] == {"op": 0, "op_kind": "contact_upsert", "action": "created", "object": "contacts",
                        "object_id": contact["id"]}
    assert (await store.xref_get(xref.PATIENT, "MRN1")).target == contact["url"]


async def test_contact_adopted_by_emr_id_or_email_and_birth_date(store: Store, client: OnCallClient,
                                                                sandbox: Sandbox) -> None:
    """An existing contact is adopted, not duplicated: by its EMR id field, or (without one) by e-mail
    and birth date together, and then gets the EMR id; one holding another EMR id is never taken."""
    await sandbox.seed({"contacts": [
        {"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
         "date_of_birth": "1990-02-03", "custom_field_values": {"2": "OTHER"}},
        {"first_name": "Ada", "last_name": "L.", "email": "ada@example.org", "date_of_birth": "1990-02-03"},
        {"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.org",
         "custom_field_values": {"2": "MRN2"}}]})
    executor = Executor(store, client)
    adopted = await _run(store, executor, _contact(), _contact(emr_patient_id="MRN2", first_name="Grace",
                                                               last_name="Hopper", email="grace@example.org",
                                                               date_of_birth=None, phone=None))
    contacts = {c["id"]: c for c in (await sandbox.state())["contacts"]}
    assert len(contacts) == 3
    assert [d["action"] for d in adopted] == ["adopted", "adopted"]
    assert [d["object_id"] for d in adopted] == [2, 3]
    assert contacts[1]["custom_field_values"] == {"2": "OTHER"}
    assert contacts[2]["custom_field_values"] == {"2": "MRN1"}
    assert contacts[2]["last_name"] == "Lovelace"        # adopted, then brought up to date


async def test_appointment_created_once_then_patched(store: Store, client: OnCallClient,
                                                     sandbox: Sandbox) -> None:
    """An appointment is created once per EMR appointment id with its participants and the EMR ids in
    metadata; a reschedule patches datetime only; a renamed participant patches that participant only."""
    executor = Executor(store, client)
    await _run(store, executor, _appointment(sandbox))
    await _run(store, executor, _appointment(sandbox))
    moved = FUTURE + dt.timedelta(days=1)
    renamed = AppointmentParticipant(emr_patient_id="MRN1", first_name="Ada", last_name="King",
                                     email="ada@example.org")
    details = await _run(store, executor, _appointment(sandbox, datetime=moved, participants=[renamed]))
    state = await sandbox.state()
    assert len(state["appointments"]) == 1
    appointment = state["appointments"][0]
    assert appointment["metadata"] == {"emr_patient_id": "MRN1", "emr_appointment_id": "APPT1"}
    assert dt.datetime.fromisoformat(appointment["datetime"].replace("Z", "+00:00")) == moved
    assert (appointment["title"], appointment["type"], appointment["duration"]) == ("Follow-up", "online", 30)
    [participant] = appointment["participants"]
    assert (participant["first_name"], participant["last_name"], participant["email"]) == (
        "Ada", "King", "ada@example.org")
    assert details == [{"op": 0, "op_kind": "appointment_upsert", "action": "patched",
                        "object": "appointments", "object_id": appointment["id"] if "id" in appointment
                        else int(appointment["url"].rstrip("/").rsplit("/", 1)[1]), "count": 1}]
    invitations = [e for e in state["emails"] if e["kind"] == "invitation"]
    assert len(invitations) == 1                          # one create: one invitation, never two


async def test_lost_create_is_adopted_not_repeated(store: Store, client: OnCallClient,
                                                   sandbox: Sandbox) -> None:
    """A create whose answer is lost after OnCall applied it fails as outcome-unknown; the next attempt
    finds the appointment by the EMR id in its metadata and adopts it: one appointment, one invitation."""
    executor = Executor(store, client)
    await sandbox.faults([{"path": "/appointments/", "method": "POST", "drop_rate": 1.0,
                           "drop_after_processing": True, "times": 1}], seed=1)
    envelope = await _envelope(store)
    result = MappingResult("TEST", [_appointment(sandbox)], "v1")
    with pytest.raises(OperationFailed) as failed:
        await executor.execute(envelope, result)
    assert isinstance(failed.value.error, OutcomeUnknownError)
    assert await store.xref_get(xref.PENDING, xref.pending_key("appointment", "APPT1")) is not None
    await executor.execute(envelope, result)
    state = await sandbox.state()
    assert len(state["appointments"]) == 1
    history = await store.history(envelope.id)
    actions = [e.detail["action"] for e in history if e.event == "op_applied"]
    assert actions == ["adopted_after_unknown_outcome"]
    assert len([e for e in state["emails"] if e["kind"] == "invitation"]) == 1
    assert await store.xref_get(xref.PENDING, xref.pending_key("appointment", "APPT1")) is None
    part = await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "MRN1"))
    assert part is not None and part.target == state["appointments"][0]["participants"][0]["url"]


async def test_lost_contact_create_is_adopted(store: Store, client: OnCallClient, sandbox: Sandbox) -> None:
    """The same for a contact: the lost create is found by its EMR id field and adopted, never repeated."""
    executor = Executor(store, client)
    await _run(store, executor, _contact(emr_patient_id="SEED", email="seed@example.org"))  # custom field ids
    await sandbox.faults([{"path": "/contacts/", "method": "POST", "drop_rate": 1.0,
                           "drop_after_processing": True, "times": 1}], seed=1)
    envelope = await _envelope(store)
    result = MappingResult("TEST", [_contact()], "v1")
    with pytest.raises(OperationFailed):
        await executor.execute(envelope, result)
    await executor.execute(envelope, result)
    contacts = [c for c in (await sandbox.state())["contacts"] if c["custom_field_values"].get("2") == "MRN1"]
    assert len(contacts) == 1


async def test_cancel_unknown_then_cancel_then_revive(store: Store, client: OnCallClient,
                                                      sandbox: Sandbox) -> None:
    """Cancelling an appointment never created is recorded as nothing to cancel; a cancel is sent once;
    an update after it (an EMR un-cancel) creates a new appointment and repoints the crosswalk."""
    executor = Executor(store, client)
    nothing = await _run(store, executor, AppointmentCancel(emr_appointment_id="APPT1"))
    await _run(store, executor, _appointment(sandbox))
    cancels = await _run(store, executor, AppointmentCancel(emr_appointment_id="APPT1"),
                         AppointmentCancel(emr_appointment_id="APPT1"))
    revived = await _run(store, executor, _appointment(sandbox))
    state = await sandbox.state()
    first, second = sorted(state["appointments"], key=lambda a: a["url"])
    assert nothing[0]["action"] == "nothing_to_cancel"
    assert [d["action"] for d in cancels] == ["cancelled", "unchanged"]
    assert revived[0]["action"] == "recreated"
    assert first["cancelled"] is True and second["cancelled"] is False
    assert (await store.xref_get(xref.APPOINTMENT, "APPT1")).target == second["url"]
    part = await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "MRN1"))
    assert part.target == second["participants"][0]["url"]


async def test_update_participants_of_future_appointments(store: Store, client: OnCallClient,
                                                          sandbox: Sandbox) -> None:
    """An ADT update with update_participants patches the patient's participant in each future, uncancelled
    appointment, sending only the fields that changed; a participant cancel cancels that one only."""
    executor = Executor(store, client)
    two = [AppointmentParticipant(emr_patient_id="MRN1", first_name="Ada", last_name="Lovelace",
                                  email="ada@example.org"),
           AppointmentParticipant(emr_patient_id="MRN2", first_name="Grace", last_name="Hopper")]
    await _run(store, executor, _contact(), _appointment(sandbox, participants=two),
               _appointment(sandbox, emr_appointment_id="APPT2"))
    details = await _run(store, executor, _contact(last_name="King", update_participants=True))
    await _run(store, executor, ParticipantCancel(emr_appointment_id="APPT1", emr_patient_id="MRN2"))
    state = await sandbox.state()
    people = {(a["metadata"]["emr_appointment_id"], p["first_name"]): p
              for a in state["appointments"] for p in a["participants"]}
    assert people[("APPT1", "Ada")]["last_name"] == "King"
    assert people[("APPT2", "Ada")]["last_name"] == "King"
    assert people[("APPT1", "Grace")]["last_name"] == "Hopper" and people[("APPT1", "Grace")]["cancelled"]
    assert details[0]["count"] == 2


async def test_merge_moves_crosswalk_without_calling_oncall(store: Store, client: OnCallClient,
                                                            sandbox: Sandbox) -> None:
    """A merge moves the merged patient's contact, participants and appointment index to the survivor."""
    executor = Executor(store, client)
    await _run(store, executor, _contact(emr_patient_id="OLD"), _appointment(
        sandbox, participants=[AppointmentParticipant(emr_patient_id="OLD", first_name="Ada",
                                                      last_name="Lovelace")]))
    before = await sandbox.state()
    await _run(store, executor, PatientMerge(surviving_emr_patient_id="NEW", merged_emr_patient_id="OLD"))
    assert await sandbox.state() == before
    assert await store.xref_get(xref.PATIENT, "OLD") is None
    assert (await store.xref_get(xref.PATIENT, "NEW")).target == before["contacts"][0]["url"]
    assert await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "NEW")) is not None
    index = await store.xref_list(xref.PATIENT_APPOINTMENT, prefix="NEW|")
    assert [x.source_id for x in index] == ["NEW|APPT1"]
