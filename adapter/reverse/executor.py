"""The reverse executor: one claimed envelope from OnCall -> (maybe) one delivery to the EMR.

For a webhook (source ONCALL_WEBHOOK) it fetches the CURRENT appointment from the configured base
(the body's URL is trusted for its id only), for a scraped contact (CONTACTS_SCRAPE) it uses the
contact as scraped. Then:

1. loop check (loop.py): an object whose values are still those the forward path wrote is the
   echo of the adapter's own write: nothing is sent;
2. map it with the reverse mapping files (same engine as the forward path) into an
   `emr_appointment_upsert` / `emr_patient_upsert` operation;
3. build the FHIR transaction Bundle and hash it; when the hash equals the one recorded for the
   last delivery of this object (crosswalk namespace `emr_out`), nothing is sent: duplicate
   webhooks, bursts of updates and re-runs are harmless;
4. deliver to the target and record, per OnCall URL, the EMR reference that came back (FHIR
   ``entry.response.location``) with the hash of what was sent.

A crash between 4 and its record re-sends the same Bundle on the next attempt: every entry is a
conditional update and MLLP resends carry the same control id, so that is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from adapter.envelope import Envelope, Source, utcnow
from adapter.errors import MappingError, PermanentError
from adapter.oncall.models import Contact
from adapter.reverse.bundle import BundleBuilder, bundle_hash
from adapter.reverse.loop import is_echo_appointment, is_echo_contact
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatientUpsert
from adapter.reverse.targets import Delivery, EMRTarget
from adapter.store.base import Store
from listeners.scrape import CONTACT_KIND
from listeners.webhooks import parse_webhook

__all__ = ["CONTACT_KIND", "EMR_OUT", "REVERSE_SOURCES", "ReverseExecutor", "ReverseOutcome"]

log = structlog.get_logger(__name__)

EMR_OUT = "emr_out"              # crosswalk: OnCall URL -> EMR reference, detail {"hash", "target", "at"}
REVERSE_SOURCES = frozenset({Source.ONCALL_WEBHOOK, Source.CONTACTS_SCRAPE})


@dataclass(frozen=True, slots=True)
class ReverseOutcome:
    action: str                  # delivered, unchanged, echo_skipped, ignored, not_delivered
    mapping_version: str | None = None
    route: str | None = None
    object_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def audit(self) -> dict[str, Any]:
        return {"action": self.action, "route": self.route, "object_id": self.object_id, **self.detail}


class ReverseExecutor:
    """`mappings()` returns the current MappingSet (called per envelope, so a reload is picked up)."""

    def __init__(self, store: Store, client: Any, target: EMRTarget, *, mappings: Callable[[], Any],
                 oncall_base_url: str, emr_identifier_system: str | None = None,
                 emr_id_label: str = "EMR id", loop_prevention: bool = True) -> None:
        self.store = store
        self.client = client
        self.target = target
        self.mappings = mappings
        self.bundles = BundleBuilder(oncall_base_url, emr_identifier_system=emr_identifier_system)
        self.emr_id_label = emr_id_label
        self.loop_prevention = loop_prevention

    async def aclose(self) -> None:
        """Close the EMR target (its HTTP pool or held MLLP connection)."""
        await self.target.aclose()

    async def process(self, envelope: Envelope) -> ReverseOutcome:
        """Apply one envelope; raises TransientError/PermanentError/InputError like the forward path."""
        if envelope.payload is None:
            raise PermanentError(f"envelope {envelope.id} has no payload (purged by retention)",
                                 hint="the next webhook or scrape brings the current state again")
        if envelope.source == Source.ONCALL_WEBHOOK:
            outcome = await self._appointment(envelope)
        elif envelope.source == Source.CONTACTS_SCRAPE:
            outcome = await self._contact(envelope)
        else:
            raise PermanentError(f"envelope {envelope.id} from {envelope.source} is not for the reverse path")
        await self.store.audit(envelope.id, "op_applied", outcome.audit())
        log.info("reverse_applied", envelope_id=envelope.id, kind=envelope.kind, outcome=outcome.action,
                 object_id=outcome.object_id, route=outcome.route)
        return outcome

    # -- appointments ---------------------------------------------------------------------------
    async def _appointment(self, envelope: Envelope) -> ReverseOutcome:
        event, url, appointment_id = parse_webhook(envelope.payload or b"")
        if appointment_id is None:
            raise PermanentError(f"envelope {envelope.id}: the webhook URL is not an appointment URL")
        canonical = self.client.resolve_appointment_url(url)
        appointment = await self.client.get_appointment(canonical)
        if self.loop_prevention and await is_echo_appointment(self.store, appointment):
            return ReverseOutcome("echo_skipped", object_id=appointment_id)
        result = self.mappings().map(event, json.dumps(appointment.model_dump(mode="json")),
                                     source=Source.ONCALL_WEBHOOK.value)
        ops = [op for op in result.operations if isinstance(op, EMRAppointmentUpsert)]
        if not ops:
            return ReverseOutcome("ignored", result.mapping_version, result.route, appointment_id,
                                  {"reason_code": "no_reverse_operation"})
        op = ops[0]
        bundle = self.bundles.for_appointment(op)
        return await self._deliver(envelope, f"oncall_appointment:{appointment_id}", op.oncall_url, bundle,
                                   result, appointment_id, appointment=op)

    # -- contacts -------------------------------------------------------------------------------
    async def _contact(self, envelope: Envelope) -> ReverseOutcome:
        try:
            contact = Contact.model_validate_json(envelope.payload or b"")
        except ValueError as exc:
            raise MappingError(f"envelope {envelope.id}: the scraped contact is not a contact "
                               f"({type(exc).__name__})", route=CONTACT_KIND) from None
        if self.loop_prevention and await is_echo_contact(self.store, contact):
            return ReverseOutcome("echo_skipped", object_id=contact.id)
        doc = contact.model_dump(mode="json")
        emr_id = contact.custom_value(self.emr_id_label)
        doc["emr_patient_id"] = emr_id if isinstance(emr_id, str) else None
        result = self.mappings().map(CONTACT_KIND, json.dumps(doc), source=Source.CONTACTS_SCRAPE.value)
        ops = [op for op in result.operations if isinstance(op, EMRPatientUpsert)]
        if not ops:
            return ReverseOutcome("ignored", result.mapping_version, result.route, contact.id,
                                  {"reason_code": "no_reverse_operation"})
        patient = ops[0].patient()
        bundle = self.bundles.for_patients([patient])
        return await self._deliver(envelope, f"oncall_contact:{contact.id}", patient.oncall_url, bundle,
                                   result, contact.id, patients=(patient,))

    # -- both -----------------------------------------------------------------------------------
    async def _deliver(self, envelope: Envelope, key: str, oncall_url: str, bundle: dict[str, Any],
                       result: Any, object_id: int | None, *, appointment: EMRAppointmentUpsert | None = None,
                       patients: tuple[Any, ...] = ()) -> ReverseOutcome:
        digest = bundle_hash(bundle)
        last = await self.store.xref_get(EMR_OUT, oncall_url)
        sent_before = (last.detail.get("hash"), last.detail.get("target")) if last is not None else None
        if sent_before == (digest, self.target.name):
            return ReverseOutcome("unchanged", result.mapping_version, result.route, object_id,
                                  {"content_hash": digest[:16]})
        delivery = Delivery(key=key, bundle=bundle, output_hash=digest, at=envelope.received_at,
                            appointment=appointment, patients=patients, known=last is not None,
                            placer_id=_placer(last.target) if last is not None else None)
        sent = await self.target.deliver(delivery)
        if not sent.delivered:
            return ReverseOutcome("not_delivered", result.mapping_version, result.route, object_id,
                                  {"target": self.target.name})
        at = utcnow().isoformat()
        # Participants first, the object last: its hash is what says "this version was delivered".
        for url, ref in sent.locations.items():
            if url != oncall_url:
                await self.store.xref_put(EMR_OUT, url, ref, {"target": self.target.name, "at": at})
        ref = sent.locations.get(oncall_url) or (last.target if last is not None else "")
        await self.store.xref_put(EMR_OUT, oncall_url, ref, {"hash": digest, "target": self.target.name,
                                                              "at": at, "receipt": sent.receipt[:200]})
        return ReverseOutcome("delivered", result.mapping_version, result.route, object_id,
                              {"content_hash": digest[:16], "count": len(sent.locations)})


def _placer(reference: str) -> str | None:
    """The EMR's id from a reference ``Appointment/123``."""
    return reference.rsplit("/", 1)[-1] if "/" in reference else None
