"""Crosswalk namespaces and keys, defined once.

    namespace              source id                    target                detail
    patient                EMR patient id               contact URL           {"h": {field: hash}}
    appointment            EMR appointment id           appointment URL       {"h": ..., "cancelled", "start",
                                                                               "patients": [...]}
    participant            "{appt id}|{patient id}"     participant URL       {"h": {field: hash}}
    patient_appointment    "{patient id}|{appt id}"     appointment URL       {"start": iso}
    pending                "{kind}:{EMR id}"            "intent"              {"envelope_id", "at", ...}

`patient_appointment` is the reverse index of `participant`, so an A08 can find a patient's
appointments with one prefix query. `pending` holds an intent written BEFORE a create is sent and
cleared once its result is recorded: an intent found on a later attempt means "outcome unknown:
search OnCall and adopt what the earlier attempt made before creating again".

Details hold hashes of the values last written, never the values: "send only what changed" needs
equality, not the data, and the crosswalk outlives payload retention.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "APPOINTMENT",
    "METADATA_APPOINTMENT_KEY",
    "METADATA_PATIENT_KEY",
    "PARTICIPANT",
    "PATIENT",
    "PATIENT_APPOINTMENT",
    "PENDING",
    "changed_fields",
    "field_hashes",
    "participant_key",
    "patient_appointment_key",
    "pending_key",
    "split_pair",
]

PATIENT = "patient"
APPOINTMENT = "appointment"
PARTICIPANT = "participant"
PATIENT_APPOINTMENT = "patient_appointment"
PENDING = "pending"

# Metadata keys the adapter writes on every appointment it creates: what makes an appointment whose
# create outcome was unknown findable again (and what reconciliation reads).
METADATA_APPOINTMENT_KEY = "emr_appointment_id"
METADATA_PATIENT_KEY = "emr_patient_id"

_SEP = "|"


def participant_key(appointment_id: str, patient_id: str) -> str:
    return f"{appointment_id}{_SEP}{patient_id}"


def patient_appointment_key(patient_id: str, appointment_id: str) -> str:
    return f"{patient_id}{_SEP}{appointment_id}"


def split_pair(key: str) -> tuple[str, str]:
    """("a", "b") from "a|b" (ids never contain "|": it is HL7's field separator)."""
    first, _, second = key.partition(_SEP)
    return first, second


def pending_key(kind: str, emr_id: str) -> str:
    """The intent key for a create of `kind` ("contact", "appointment") for one EMR id."""
    return f"{kind}:{emr_id}"


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def field_hashes(values: dict[str, Any]) -> dict[str, str]:
    """Hashes of each field's value, as kept in a crosswalk detail."""
    return {key: _hash(value) for key, value in values.items()}


def changed_fields(values: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    """The subset of `values` whose hash differs from the one recorded in `detail["h"]`."""
    known: dict[str, str] = (detail or {}).get("h", {})
    return {key: value for key, value in values.items() if known.get(key) != _hash(value)}
