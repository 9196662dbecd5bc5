"""The executor: applies a mapped envelope's operations through the OnCall client, in order.

Each operation is idempotent as applied here (the crosswalk and the intent rows make a re-run after
a retry or a crash a no-op or an adoption), so a failure at operation 3 is retried from operation 1
safely. Every applied operation writes one `op_applied` audit row and log line: op kind, action and
the OnCall object id, never patient data.
"""

from __future__ import annotations

from typing import Any

import structlog

from adapter.envelope import Envelope
from adapter.oncall.urls import object_id
from adapter.retry import describe_error
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.participants import ParticipantSync, participant_values
from adapter.worker.upserts import Applied, AppointmentUpserts, ContactUpserts

__all__ = ["Executor", "OperationFailed"]

logger = structlog.get_logger(__name__)

# Participant fields an ADT update carries over to the patient's future appointments.
_PERSON_FIELDS = ("first_name", "last_name", "email")


class OperationFailed(Exception):
    """Operation `index` (0-based) of an envelope failed with `error`; the message names both."""

    def __init__(self, index: int, op_kind: str, error: BaseException) -> None:
        self.index = index
        self.op_kind = op_kind
        self.error = error
        super().__init__(f"operation {index + 1} ({op_kind}) failed: {describe_error(error)}")


class Executor:
    def __init__(self, store: Store, client: Any, *, emr_id_label: str = "EMR id") -> None:
        self.store = store
        self.client = client
        self.participants = ParticipantSync(store, client)
        self.contacts = ContactUpserts(store, client, emr_id_label=emr_id_label)
        self.appointments = AppointmentUpserts(store, client, self.participants)

    async def execute(self, envelope: Envelope, result: Any) -> int:
        """Apply `result.operations` in order; returns how many were applied. Raises OperationFailed."""
        count = 0
        for index, op in enumerate(result.operations):
            kind = str(getattr(op, "kind", type(op).__name__))
            try:
                applied = await self.apply(op, envelope.id)
            except Exception as exc:
                raise OperationFailed(index, kind, exc) from exc
            detail = {"op": index, **applied.detail()}
            await self.store.audit(envelope.id, "op_applied", detail)
            logger.info("op_applied", envelope_id=envelope.id, kind=envelope.kind, **detail)
            count += 1
        return count

    async def apply(self, op: Any, envelope_id: int) -> Applied:
        kind = op.kind
        if kind == "contact_upsert":
            applied = await self.contacts.upsert(op, envelope_id)
            if getattr(op, "update_participants", False):
                touched = await self._update_future_participants(op)
                applied = Applied(applied.op_kind, applied.action, applied.object, applied.object_id, touched)
            return applied
        if kind == "appointment_upsert":
            return await self.appointments.upsert(op, envelope_id)
        if kind == "appointment_cancel":
            return await self.appointments.cancel(op)
        if kind == "participant_update":
            return await self._participant_update(op)
        if kind == "participant_cancel":
            return await self._participant_cancel(op)
        if kind == "patient_merge":
            return await self._merge(op)
        if kind == "ignore":
            return Applied("ignore", "ignored")
        raise NotImplementedError(f"operation kind {kind!r} has no executor (a newer mapping set?)")

    async def _update_future_participants(self, op: Any) -> int:
        pid = str(op.emr_patient_id)
        values = {k: getattr(op, k) for k in _PERSON_FIELDS if getattr(op, k, None) is not None}
        if op.first_name and op.last_name:
            values["name"] = f"{op.first_name} {op.last_name}"
        touched = 0
        for appt_id in await self.participants.future_appointments(pid):
            if await self.participants.patch_fields(appt_id, pid, values):
                touched += 1
        return touched

    async def _participant_update(self, op: Any) -> Applied:
        pid = str(op.emr_patient_id)
        values = participant_values(op)
        if getattr(op, "scope", "appointment") == "future_appointments":
            targets = await self.participants.future_appointments(pid)
        else:
            targets = [str(op.emr_appointment_id)]
        touched = 0
        unknown = 0
        for appt_id in targets:
            result = await self.participants.patch_fields(appt_id, pid, values)
            if result is None:
                unknown += 1
            elif result:
                touched += 1
        action = "patched" if touched else ("nothing_to_update" if unknown == len(targets) else "unchanged")
        return Applied("participant_update", action, "participants", None, touched)

    async def _participant_cancel(self, op: Any) -> Applied:
        result = await self.participants.patch_fields(str(op.emr_appointment_id), str(op.emr_patient_id),
                                                      {"cancelled": True})
        if result is None:
            return Applied("participant_cancel", "nothing_to_cancel")
        return Applied("participant_cancel", "cancelled" if result else "unchanged", "participants",
                       result or None)

    async def _merge(self, op: Any) -> Applied:
        """Crosswalk entries of the merged patient move to the survivor; OnCall is not called (the
        merged patient's contact, if any, stays in OnCall for a human to archive)."""
        survivor, merged = str(op.surviving_emr_patient_id), str(op.merged_emr_patient_id)
        moved = 0
        old = await self.store.xref_get(xref.PATIENT, merged)
        if old is not None:
            if await self.store.xref_get(xref.PATIENT, survivor) is None:
                await self.store.xref_put(xref.PATIENT, survivor, old.target, old.detail)
            await self.store.xref_delete(xref.PATIENT, merged)
            moved += 1
        for entry in await self.store.xref_list(xref.PATIENT_APPOINTMENT, prefix=f"{merged}|"):
            _pid, appt_id = xref.split_pair(entry.source_id)
            # The participant moves first and the reverse-index entry is deleted last: that entry is
            # what a re-run (after a crash or a store error in between) finds the work by.
            part = await self.store.xref_get(xref.PARTICIPANT, xref.participant_key(appt_id, merged))
            if part is not None:
                await self.store.xref_put(xref.PARTICIPANT, xref.participant_key(appt_id, survivor),
                                          part.target, part.detail)
                await self.store.xref_delete(xref.PARTICIPANT, part.source_id)
            new_key = xref.patient_appointment_key(survivor, appt_id)
            await self.store.xref_put(xref.PATIENT_APPOINTMENT, new_key, entry.target, entry.detail)
            await self.store.xref_delete(xref.PATIENT_APPOINTMENT, entry.source_id)
            moved += 1
        contact_id = object_id(old.target) if old is not None else None
        action = "merged" if moved else "nothing_to_merge"
        return Applied("patient_merge", action, "contacts", contact_id, moved)
