"""FHIR resources as Envelopes: kind, dedup key, ordering key, payload.

- kind: the resource type (``Patient``, ``Appointment``).
- dedup key: ``fhir:{type}/{id}/_history/{meta.versionId}``, or without a version
  ``fhir:{type}/{id}/sha256:{hash of the canonical JSON}``; a rejected resource is keyed by the
  hash of what arrived (``fhir:rejected:{sha256}``) so it never blocks a corrected delivery.
- ordering key: a Patient with an identifier of the configured MRN system orders under
  ``patient:<MRN>``, the key HL7 v2 uses, so both feeds of one patient are applied in one order;
  without one, ``patient:<fhir id>``. The key chosen for each FHIR patient id is remembered in the
  store (kv ``fhir:patient-key:<id>``) so that an Appointment, whose participant references carry
  only the FHIR id, orders under its first Patient participant's same key; failing that,
  ``appointment:<id>``.
- payload: the resource serialized canonically (sorted keys, no whitespace), however it arrived
  (alone, in a Bundle, read from the EMR server), so that one version delivered by two routes is
  recognised as a duplicate; a rejected delivery keeps the bytes as received, for diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapter.envelope import NewEnvelope, Source, State, content_hash
from adapter.fhir.notifications import split_reference
from adapter.fhir.validate import Resource, content_key
from adapter.store.base import Store

__all__ = ["OrderingKeys", "dedup_key", "new_envelope", "rejected_envelope"]


def dedup_key(resource: Resource) -> str:
    base = f"fhir:{resource.resource_type}/{resource.id}"
    if resource.version_id:
        return f"{base}/_history/{resource.version_id}"
    return f"{base}/sha256:{content_key(resource.data)}"


class OrderingKeys:
    """Ordering keys for FHIR resources, sharing HL7 v2's ``patient:<MRN>`` when an MRN is known."""

    def __init__(self, store: Store, *, mrn_system: str | None = None) -> None:
        self.store = store
        self.mrn_system = mrn_system

    def _mrn(self, identifiers: Any) -> str | None:
        if not self.mrn_system or not isinstance(identifiers, list):
            return None
        for ident in identifiers:
            if isinstance(ident, dict) and ident.get("system") == self.mrn_system and ident.get("value"):
                return str(ident["value"])
        return None

    def patient_key(self, data: Mapping[str, Any], fhir_id: str) -> str:
        mrn = self._mrn(data.get("identifier"))
        return f"patient:{mrn}" if mrn else f"patient:{fhir_id}"

    async def remember(self, fhir_id: str, key: str) -> None:
        """Record a Patient's key for later Appointments (only when it is not the default)."""
        if key != f"patient:{fhir_id}" and await self.store.kv_get(f"fhir:patient-key:{fhir_id}") != key:
            await self.store.kv_put(f"fhir:patient-key:{fhir_id}", key)

    async def key_for(self, resource: Resource, *,
                      bundled: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> str:
        """The ordering key; `bundled` are the other resources of the same Bundle, by (type, id)."""
        data, rid, bundled = resource.data, resource.id or "", bundled or {}
        if resource.resource_type == "Patient":
            return self.patient_key(data, rid)
        if resource.resource_type == "Appointment":
            for part in data.get("participant") or []:
                actor = part.get("actor") if isinstance(part, dict) else None
                if not isinstance(actor, dict):
                    continue
                ref = split_reference(str(actor.get("reference") or ""))
                if ref and ref[0] == "Patient":
                    if ref in bundled:
                        return self.patient_key(bundled[ref], ref[1])
                    known = await self.store.kv_get(f"fhir:patient-key:{ref[1]}")
                    return known or f"patient:{ref[1]}"
                if actor.get("type") == "Patient" and (mrn := self._mrn([actor.get("identifier")])):
                    return f"patient:{mrn}"
            return f"appointment:{rid}"
        return f"{resource.resource_type.lower()}:{rid}"


def new_envelope(resource: Resource, payload: bytes, *, ordering_key: str, delivery: str,
                 extra: Mapping[str, str] | None = None) -> NewEnvelope:
    meta = {"fhir_version": resource.version, "resource_id": resource.id or "", "delivery": delivery}
    if resource.version_id:
        meta["version_id"] = resource.version_id
    meta.update(extra or {})
    return NewEnvelope(source=Source.FHIR, kind=resource.resource_type, ordering_key=ordering_key,
                       dedup_key=dedup_key(resource), payload=payload, meta=meta)


def rejected_envelope(payload: bytes, reason: str, *, kind: str, ordering_key: str | None = None,
                      delivery: str, extra: Mapping[str, str] | None = None) -> NewEnvelope:
    meta = {"delivery": delivery, **(extra or {})}
    return NewEnvelope(source=Source.FHIR, kind=kind or "unknown",
                       ordering_key=ordering_key or "fhir:rejected",
                       dedup_key=f"fhir:rejected:{content_hash(payload)}", payload=payload, meta=meta,
                       state=State.REJECTED, reason=reason)
