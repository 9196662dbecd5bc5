"""Loop prevention: recognise a webhook (or a scraped contact) caused by the adapter's own write.

When both directions are on, the forward path's PATCH of an appointment makes OnCall fire
`appointment_updated`; echoing that back to the EMR would write the EMR's own data back to it (and
the EMR's notification would come round again). The forward path records, per object, hashes of
the values it last wrote (crosswalk namespaces `appointment`, `participant`, `patient`; see
adapter/worker/xref.py). An OnCall object is an echo when it is known there and every field the
forward path wrote still has the value it wrote: nothing was changed inside OnCall since.

Compared per field, on the forward path's own representation (`xref.field_hashes`), except the
start time: the forward path writes it with the EMR's offset and OnCall answers in UTC, so the
instants are compared (the crosswalk keeps the start as written, not only its hash). `metadata`
is not compared (OnCall may add keys; nothing in it reaches the EMR) and neither is `fee` (its
representation changes between number and string).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from adapter.errors import TransientError
from adapter.oncall.models import Appointment, Contact
from adapter.store.base import Store, Xref
from adapter.worker import xref

__all__ = ["is_echo_appointment", "is_echo_contact", "is_reverse_write"]

_APPOINTMENT_FIELDS = ("title", "type", "duration", "division", "provider")
_PARTICIPANT_FIELDS = ("name", "first_name", "last_name", "email")
_CONTACT_FIELDS = ("first_name", "last_name", "email", "phone", "sex", "date_of_birth", "notes", "division",
                   "provider")


def is_reverse_write(resource: dict[str, Any], oncall_base_url: str) -> bool:
    """True for a FHIR Patient or Appointment the reverse path wrote to the EMR: it carries an
    identifier whose system is an OnCall collection on the configured base (``<base>/participants``,
    ``/contacts``, ``/appointments``). The forward path uses it to leave such resources alone when
    the EMR notifies it of them (the other half of loop prevention)."""
    prefix = oncall_base_url.rstrip("/") + "/"
    return any(isinstance(ident, dict) and str(ident.get("system", "")).startswith(prefix)
               and str(ident["system"])[len(prefix):] in ("participants", "contacts", "appointments")
               for ident in resource.get("identifier") or [])


def _same(hashes: dict[str, str], values: dict[str, Any]) -> bool:
    """Every recorded field still holds the value recorded (a field never written is not compared)."""
    current = xref.field_hashes({k: v for k, v in values.items() if k in hashes})
    return all(hashes[k] == h for k, h in current.items())


def _first(entries: Sequence[Xref]) -> Xref:
    return next(iter(entries))


def _instant(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


async def is_echo_appointment(store: Store, appointment: Appointment) -> bool:
    entries = await store.xref_by_target(xref.APPOINTMENT, appointment.url)
    if not entries:
        emr_id = (appointment.metadata or {}).get(xref.METADATA_APPOINTMENT_KEY)
        if emr_id is not None:
            # Created by the forward path, whose worker has not recorded it yet: OnCall fires the
            # webhook as soon as it answers the POST. Decide once the record is there.
            raise TransientError(f"appointment {appointment.id} was created from EMR appointment data that "
                                 "the forward path has not recorded yet; deciding once it has",
                                 retry_after=1.0)
        return False                      # made in OnCall: not ours
    detail = _first(entries).detail
    hashes: dict[str, str] = detail.get("h") or {}
    if not hashes or bool(detail.get("cancelled")) != appointment.cancelled:
        return False
    if not _same(hashes, {f: getattr(appointment, f) for f in _APPOINTMENT_FIELDS}):
        return False
    if "datetime" in hashes:
        written, now = _instant(detail.get("start")), appointment.datetime
        if written is None or now is None or written != now:
            return False
    for participant in appointment.participants:
        if participant.url is None:
            return False
        known = await store.xref_by_target(xref.PARTICIPANT, participant.url)
        if not known:
            return False                  # a participant added inside OnCall
        p_hashes: dict[str, str] = _first(known).detail.get("h") or {}
        if not _same(p_hashes, {f: getattr(participant, f) for f in _PARTICIPANT_FIELDS}):
            return False
    return True


async def is_echo_contact(store: Store, contact: Contact) -> bool:
    entries = await store.xref_by_target(xref.PATIENT, contact.url)
    if not entries:
        return False
    hashes: dict[str, str] = _first(entries).detail.get("h") or {}
    if not hashes:
        return False
    values = {f: getattr(contact, f, None) for f in _CONTACT_FIELDS}
    birth = values.get("date_of_birth")
    if isinstance(birth, dt.date):
        values["date_of_birth"] = birth.isoformat()
    return _same(hashes, values)
