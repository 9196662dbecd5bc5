"""Participants: recorded when their appointment is created, then patched field by field.

Participants cannot be queried in OnCall: the URL each one got when its appointment was created is
kept in the crosswalk (`participant`, with the reverse index `patient_appointment`), and only the
writable fields whose value changed since the last write are sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapter.envelope import utcnow
from adapter.oncall.matching import email_key, name_tokens
from adapter.oncall.models import Appointment, Participant
from adapter.oncall.urls import object_id
from adapter.store.base import Store
from adapter.worker import xref

__all__ = ["WRITABLE", "ParticipantSync", "participant_values"]

WRITABLE = ("name", "first_name", "last_name", "email", "fee", "cancelled")


def participant_values(participant: Any) -> dict[str, Any]:
    """The writable fields an operation's participant sets (None left out)."""
    source = participant if isinstance(participant, dict) else {
        name: getattr(participant, name, None) for name in WRITABLE}
    # A Decimal fee stays a Decimal: the client sends it as a JSON number.
    return {name: source[name] for name in WRITABLE if source.get(name) is not None}


def _same_person(op_values: dict[str, Any], returned: Participant) -> bool:
    if op_values.get("email") and returned.email:
        return email_key(op_values["email"]) == email_key(returned.email)
    wanted = name_tokens(op_values.get("name"), op_values.get("first_name"), op_values.get("last_name"))
    return bool(wanted) and set(wanted) <= set(name_tokens(returned.name, returned.first_name,
                                                            returned.last_name))


def _future(start: str | None, now: datetime) -> bool:
    if not start:
        return True   # a message-type appointment has no start: still live
    try:
        return datetime.fromisoformat(start) > now
    except ValueError:
        return True


class ParticipantSync:
    def __init__(self, store: Store, client: Any) -> None:
        self.store = store
        self.client = client

    async def record_created(self, appt_id: str, appointment: Appointment, participants: list[Any]) -> None:
        """Keep the URL OnCall gave each participant of a new (or adopted) appointment."""
        returned = [p for p in appointment.participants if p.url]
        unclaimed = list(returned)
        for index, participant in enumerate(participants):
            values = participant_values(participant)
            match = next((p for p in unclaimed if _same_person(values, p)), None)
            if match is None and len(returned) == len(participants) and returned[index] in unclaimed:
                match = returned[index]   # same count and order: position is the best evidence left
            if match is None or match.url is None:
                continue
            unclaimed.remove(match)
            await self._record(appt_id, str(participant.emr_patient_id), match.url, appointment.url, values,
                               start=_start(appointment))

    async def forget_other(self, appt_id: str, appointment_url: str) -> int:
        """Delete the participant entries of `appt_id` that belong to another OnCall appointment than
        `appointment_url` (and their reverse-index entries); returns how many."""
        forgotten = 0
        for entry in await self.store.xref_list(xref.PARTICIPANT, prefix=f"{appt_id}|"):
            _appt, pid = xref.split_pair(entry.source_id)
            reverse_key = xref.patient_appointment_key(pid, appt_id)
            reverse = await self.store.xref_get(xref.PATIENT_APPOINTMENT, reverse_key)
            if reverse is not None and reverse.target == appointment_url:
                continue
            await self.store.xref_delete(xref.PATIENT_APPOINTMENT, reverse_key)
            await self.store.xref_delete(xref.PARTICIPANT, entry.source_id)
            forgotten += 1
        return forgotten

    async def sync(self, appt_id: str, appointment_url: str, participants: list[Any]) -> int:
        """Patch the changed fields of known participants, add new ones; returns how many were touched."""
        touched = 0
        for participant in participants:
            pid = str(participant.emr_patient_id)
            values = participant_values(participant)
            known = await self.store.xref_get(xref.PARTICIPANT, xref.participant_key(appt_id, pid))
            if known is not None:
                changes = xref.changed_fields(values, known.detail)
                if changes:
                    await self.client.patch_participant(known.target, changes)
                    touched += 1
                await self._record(appt_id, pid, known.target, appointment_url, values, keep=known.detail)
                continue
            added = await self._add(appt_id, pid, appointment_url, values)
            touched += 1
            await self._record(appt_id, pid, added, appointment_url, values)
        return touched

    async def _add(self, appt_id: str, pid: str, appointment_url: str, values: dict[str, Any]) -> str:
        """Add a participant once: an intent row makes a lost answer look before adding again."""
        intent_key = xref.pending_key("participant", xref.participant_key(appt_id, pid))
        if await self.store.xref_get(xref.PENDING, intent_key) is not None:
            appointment: Appointment = await self.client.get_appointment(appointment_url)
            known = {x.target for x in await self.store.xref_list(xref.PARTICIPANT, prefix=f"{appt_id}|")}
            for candidate in appointment.participants:
                if candidate.url and candidate.url not in known and _same_person(values, candidate):
                    await self.store.xref_delete(xref.PENDING, intent_key)
                    return candidate.url
        await self.store.xref_put(xref.PENDING, intent_key, "intent", {"at": utcnow().isoformat()})
        _updated, added = await self.client.add_participant(appointment_url, values)
        await self.store.xref_delete(xref.PENDING, intent_key)
        return str(added.url)

    async def _record(self, appt_id: str, pid: str, url: str, appointment_url: str, values: dict[str, Any],
                      *, keep: dict[str, Any] | None = None, start: str | None = None) -> None:
        hashes = {**(keep or {}).get("h", {}), **xref.field_hashes(values)}
        await self.store.xref_put(xref.PARTICIPANT, xref.participant_key(appt_id, pid), url, {"h": hashes})
        await self.store.xref_put(xref.PATIENT_APPOINTMENT, xref.patient_appointment_key(pid, appt_id),
                                  appointment_url, {"start": start} if start else {})

    async def patch_fields(self, appt_id: str, pid: str, fields: dict[str, Any]) -> int | None:
        """Send the fields that changed to one participant; None when the participant is unknown."""
        known = await self.store.xref_get(xref.PARTICIPANT, xref.participant_key(appt_id, pid))
        if known is None:
            return None
        changes = xref.changed_fields(fields, known.detail)
        if changes:
            await self.client.patch_participant(known.target, changes)
            hashes = {**known.detail.get("h", {}), **xref.field_hashes(changes)}
            await self.store.xref_put(xref.PARTICIPANT, known.source_id, known.target,
                                      {**known.detail, "h": hashes})
        return object_id(known.target) if changes else 0

    async def future_appointments(self, pid: str, now: datetime | None = None) -> list[str]:
        """EMR appointment ids of this patient's known appointments that are neither past nor cancelled."""
        now = now or utcnow()
        out: list[str] = []
        for entry in await self.store.xref_list(xref.PATIENT_APPOINTMENT, prefix=f"{pid}|"):
            _pid, appt_id = xref.split_pair(entry.source_id)
            appointment = await self.store.xref_get(xref.APPOINTMENT, appt_id)
            if appointment is None or appointment.detail.get("cancelled"):
                continue
            if _future(appointment.detail.get("start"), now):
                out.append(appt_id)
        return out


def _start(appointment: Appointment) -> str | None:
    return appointment.datetime.isoformat() if appointment.datetime else None
