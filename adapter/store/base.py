"""What the store does (the contract); `sqlite.py` and `postgres.py` say how.

Rules every implementation keeps, enforced by its schema where a schema can:
- `append` commits before it returns: a listener acknowledges only after it. The dedup key is a
  unique constraint: the same key with the same content returns the first envelope (DUPLICATE),
  the same key with other content is stored QUARANTINED (CONFLICT) and never applied.
- `claim` hands out QUEUED envelopes whose `not_before` has passed, in arrival order per ordering
  key, and never one whose ordering key has an earlier envelope that is QUEUED, CLAIMED or DEAD
  (a dead letter blocks its key until requeued or dropped). At most one CLAIMED envelope per
  ordering key (a partial unique index). A claim carries a lease; an expired lease is claimable
  again (the process that held it died).
- `complete`, `retry_at`, `dead_letter` and `release` only act for the lease owner and return
  False when the lease was lost (another worker took over); the caller then drops its result.
- Every state change writes an audit row; the audit is append-only.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from adapter.envelope import Appended, Envelope, NewEnvelope, State

__all__ = ["AuditEntry", "QueueStats", "Store", "Xref"]


@dataclass(frozen=True, slots=True)
class Xref:
    """One crosswalk entry: (namespace, source id) -> target (usually an OnCall URL)."""

    namespace: str      # "patient" (EMR patient id -> contact URL), "appointment", "participant", ...
    source_id: str      # e.g. "MRN123", or "APPT9|MRN123" for a participant
    target: str         # e.g. "https://api.oncallhealth.ca/contacts/42/"
    written_at: datetime
    detail: dict[str, Any] = field(default_factory=dict)   # e.g. the last values written (no PHI in logs)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    envelope_id: int
    at: datetime
    event: str          # "stored", "claimed", "op_applied", "retry_scheduled", "dead_lettered", ...
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueStats:
    by_state: dict[str, int]                         # state -> count
    by_source_kind_state: dict[tuple[str, str, str], int]
    oldest_waiting: datetime | None                  # received_at of the oldest QUEUED envelope
    retrying: int                                    # QUEUED with attempts > 0
    blocked_keys: int                                # ordering keys waiting behind a dead letter
    size_bytes: int                                  # store size on disk (or in the database)


@runtime_checkable
class Store(Protocol):
    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""

    # -- inbox ------------------------------------------------------------------------------
    async def append(self, new: NewEnvelope) -> Appended:
        """Commit the envelope durably (see the module rules on duplicates and conflicts)."""

    async def append_many(self, news: Sequence[NewEnvelope]) -> list[Appended]:
        """Several envelopes in one transaction (group commit)."""

    async def get(self, envelope_id: int) -> Envelope | None: ...

    async def list(self, *, states: Iterable[State] | None = None, source: str | None = None,
                   limit: int = 100, newest_first: bool = True) -> builtins.list[Envelope]: ...

    # -- work -------------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int, lease: timedelta,
                    now: datetime | None = None) -> builtins.list[Envelope]:
        """Claim up to `limit` envelopes, at most one per ordering key, oldest first."""

    async def extend_lease(self, envelope_id: int, owner: str, lease: timedelta) -> bool: ...

    async def complete(self, envelope_id: int, owner: str, *, mapping_version: str | None = None,
                       detail: dict[str, Any] | None = None) -> bool: ...

    async def retry_at(self, envelope_id: int, owner: str, at: datetime, reason: str) -> bool:
        """Back to QUEUED, not before `at`, attempts + 1."""

    async def dead_letter(self, envelope_id: int, owner: str, reason: str) -> bool: ...

    async def release(self, envelope_id: int, owner: str) -> bool:
        """Give a claim back untouched (shutdown): QUEUED again, attempts unchanged."""

    async def requeue(self, envelope_id: int, *, reason: str = "requeued by operator") -> bool:
        """A DEAD (or QUARANTINED) envelope back to QUEUED with attempts reset."""

    async def drop(self, envelope_id: int, reason: str) -> bool:
        """An operator gives up on an envelope: DROPPED, its key unblocked. Refused (False) for a
        claim whose lease is live: a worker is applying it, and its key must stay blocked until then."""

    # -- crosswalk --------------------------------------------------------------------------
    async def xref_get(self, namespace: str, source_id: str) -> Xref | None: ...

    async def xref_put(self, namespace: str, source_id: str, target: str,
                       detail: dict[str, Any] | None = None) -> Xref: ...

    async def xref_by_target(self, namespace: str, target: str) -> builtins.list[Xref]: ...

    async def xref_list(self, namespace: str, *, prefix: str | None = None) -> builtins.list[Xref]: ...

    async def xref_delete(self, namespace: str, source_id: str) -> bool: ...

    # -- audit ------------------------------------------------------------------------------
    async def audit(self, envelope_id: int, event: str, detail: dict[str, Any] | None = None) -> None: ...

    async def history(self, envelope_id: int) -> builtins.list[AuditEntry]: ...

    # -- small durable state (poll cursors, counters) ---------------------------------------
    async def kv_get(self, key: str) -> str | None: ...

    async def kv_put(self, key: str, value: str) -> None: ...

    # -- operations -------------------------------------------------------------------------
    async def stats(self, now: datetime | None = None) -> QueueStats: ...

    async def prune(self, *, older_than: datetime) -> int:
        """Purge payloads of DONE/DROPPED/REJECTED envelopes last changed before `older_than`;
        audit and crosswalk are kept. Returns how many payloads were purged."""
