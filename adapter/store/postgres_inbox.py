"""Appending to the PostgreSQL inbox: group commit, dedup, conflicts and the dedup window.

A batch is one transaction. Every envelope is first inserted with `ON CONFLICT (dedup_key) DO
NOTHING` (all of them in one pipelined `executemany`); the few that come back empty meet an
existing dedup key and are resolved one by one:
- same content: DUPLICATE, the first envelope is returned and nothing is written;
- other content: CONFLICT, stored QUARANTINED under the derived key `<key>#conflict#<hash16>`
  (the same defect resent is that quarantined envelope again, still a CONFLICT);
- with a dedup window, a first envelope received longer ago than the window no longer counts
  (senders reuse control ids): it keeps a derived key `<key>#expired#<id>` and the new one is STORED.
A concurrent append of the same key waits on the unique index and then sees the committed row, so
of two nodes appending one key, exactly one gets STORED.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from adapter.envelope import Appended, AppendOutcome, Envelope, NewEnvelope, State
from adapter.errors import StoreError
from adapter.store import postgres_sql as q
from adapter.store.postgres_support import envelope_from_row

__all__ = ["append_batch", "conflict_key", "expired_key"]

_ACCEPTED_STATES = frozenset({State.QUEUED, State.REJECTED, State.QUARANTINED})


def conflict_key(dedup_key: str, content_hash: str) -> str:
    return f"{dedup_key}#conflict#{content_hash[:16]}"


def expired_key(dedup_key: str, envelope_id: int) -> str:
    return f"{dedup_key}#expired#{envelope_id}"


def _params(new: NewEnvelope, now: datetime, *, content_hash: str, dedup_key: str | None = None,
            state: State | None = None, reason: str | None = None) -> dict[str, Any]:
    state = state or new.state
    if state not in _ACCEPTED_STATES:
        raise StoreError(f"cannot append envelope {new.dedup_key!r} in state {state}",
                         hint="a new envelope is QUEUED, REJECTED or QUARANTINED")
    return {
        "source": str(new.source), "kind": new.kind, "ordering_key": new.ordering_key,
        "dedup_key": dedup_key or new.dedup_key, "payload": new.payload, "content_hash": content_hash,
        "received_at": new.received_at, "state": str(state), "reason": reason or new.reason,
        "meta": Jsonb(new.meta), "now": now, "event": "stored",
        "detail": Jsonb({"source": str(new.source), "kind": new.kind, "state": str(state),
                         "content_hash": content_hash}),
    }


async def _insert(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> Envelope | None:
    cur = await conn.execute(q.APPEND, params)
    row = await cur.fetchone()
    return envelope_from_row(row) if row else None


async def _by_key(conn: psycopg.AsyncConnection[Any], dedup_key: str) -> Envelope | None:
    cur = await conn.execute(q.GET_BY_DEDUP_KEY, {"dedup_key": dedup_key})
    row = await cur.fetchone()
    return envelope_from_row(row) if row else None


async def _resolve(conn: psycopg.AsyncConnection[Any], new: NewEnvelope, params: dict[str, Any],
                   now: datetime, window: timedelta | None) -> Appended:
    """The dedup key exists: duplicate, conflict, or an expired first delivery."""
    for _ in range(3):   # a concurrent window expiry may rename the first between two statements
        first = await _by_key(conn, new.dedup_key)
        if first is None:
            stored = await _insert(conn, params)
            if stored is not None:
                return Appended(stored, AppendOutcome.STORED)
            continue
        if window is not None and new.received_at - first.received_at > window:
            await conn.execute(q.RENAME_DEDUP_KEY,
                               {"id": first.id, "new_key": expired_key(new.dedup_key, first.id)})
            await conn.execute(q.INSERT_AUDIT, {"id": first.id, "now": now, "event": "dedup_expired",
                                                "detail": Jsonb({"window_seconds": window.total_seconds()})})
            continue
        if first.content_hash == params["content_hash"]:
            return Appended(first, AppendOutcome.DUPLICATE)
        key = conflict_key(new.dedup_key, params["content_hash"])
        quarantined = _params(new, now, content_hash=params["content_hash"], dedup_key=key,
                              state=State.QUARANTINED,
                              reason=f"dedup key reused with other content (first: envelope {first.id}); "
                                     "a sender defect: review, then requeue or drop")
        stored = await _insert(conn, quarantined) or await _by_key(conn, key)
        if stored is not None:
            return Appended(stored, AppendOutcome.CONFLICT)
    raise StoreError(f"appending {new.dedup_key!r}: its dedup key kept changing under concurrent appends",
                     hint="retry the append")


async def append_batch(conn: psycopg.AsyncConnection[Any], news: Sequence[NewEnvelope], *,
                       now: datetime, dedup_window: timedelta | None) -> list[Appended]:
    """Append `news` in one transaction on `conn` (psycopg errors are translated by the caller)."""
    params = [_params(new, now, content_hash=new.content_hash) for new in news]
    async with conn.transaction():
        cur = conn.cursor()
        await cur.executemany(q.APPEND, params, returning=True)
        rows: list[tuple[Any, ...] | None] = []
        while True:
            rows.append(await cur.fetchone())
            if not cur.nextset():
                break
        results = []
        for new, p, row in zip(news, params, rows, strict=True):
            if row is not None:
                results.append(Appended(envelope_from_row(row), AppendOutcome.STORED))
            else:
                results.append(await _resolve(conn, new, p, now, dedup_window))
    return results
