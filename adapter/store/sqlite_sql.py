"""Named SQL for the SQLite store and the row <-> value conversions; `sqlite.py` runs them.

Timestamps are UTC text of fixed width ('2026-01-31T09:00:00.000000Z'), so comparing text is
comparing time and an operator can read them with the sqlite3 shell. Every time comes from a
parameter, never from SQLite's clock: one clock per decision, and `now=` moves it in tests.

`INDEXED BY` pins the claim queries to their partial indexes: without statistics SQLite would
rather walk every queued row by state and sort them (100k rows: tens of ms per claim).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from adapter.envelope import Envelope, Source, State

__all__ = [
    "ACTIVE",
    "APPEND",
    "AUDIT",
    "CLAIM_EXPIRED",
    "CLAIM_READY",
    "COLUMNS",
    "GET",
    "GET_BY_DEDUP_KEY",
    "HEAD_CLEAR",
    "HEAD_OF_KEY",
    "HEAD_SET",
    "PRUNE_AUDIT",
    "PRUNE_PAYLOADS",
    "RENAME_DEDUP_KEY",
    "SET_CLAIMED",
    "XREF_COLUMNS",
    "from_json",
    "from_ts",
    "prefix_upper_bound",
    "row_to_envelope",
    "to_json",
    "to_ts",
]

ACTIVE = "('queued', 'claimed', 'dead')"   # states that block later envelopes of their key

COLUMNS = ("id, source, kind, ordering_key, dedup_key, payload, content_hash, received_at, state, "
           "attempts, not_before, lease_owner, lease_until, reason, meta, mapping_version, updated_at")
XREF_COLUMNS = "namespace, source_id, target, written_at, detail"

GET = f"SELECT {COLUMNS} FROM envelopes WHERE id = ?"
GET_BY_DEDUP_KEY = f"SELECT {COLUMNS} FROM envelopes WHERE dedup_key = ?"

# The whole append in one statement (the MLLP ACK path): the row, its head mark (a new envelope has
# its key's highest id, so it is the head exactly when nothing of its key blocks) and, by the trigger
# `envelopes_audit_stored`, its audit row. A taken dedup key returns no row: the caller then looks
# at the first copy (duplicate, conflict or expired key). Parameters ?1..?11: source, kind,
# ordering_key, dedup_key, payload, content_hash, received_at, state, reason, meta, now.
APPEND = f"""
INSERT INTO envelopes (source, kind, ordering_key, dedup_key, payload, content_hash, received_at, state,
                       reason, meta, created_at, updated_at, head)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11,
        CASE WHEN ?8 = 'queued' AND NOT EXISTS (
            SELECT 1 FROM envelopes WHERE ordering_key = ?3 AND state IN {ACTIVE}) THEN 1 END)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id
"""

# Moves an expired first copy's dedup key aside, so the unique constraint admits the new one.
RENAME_DEDUP_KEY = "UPDATE envelopes SET dedup_key = :new_key, updated_at = :now WHERE id = :id"

AUDIT = "INSERT INTO audit (envelope_id, at, event, detail) VALUES (?, ?, ?, ?)"

# The head of a key: its earliest envelope still queued, claimed or dead (NULL: none).
HEAD_OF_KEY = f"SELECT min(id) FROM envelopes WHERE ordering_key = ? AND state IN {ACTIVE}"
HEAD_CLEAR = "UPDATE envelopes SET head = NULL WHERE ordering_key = ? AND head = 1 AND id IS NOT ?"
HEAD_SET = "UPDATE envelopes SET head = 1 WHERE id = ? AND head IS NULL"
# Heads waiting, oldest first, whose retry time has come and whose key has nothing claimed.
CLAIM_READY = """
SELECT id FROM envelopes AS e INDEXED BY envelopes_ready
WHERE e.head = 1 AND e.state = 'queued' AND (e.not_before IS NULL OR e.not_before <= :now)
  AND NOT EXISTS (SELECT 1 FROM envelopes AS c
                  WHERE c.ordering_key = e.ordering_key AND c.state = 'claimed')
ORDER BY e.id LIMIT :limit
"""
# Claims whose holder let the lease run out (it died, or hangs).
CLAIM_EXPIRED = """
SELECT id, lease_owner, lease_until FROM envelopes INDEXED BY envelopes_leases
WHERE state = 'claimed' AND lease_until < :now ORDER BY id LIMIT :limit
"""
SET_CLAIMED = """
UPDATE envelopes SET state = 'claimed', lease_owner = :owner, lease_until = :until, updated_at = :now
WHERE id = :id
"""

_PURGEABLE = """
FROM envelopes INDEXED BY envelopes_purgeable
WHERE payload IS NOT NULL AND state IN ('done', 'dropped', 'rejected') AND updated_at < :before
"""
PRUNE_AUDIT = f"INSERT INTO audit (envelope_id, at, event, detail) SELECT id, :now, 'purged', '{{}}' \
{_PURGEABLE}"
PRUNE_PAYLOADS = f"UPDATE envelopes SET payload = NULL WHERE id IN (SELECT id {_PURGEABLE})"


def to_ts(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()} given to the store: pass an aware UTC datetime")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _opt_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def to_json(value: dict[str, Any] | None) -> str:
    return json.dumps(value or {}, separators=(",", ":"), sort_keys=True, default=str)


def row_to_envelope(row: sqlite3.Row | tuple[Any, ...]) -> Envelope:
    (id_, source, kind, ordering_key, dedup_key, payload, content_hash, received_at, state, attempts,
     not_before, lease_owner, lease_until, reason, meta, mapping_version, updated_at) = row
    return Envelope(
        id=id_, source=Source(source), kind=kind, ordering_key=ordering_key, dedup_key=dedup_key,
        payload=None if payload is None else bytes(payload), content_hash=content_hash,
        received_at=from_ts(received_at), state=State(state), attempts=attempts,
        not_before=_opt_ts(not_before), lease_owner=lease_owner, lease_until=_opt_ts(lease_until),
        reason=reason, meta=json.loads(meta), mapping_version=mapping_version,
        updated_at=_opt_ts(updated_at),
    )


def from_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound).

    SQLite compares text as UTF-8 bytes, whose order is code point order, so bumping the last
    code point that can be bumped gives an exclusive upper bound for a key-range scan.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:   # surrogates cannot be stored; skip to the next scalar value
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None
