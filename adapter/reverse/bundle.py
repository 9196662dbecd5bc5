"""Reverse operations -> a FHIR R4 `transaction` Bundle, and the EMR ids read from its response.

Every entry is a conditional update (``PUT Patient?identifier=<system>|<value>``) on an identifier
whose system names the OnCall collection on the configured base (``https://api.oncallhealth.ca/
participants``, ``.../contacts``, ``.../appointments``): re-sending the same appointment updates
the same resources, never duplicates them. The Appointment's participants reference the Patients
by their ``fullUrl`` (``urn:uuid:``), which the server rewrites to the ids it assigns.

The fullUrls are uuid5 of the OnCall URL, so one input always gives the same Bundle, byte for
byte: its hash is what the executor compares to what it last sent. Each resource is validated
with fhir.resources' R4B models (they read R4 Patient and Appointment) before anything is sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from adapter.envelope import content_hash
from adapter.errors import MappingError
from adapter.oncall.urls import object_id, object_kind
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatient

__all__ = ["BundleBuilder", "bundle_hash", "canonical_json", "full_url", "response_locations"]

_NS = uuid.UUID("6f0d4c8e-2b7a-4f43-9a51-0c1f5e1d7a10")   # fixed: fullUrls must be stable across runs


def full_url(oncall_url: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, oncall_url)}"


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def bundle_hash(bundle: dict[str, Any]) -> str:
    return content_hash(canonical_json(bundle))


class BundleBuilder:
    """Builds transaction Bundles whose identifier systems derive from the OnCall base URL.

    `emr_identifier_system` (e.g. the MRN system the FHIR listener uses) is added as a second
    Patient identifier when the EMR's own id is known (contact custom field "EMR id").
    """

    def __init__(self, oncall_base_url: str, *, emr_identifier_system: str | None = None) -> None:
        self.base = oncall_base_url.rstrip("/")
        self.emr_identifier_system = emr_identifier_system

    def system(self, oncall_url: str) -> str:
        return f"{self.base}/{object_kind(oncall_url) or 'objects'}"

    def identifier(self, oncall_url: str) -> dict[str, str]:
        return {"system": self.system(oncall_url), "value": str(object_id(oncall_url))}

    def conditional(self, resource_type: str, oncall_url: str) -> str:
        ident = self.identifier(oncall_url)
        return f"{resource_type}?identifier={ident['system']}|{ident['value']}"

    # -- resources ------------------------------------------------------------------------------
    def patient(self, p: EMRPatient) -> dict[str, Any]:
        identifiers = [self.identifier(p.oncall_url)]
        if p.emr_patient_id and self.emr_identifier_system:
            identifiers.append({"system": self.emr_identifier_system, "value": p.emr_patient_id})
        name: dict[str, Any] = {"use": "usual"}
        if p.last_name:
            name["family"] = p.last_name
        if p.first_name:
            name["given"] = [p.first_name]
        text = p.name or " ".join(x for x in (p.first_name, p.last_name) if x)
        if text:
            name["text"] = text
        resource: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers, "name": [name]}
        telecom = [{"system": "email", "value": p.email}] if p.email else []
        if p.phone:
            telecom.append({"system": "phone", "value": p.phone})
        if telecom:
            resource["telecom"] = telecom
        if p.gender:
            resource["gender"] = p.gender
        if p.birth_date:
            resource["birthDate"] = p.birth_date.isoformat()
        return resource

    def appointment(self, op: EMRAppointmentUpsert) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Appointment",
            "identifier": [self.identifier(op.oncall_url)],
            "status": op.status,
            "participant": [{"actor": {"reference": full_url(p.oncall_url), "display": _display(p)},
                             "status": "declined" if p.participation_cancelled else "accepted"}
                            for p in op.participants],
        }
        if op.start is not None and op.end is not None:
            resource["start"] = op.start.isoformat()
            resource["end"] = op.end.isoformat()
        if op.minutes_duration:
            resource["minutesDuration"] = op.minutes_duration
        if op.description:
            resource["description"] = op.description
        if op.appointment_type:
            resource["appointmentType"] = {"text": op.appointment_type}
        return resource

    # -- bundles --------------------------------------------------------------------------------
    def for_patients(self, patients: Iterable[EMRPatient]) -> dict[str, Any]:
        return self._bundle([self._entry(p.oncall_url, self.patient(p)) for p in patients])

    def for_appointment(self, op: EMRAppointmentUpsert) -> dict[str, Any]:
        entries = [self._entry(p.oncall_url, self.patient(p)) for p in op.participants]
        entries.append(self._entry(op.oncall_url, self.appointment(op)))
        return self._bundle(entries)

    def _entry(self, oncall_url: str, resource: dict[str, Any]) -> dict[str, Any]:
        rtype = resource["resourceType"]
        _validate(resource)
        return {"fullUrl": full_url(oncall_url), "resource": resource,
                "request": {"method": "PUT", "url": self.conditional(rtype, oncall_url)}}

    @staticmethod
    def _bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _display(p: EMRPatient) -> str:
    return p.name or " ".join(x for x in (p.first_name, p.last_name) if x)


def _validate(resource: dict[str, Any]) -> None:
    """R4B structure check; fails as a MappingError naming the FHIR element (the mapping is at fault)."""
    rtype = resource["resourceType"]
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join([rtype, *(str(p) for p in err["loc"])])
        raise MappingError(f"the reverse mapping built an invalid {rtype}: {err['msg']}", target=where,
                           hint="fix the reverse mapping file (mappings/oncall/)") from None


def response_locations(request: dict[str, Any], response: dict[str, Any]) -> dict[str, str]:
    """fullUrl -> ``Type/id`` from a transaction-response Bundle (entries answer in request order).

    ``entry.response.location`` may be absolute and carry ``/_history/N``: both are cut off.
    """
    out: dict[str, str] = {}
    sent = request.get("entry") or []
    for i, entry in enumerate(response.get("entry") or []):
        if i >= len(sent):
            break
        resp = entry.get("response") or {}
        location = resp.get("location") or ""
        if not location and isinstance(entry.get("resource"), dict):
            res = entry["resource"]
            location = f"{res.get('resourceType')}/{res.get('id')}" if res.get("id") else ""
        ref = _reference(location)
        if ref:
            out[str(sent[i].get("fullUrl"))] = ref
    return out


def _reference(location: str) -> str | None:
    parts = [p for p in location.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) < 2:
        return None
    return f"{parts[-2]}/{parts[-1]}"
