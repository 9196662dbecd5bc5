"""Appointments out of sync (start, duration, cancelled) and crosswalk entries whose appointment is gone.

Expected values come from the EMR when it was collected and names the appointment; otherwise from
the crosswalk's memory of the last write (the start it recorded, the hash of the duration, the
cancelled flag), which finds changes made inside OnCall but cannot say what the EMR wants now, so
those findings are for a person. From the EMR, a reschedule is patched and a cancellation applied
(the feed would do the same on its next message); an appointment cancelled in OnCall alone cannot be
revived there and is left to a person.
"""

from __future__ import annotations

from typing import Any

from adapter.oncall.models import Appointment
from adapter.reconcile.fields import appointment_field, as_instant, same
from adapter.reconcile.model import EMRAppointment, Finding, FindingKind, Snapshot
from adapter.store.base import Xref
from adapter.worker import xref

__all__ = ["compare_appointments"]


def compare_appointments(snap: Snapshot) -> list[Finding]:
    emr = {a.id: a for a in snap.emr_appointments or []}
    out: list[Finding] = []
    for entry in snap.appointment_xrefs:
        appt_id = entry.source_id
        if entry.target in snap.gone:
            out.append(Finding(
                FindingKind.CROSSWALK_STALE, f"appointment {appt_id}",
                f"the crosswalk points at {entry.target}, which OnCall no longer has",
                f"appointment:{appt_id}", appt_id, entry.target,
                fix=({"kind": "xref_unlink", "namespace": xref.APPOINTMENT, "source_id": appt_id,
                      "target": entry.target},),
                action="forget the entry: the EMR's next message for it creates the appointment again"))
            continue
        appointment = snap.appointments.get(entry.target)
        if appointment is None:
            continue
        expected = emr.get(appt_id)
        finding = (_against_emr(appointment, expected, entry) if expected is not None
                   else _against_crosswalk(appointment, entry))
        if finding is not None:
            out.append(finding)
    return out


def _against_emr(appointment: Appointment, expected: EMRAppointment, entry: Xref) -> Finding | None:
    diffs: dict[str, tuple[Any, Any]] = {}
    if expected.cancelled != appointment.cancelled:
        diffs["cancelled"] = (expected.cancelled, appointment.cancelled)
    if not expected.cancelled and not appointment.cancelled:
        start = expected.start.isoformat() if expected.start else None
        if start and not same("datetime", start, appointment.datetime):
            diffs["datetime"] = (start, appointment_field(appointment, "datetime"))
        if expected.duration and not same("duration", expected.duration, appointment.duration):
            diffs["duration"] = (expected.duration, appointment.duration)
    if not diffs:
        return None
    appt_id = entry.source_id
    fix: tuple[dict[str, Any], ...] = ()
    if expected.cancelled and not appointment.cancelled:
        fix = ({"kind": "appointment_cancel", "emr_appointment_id": appt_id,
                "reason": "cancelled in the EMR (reconcile)"},)
        action = "cancel it in OnCall (OnCall e-mails the participants)"
    elif appointment.cancelled:
        action = ("cancelled in OnCall but booked in the EMR: OnCall cannot revive it; cancel it in the EMR "
                  "or resend it from the EMR to create a new one")
    else:
        fix = ({"kind": "appointment_patch", "appointment_url": appointment.url,
                "emr_appointment_id": appt_id, "set": {k: e for k, (e, _o) in diffs.items()},
                "expect": {k: o for k, (_e, o) in diffs.items()}},)
        action = f"patch {', '.join(diffs)} from the EMR (OnCall may notify the participants)"
    return Finding(FindingKind.APPOINTMENT_OUT_OF_SYNC, f"appointment {appt_id}",
                   f"OnCall appointment {appointment.id} differs from EMR appointment {appt_id} "
                   f"({expected.where}) in {', '.join(diffs)}",
                   f"appointment:{appt_id}", appt_id, appointment.url, diffs, fix, action)


def _against_crosswalk(appointment: Appointment, entry: Xref) -> Finding | None:
    detail = entry.detail
    diffs: dict[str, tuple[Any, Any]] = {}
    if bool(detail.get("cancelled")) != appointment.cancelled:
        diffs["cancelled"] = (bool(detail.get("cancelled")), appointment.cancelled)
    start = detail.get("start")
    if start and as_instant(start) is not None and not same("datetime", start, appointment.datetime):
        diffs["datetime"] = (start, appointment_field(appointment, "datetime"))
    duration_hash = (detail.get("h") or {}).get("duration")
    if duration_hash and appointment.duration is not None and (
            xref.field_hashes({"duration": appointment.duration})["duration"] != duration_hash):
        diffs["duration"] = ("(as last sent)", appointment.duration)
    if not diffs:
        return None
    appt_id = entry.source_id
    return Finding(FindingKind.APPOINTMENT_OUT_OF_SYNC, f"appointment {appt_id}",
                   f"OnCall appointment {appointment.id} changed since the adapter last wrote it "
                   f"({', '.join(diffs)})", f"appointment:{appt_id}", appt_id, appointment.url, diffs,
                   action="changed inside OnCall: reconcile with the EMR (--emr-export or fhir.emr_base_url) "
                          "to correct it from the EMR, or resend it from the EMR")
