"""Contact and appointment upserts: create once, adopt what exists, patch only what changed.

Create-then-record is made safe against a crash or a lost answer between the two by an intent row
(crosswalk namespace `pending`) written before the POST and cleared once the result is recorded.
An intent found on a later attempt means the earlier create may have happened: look for what it
made (contacts by the EMR id custom field, appointments by the EMR appointment id in metadata) and
adopt it before creating. Contacts are always looked up before a create anyway (OnCall does not
refuse duplicates, and a contact may exist from before the adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from adapter.envelope import utcnow
from adapter.errors import PermanentError
from adapter.oncall.matching import email_key, name_tokens, phone_key
from adapter.oncall.models import Appointment, Contact
from adapter.oncall.urls import object_id
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.participants import ParticipantSync, participant_values

__all__ = ["Applied", "AppointmentUpserts", "ContactUpserts", "contact_values"]

logger = structlog.get_logger(__name__)

CONTACT_FIELDS = ("first_name", "last_name", "email", "phone", "sex", "date_of_birth", "notes",
                  "division", "provider")
# Sent on create only: OnCall may refuse to change a contact's e-mail (oncall-api.md, assumed).
CONTACT_CREATE_ONLY = frozenset({"email"})
APPOINTMENT_FIELDS = ("title", "type", "datetime", "duration", "division", "provider", "metadata")


@dataclass(frozen=True, slots=True)
class Applied:
    """What one operation did, as recorded in the audit (ids only, no PHI)."""

    op_kind: str
    action: str                 # created, adopted, patched, unchanged, cancelled, recreated, ...
    object: str | None = None   # "contacts", "appointments", "participants"
    object_id: int | None = None
    count: int = 0              # objects touched (participants patched, crosswalk entries moved)

    def detail(self) -> dict[str, Any]:
        return {k: v for k, v in (("op_kind", self.op_kind), ("action", self.action), ("object", self.object),
                                  ("object_id", self.object_id), ("count", self.count)) if v not in (None, 0)}


def _json(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def contact_values(op: Any) -> dict[str, Any]:
    """The contact fields an operation sets (None left out: absent in the EMR is not "erase")."""
    return {name: _json(getattr(op, name)) for name in CONTACT_FIELDS if getattr(op, name, None) is not None}


def _email_and_birth_agree(contact: Contact, values: dict[str, Any]) -> bool:
    return bool(values.get("email") and values.get("date_of_birth")
                and email_key(contact.email) == email_key(values["email"])
                and contact.date_of_birth is not None
                and contact.date_of_birth.isoformat() == values["date_of_birth"])


def _all_agree(contact: Contact, values: dict[str, Any]) -> bool:
    """Names, e-mail, phone and birth date, each as sent, all equal (and at least a name and one of
    e-mail/phone present): the same person, whoever created the contact."""
    if not (values.get("email") or values.get("phone")):
        return False
    checks = {
        "first_name": lambda a, b: name_tokens(a) == name_tokens(b),
        "last_name": lambda a, b: name_tokens(a) == name_tokens(b),
        "email": lambda a, b: email_key(a) == email_key(b),
        "phone": lambda a, b: phone_key(a) == phone_key(b),
        "date_of_birth": lambda a, b: (a.isoformat() if a else None) == b,
    }
    return all(check(getattr(contact, name), values[name]) for name, check in checks.items()
               if values.get(name) is not None)


class ContactUpserts:
    def __init__(self, store: Store, client: Any, *, emr_id_label: str) -> None:
        self.store = store
        self.client = client
        self.emr_id_label = emr_id_label

    async def upsert(self, op: Any, envelope_id: int) -> Applied:
        pid = str(op.emr_patient_id)
        values = contact_values(op)
        known = await self.store.xref_get(xref.PATIENT, pid)
        if known is not None:
            changes = {k: v for k, v in xref.changed_fields(values, known.detail).items()
                       if k not in CONTACT_CREATE_ONLY}
            if known.detail.get("emr_id") is False:   # created before the field id was known
                field_id = await self.client.custom_field_id(self.emr_id_label)
                changes["custom_field_values"] = {field_id: pid}
            if changes:
                await self.client.patch_contact(known.target, changes)
            await self._record(pid, known.target, values)
            return Applied("contact_upsert", "patched" if changes else "unchanged", "contacts",
                           object_id(known.target))
        intent_key = xref.pending_key("contact", pid)
        intent = await self.store.xref_get(xref.PENDING, intent_key)
        found = await self.find(pid, values)
        if found is not None:
            action = await self._adopt(found, pid, values)
            if intent is not None:
                await self.store.xref_delete(xref.PENDING, intent_key)
                action = "adopted_after_unknown_outcome"
            return Applied("contact_upsert", action, "contacts", found.id)
        await self.store.xref_put(xref.PENDING, intent_key, "intent",
                                  {"envelope_id": envelope_id, "at": utcnow().isoformat()})
        contact = await self._create(pid, values, intent_key)
        return Applied("contact_upsert", "created", "contacts", contact.id)

    async def find(self, pid: str, values: dict[str, Any]) -> Contact | None:
        """The OnCall contact for this patient: one whose EMR id field is `pid`, or, lacking an EMR id,
        whose e-mail and birth date both agree, or whose every identifying field sent agrees (what a
        create interrupted before the EMR id was set leaves). One holding another EMR id never matches."""
        queries: list[dict[str, str]] = []
        if values.get("email"):
            queries.append({"email": values["email"]})
        name = " ".join(str(values[k]) for k in ("first_name", "last_name") if values.get(k))
        if name:
            queries.append({"name": name})
        if values.get("phone") and not name:
            # Only without a name: a contact found by phone alone (name and e-mail both different) is
            # too weak to adopt, so the extra request per new patient would buy nothing.
            queries.append({"phone": values["phone"]})
        weak: Contact | None = None
        seen: set[str] = set()
        for query in queries:
            for contact in await self.client.find_contacts(**query):
                if contact.url in seen:
                    continue
                seen.add(contact.url)
                emr_id = contact.custom_value(self.emr_id_label)
                if emr_id not in (None, "", False):
                    if str(emr_id) == pid:
                        return contact
                    continue
                if weak is None and (_email_and_birth_agree(contact, values) or _all_agree(contact, values)):
                    weak = contact
        return weak

    async def _adopt(self, contact: Contact, pid: str, values: dict[str, Any]) -> str:
        changes: dict[str, Any] = {}
        if contact.custom_value(self.emr_id_label) in (None, "", False):
            field_id = await self.client.custom_field_id(self.emr_id_label)
            changes["custom_field_values"] = {field_id: pid}
        current = contact.model_dump(mode="json")
        changes.update({k: v for k, v in values.items()
                        if k not in CONTACT_CREATE_ONLY and current.get(k) != v})
        if changes:
            await self.client.patch_contact(contact.url, changes)
        await self._record(pid, contact.url, values)
        return "adopted"

    async def _create(self, pid: str, values: dict[str, Any], intent_key: str) -> Contact:
        try:
            field_id: str | None = await self.client.custom_field_id(self.emr_id_label)
        except PermanentError:
            field_id = None   # no contact yet to read the custom field ids from: set it after the create
        body = dict(values)
        if field_id is not None:
            body["custom_field_values"] = {field_id: pid}
        contact: Contact = await self.client.create_contact(body)
        # Recorded before anything else can fail: a retry then patches, never creates again.
        await self._record(pid, contact.url, values, emr_id=field_id is not None)
        await self.store.xref_delete(xref.PENDING, intent_key)
        if field_id is None:
            field_id = await self.client.custom_field_id(self.emr_id_label)
            await self.client.patch_contact(contact.url, {"custom_field_values": {field_id: pid}})
            await self._record(pid, contact.url, values)
        return contact

    async def _record(self, pid: str, url: str, values: dict[str, Any], *, emr_id: bool = True) -> None:
        detail: dict[str, Any] = {"h": xref.field_hashes(values)}
        if not emr_id:
            detail["emr_id"] = False   # the EMR id custom field is still to be set
        await self.store.xref_put(xref.PATIENT, pid, url, detail)


class _NoParticipants:
    """A cancel names no participants: `find` then looks through every appointment."""

    participants: tuple[Any, ...] = ()


class AppointmentUpserts:
    def __init__(self, store: Store, client: Any, participants: ParticipantSync) -> None:
        self.store = store
        self.client = client
        self.participants = participants

    @staticmethod
    def values(op: Any) -> dict[str, Any]:
        values = {name: _json(getattr(op, name)) for name in APPOINTMENT_FIELDS
                  if getattr(op, name, None) is not None}
        metadata = dict(values.get("metadata") or {})
        # What makes an appointment findable again after a create whose outcome is unknown.
        metadata.setdefault(xref.METADATA_APPOINTMENT_KEY, str(op.emr_appointment_id))
        values["metadata"] = metadata
        return values

    async def upsert(self, op: Any, envelope_id: int) -> Applied:
        appt_id = str(op.emr_appointment_id)
        values = self.values(op)
        known = await self.store.xref_get(xref.APPOINTMENT, appt_id)
        if known is not None and not known.detail.get("cancelled"):
            changes = xref.changed_fields(values, known.detail)
            if changes:
                await self.client.patch_appointment(known.target, changes)
            touched = await self.participants.sync(appt_id, known.target, op.participants)
            await self._record(appt_id, known.target, values, op)
            action = "patched" if changes or touched else "unchanged"
            return Applied("appointment_upsert", action, "appointments", object_id(known.target), touched)
        # New, or the EMR revived an appointment cancelled in OnCall (irreversible there): create.
        replaced = known.target if known is not None else None
        intent_key = xref.pending_key("appointment", appt_id)
        intent = await self.store.xref_get(xref.PENDING, intent_key)
        if intent is not None:
            found = await self.find(appt_id, op, exclude=replaced)
            if found is not None:
                await self._record_created(appt_id, found, values, op)
                await self.store.xref_delete(xref.PENDING, intent_key)
                return Applied("appointment_upsert", "adopted_after_unknown_outcome", "appointments",
                               found.id)
        await self.store.xref_put(xref.PENDING, intent_key, "intent",
                                  {"envelope_id": envelope_id, "at": utcnow().isoformat()})
        body = dict(values)
        body["participants"] = [participant_values(p) for p in op.participants]
        created: Appointment = await self.client.create_appointment(body)
        await self._record_created(appt_id, created, values, op)
        await self.store.xref_delete(xref.PENDING, intent_key)
        action = "recreated" if replaced else "created"
        return Applied("appointment_upsert", action, "appointments", created.id)

    async def find(self, appt_id: str, op: Any, *, exclude: str | None = None) -> Appointment | None:
        """An uncancelled appointment carrying this EMR appointment id in its metadata: among the
        appointments of the participants' known contacts, else among all the key can see."""
        def matches(appointment: Appointment) -> bool:
            meta = appointment.metadata or {}
            return (str(meta.get(xref.METADATA_APPOINTMENT_KEY)) == appt_id and not appointment.cancelled
                    and appointment.url != exclude)

        for participant in op.participants:
            contact = await self.store.xref_get(xref.PATIENT, str(participant.emr_patient_id))
            if contact is None:
                continue
            for appointment in await self.client.contact_appointments(contact.target):
                if matches(appointment):
                    return appointment
        async for appointment in self.client.list_appointments():
            if matches(appointment):
                return appointment
        return None

    async def _record_created(self, appt_id: str, appointment: Appointment, values: dict[str, Any],
                              op: Any) -> None:
        # A re-created appointment (un-cancel) has new participants: entries left from the old one
        # would send later participant updates to the cancelled appointment. Forget them first.
        await self.participants.forget_other(appt_id, appointment.url)
        await self.participants.record_created(appt_id, appointment, op.participants)
        await self._record(appt_id, appointment.url, values, op)

    async def _record(self, appt_id: str, url: str, values: dict[str, Any], op: Any) -> None:
        await self.store.xref_put(xref.APPOINTMENT, appt_id, url, {
            "h": xref.field_hashes(values), "cancelled": False, "start": values.get("datetime"),
            "patients": sorted({str(p.emr_patient_id) for p in op.participants})})

    async def cancel(self, op: Any) -> Applied:
        appt_id = str(op.emr_appointment_id)
        known = await self.store.xref_get(xref.APPOINTMENT, appt_id)
        intent_key = xref.pending_key("appointment", appt_id)
        if (known is None or known.detail.get("cancelled")) \
                and await self.store.xref_get(xref.PENDING, intent_key) is not None:
            # A create whose outcome is unknown (its envelope dropped, or given up on) may have made
            # the appointment: find it by its EMR id and cancel that, else it stays live in OnCall.
            found = await self.find(appt_id, _NoParticipants(),
                                    exclude=known.target if known is not None else None)
            if found is not None:
                await self.client.cancel_appointment(found.url)
                await self.store.xref_put(xref.APPOINTMENT, appt_id, found.url, {
                    "cancelled": True, "start": found.datetime.isoformat() if found.datetime else None})
                await self.store.xref_delete(xref.PENDING, intent_key)
                return Applied("appointment_cancel", "cancelled_after_unknown_outcome", "appointments",
                               found.id)
        if known is None:
            return Applied("appointment_cancel", "nothing_to_cancel")
        if known.detail.get("cancelled"):
            return Applied("appointment_cancel", "unchanged", "appointments", object_id(known.target))
        await self.client.cancel_appointment(known.target)
        await self.store.xref_put(xref.APPOINTMENT, appt_id, known.target,
                                  {**known.detail, "cancelled": True})
        return Applied("appointment_cancel", "cancelled", "appointments", object_id(known.target))
