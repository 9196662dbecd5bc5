"""The Envelope: whatever arrived, as the store keeps it.

A listener builds a `NewEnvelope` from what it received; the store gives it an id and a state and
returns an `Envelope`. The payload is the raw bytes as received (never re-encoded), so what is
stored or forwarded is exactly what the sender sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

__all__ = ["AppendOutcome", "Appended", "Envelope", "NewEnvelope", "Source", "State", "content_hash",
           "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def content_hash(payload: bytes) -> str:
    """The hash that identifies a payload in logs, dedup and audit (never the payload itself)."""
    return hashlib.sha256(payload).hexdigest()


class Source(StrEnum):
    MLLP = "mllp"                  # HL7 v2 from the EMR
    FHIR = "fhir"                  # FHIR subscription notification from the EMR
    ONCALL_WEBHOOK = "oncall_webhook"
    CONTACTS_SCRAPE = "contacts_scrape"
    RECONCILE = "reconcile"        # corrections queued by `reconcile --fix`


class State(StrEnum):
    QUEUED = "queued"              # waiting to be claimed (possibly not before `not_before`)
    CLAIMED = "claimed"            # a worker holds it until `lease_until`
    DONE = "done"                  # applied
    DEAD = "dead"                  # dead letter: failed permanently, waits for a human
    REJECTED = "rejected"          # refused at the edge (AE/AR, 4xx): kept with its reason, never applied
    QUARANTINED = "quarantined"    # sender defect (same control id, other content): kept for review
    DROPPED = "dropped"            # an operator dropped it, with a reason


# States in which an envelope blocks later envelopes of the same ordering key.
BLOCKING_STATES = frozenset({State.QUEUED, State.CLAIMED, State.DEAD})


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    source: Source
    kind: str                      # e.g. "ADT^A08", "SIU^S12", "Patient", "appointment_updated"
    ordering_key: str              # e.g. "patient:MRN123"; one key's envelopes are applied in order
    dedup_key: str                 # e.g. "mllp:SENDING_FAC|MSG00001"; unique per logical delivery
    payload: bytes
    received_at: datetime = field(default_factory=utcnow)
    meta: dict[str, str] = field(default_factory=dict)   # charset, control id, sender... (no PHI)
    state: State = State.QUEUED    # QUEUED, or REJECTED/QUARANTINED with a reason
    reason: str | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    id: int
    source: Source
    kind: str
    ordering_key: str
    dedup_key: str
    payload: bytes | None          # None once purged by retention
    content_hash: str
    received_at: datetime
    state: State
    attempts: int = 0
    not_before: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    reason: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    mapping_version: str | None = None
    updated_at: datetime | None = None


class AppendOutcome(StrEnum):
    STORED = "stored"              # new, committed
    DUPLICATE = "duplicate"        # same dedup key and same content: the first one is returned
    CONFLICT = "conflict"          # same dedup key, other content: stored as QUARANTINED


@dataclass(frozen=True, slots=True)
class Appended:
    envelope: Envelope
    outcome: AppendOutcome
