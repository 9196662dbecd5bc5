"""Where the reverse path delivers: the EMR target seam, and `build_emr_target` for the composition root.

One delivery is one OnCall object's current state, mapped: a FHIR transaction Bundle (always
built: it is what is hashed and compared) plus the operation it came from (the MLLP target builds
HL7 v2 from it). Targets (config ``[emr] target``):

    none     nothing is sent (the reverse path is off; envelopes complete as "not delivered")
    fhir     POST the Bundle to the EMR's FHIR base              fhir.py
    outbox   one JSON file per Bundle in a folder, atomically     outbox.py
    mllp     SIU^S12/S14/S15 or ADT^A04/A08 over one held MLLP connection   mllp_out.py

Every target raises TransientError (retry) or PermanentError (dead letter) from adapter/errors.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from adapter.errors import ConfigError
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatient

__all__ = ["Delivery", "DeliveryResult", "EMRTarget", "NoTarget", "build_emr_target"]


@dataclass(frozen=True, slots=True)
class Delivery:
    key: str                                    # "oncall_appointment:42", "oncall_contact:7"
    bundle: dict[str, Any]                      # the FHIR transaction Bundle
    output_hash: str                            # hash of the Bundle's canonical JSON
    at: dt.datetime                             # when the change was received (names outbox files)
    appointment: EMRAppointmentUpsert | None = None
    patients: tuple[EMRPatient, ...] = ()
    known: bool = False                         # the EMR had an earlier version (S14/A08, not S12/A04)
    placer_id: str | None = None                # the EMR's appointment id, when known

    def oncall_urls(self) -> dict[str, str]:
        """fullUrl -> OnCall URL for every resource in the Bundle."""
        from adapter.reverse.bundle import full_url
        urls = [p.oncall_url for p in self.patients]
        if self.appointment is not None:
            urls += [p.oncall_url for p in self.appointment.participants] + [self.appointment.oncall_url]
        return {full_url(u): u for u in urls}


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    target: str
    locations: dict[str, str] = field(default_factory=dict)   # OnCall URL -> EMR reference ("Patient/12")
    receipt: str = ""                                         # file name, HL7 control ids, ...
    delivered: bool = True


@runtime_checkable
class EMRTarget(Protocol):
    name: str

    async def deliver(self, delivery: Delivery) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


class NoTarget:
    """`[emr] target = "none"`: the reverse path maps and records, but sends nothing."""

    name = "none"

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        return DeliveryResult("none", delivered=False)

    async def aclose(self) -> None:
        return None


def build_emr_target(*, target: str, oncall_base_url: str, fhir_base_url: str | None = None,
                     outbox_dir: Path | str | None = None, mllp_host: str = "127.0.0.1",
                     mllp_port: int = 2576,
                     bearer_token: str | None = None, basic: tuple[str, str] | None = None,
                     emr_identifier_system: str | None = None, emr_id_authority: str | None = None,
                     timeout: float = 15.0) -> EMRTarget:
    """The target named by ``[emr] target``; the caller must `await target.aclose()` at shutdown."""
    from adapter.reverse.bundle import BundleBuilder
    if target == "none":
        return NoTarget()
    if target == "fhir":
        if not fhir_base_url:
            raise ConfigError("emr.fhir_base_url", fhir_base_url,
                              'the EMR FHIR base URL, required when emr.target = "fhir"')
        from adapter.fhir.emr_client import EMRFHIRClient
        from adapter.reverse.fhir import FHIRTarget
        client = EMRFHIRClient(fhir_base_url, bearer_token=bearer_token, basic=basic, timeout=timeout)
        return FHIRTarget(client)
    if target == "outbox":
        from adapter.reverse.outbox import OutboxTarget
        return OutboxTarget(Path(outbox_dir or "var/outbox"))
    if target == "mllp":
        from adapter.reverse.hl7_out import HL7Builder
        from adapter.reverse.mllp_out import MLLPSender, MLLPTarget
        builder = HL7Builder(BundleBuilder(oncall_base_url, emr_identifier_system=emr_identifier_system),
                             emr_id_authority=emr_id_authority)
        return MLLPTarget(MLLPSender(mllp_host, mllp_port, ack_timeout=timeout), builder)
    raise ConfigError("emr.target", target, 'one of "none", "fhir", "outbox", "mllp"')
