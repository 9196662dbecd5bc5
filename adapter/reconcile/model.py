"""The values reconciliation works on: what each side holds (a `Snapshot`) and what differs (`Finding`).

Collecting (I/O) fills a Snapshot; comparing (pure) turns it into Findings; reporting renders them and
fixing turns their `fix` operations into envelopes. Findings carry patient data (names, e-mails): they
are shown to the operator who asked for the report, never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from adapter.oncall.models import Appointment, Contact
from adapter.store.base import Xref

__all__ = ["EMRAppointment", "EMRPatient", "Finding", "FindingKind", "Snapshot", "Window"]


class FindingKind(StrEnum):
    MISSING_IN_ONCALL = "missing_in_oncall"            # an EMR patient with no contact
    CONTACT_WITHOUT_EMR_ID = "contact_without_emr_id"  # a contact whose EMR id field is empty
    DUPLICATE_EMR_ID = "duplicate_emr_id"              # one EMR id on several contacts
    DUPLICATE_EMAIL_BIRTH_DATE = "duplicate_email_birth_date"
    FIELD_MISMATCH = "field_mismatch"                  # name, e-mail, phone, birth date, sex
    APPOINTMENT_OUT_OF_SYNC = "appointment_out_of_sync"  # start, duration, cancelled
    CROSSWALK_STALE = "crosswalk_stale"                # points at an object that no longer exists
    CROSSWALK_MISSING = "crosswalk_missing"            # a contact carries an EMR id the crosswalk lacks
    EMR_RECORD_UNUSABLE = "emr_record_unusable"        # an EMR record the mapping cannot read


@dataclass(frozen=True, slots=True)
class Window:
    """Appointments starting in [since, until) are compared."""

    since: datetime
    until: datetime

    def holds(self, start: datetime | None) -> bool:
        return start is None or self.since <= start < self.until


@dataclass(frozen=True, slots=True)
class EMRPatient:
    """One EMR patient as the feed would write it to OnCall."""

    id: str
    values: dict[str, Any]          # contact fields (first_name, email, date_of_birth as ISO text ...)
    where: str                      # "Patient/123", "export.csv:14"
    upsert: dict[str, Any] | None = None   # the contact_upsert operation (JSON) that creates it


@dataclass(frozen=True, slots=True)
class EMRAppointment:
    id: str
    start: datetime | None
    duration: int | None
    cancelled: bool
    where: str
    patients: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """Everything compared, as collected at one moment."""

    window: Window
    emr_id_label: str
    contacts: list[Contact]
    patient_xrefs: list[Xref]
    appointment_xrefs: list[Xref]                     # those in the window (or named by the EMR)
    appointments: dict[str, Appointment]              # appointment URL -> appointment, as fetched
    gone: set[str] = field(default_factory=set)       # crosswalk targets OnCall answered 404 for
    emr_patients: list[EMRPatient] | None = None      # None: no EMR source configured
    emr_appointments: list[EMRAppointment] | None = None
    emr_unusable: list[tuple[str, str]] = field(default_factory=list)   # (where, why)
    emr_source: str | None = None                     # "fhir search https://...", "export.ndjson"


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference. `fix` is the list of operations (JSON) that correct it; empty: a person decides."""

    kind: FindingKind
    subject: str                    # "patient MRN1", "contact 42", "appointment A7"
    detail: str                     # for the operator (may name the patient)
    ordering_key: str               # the feed's key for the same object, so fixes apply in order with it
    emr_id: str | None = None
    oncall_url: str | None = None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)   # field -> (expected, in OnCall)
    fix: tuple[dict[str, Any], ...] = ()
    action: str = ""                # what the fix does, or what a person should do

    @property
    def fixable(self) -> bool:
        return bool(self.fix)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind), "subject": self.subject, "detail": self.detail,
            "emr_id": self.emr_id, "oncall_url": self.oncall_url,
            "fields": {k: {"expected": _plain(a), "oncall": _plain(b)} for k, (a, b) in self.fields.items()},
            "fixable": self.fixable, "action": self.action, "fix": list(self.fix),
        }


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
