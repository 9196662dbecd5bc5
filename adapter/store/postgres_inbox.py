"""Appending to the PostgreSQL inbox: group commit, dedup, conflicts and the dedup window.

A batch is one transaction. Every envelope is first inserted with `ON CONFLICT (dedup_key) DO
NOTHING` (all of them in one pipelined `executemany`); the few that come back empty meet an
existing dedup key and are resolved one by one:
- same content: DUPLICATE, the first envelope is returned (its audit notes the resend);
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
        "meta": Jsonb(new.meta), "now": now,
        "event": "stored" if state is State.QUEUED else str(state),
        "detail": Jsonb({"content_hash": content_hash, "reason": reason or new.reason}
                        if (reason or new.reason) else {"content_hash": content_hash}),
    }


async def _insert(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> Envelope | None:
    cur = await conn.execute(q.APPEND, params)
    row = await cur.fetchone()
    return envelope_from_row(row) if row else None


async def _by_key(conn: psycopg.AsyncConnection[Any], dedup_key: str) -> Envelope | None:
    cur = await conn.execute(q.GET_BY_DEDUP_KEY, {"dedup_key": dedup_key})
    row = await cur.fetchone()
    return envelope_from_row(row) if row else None


async def _audit(conn: psycopg.AsyncConnection[Any], envelope_id: int, now: datetime, event: str,
                 detail: dict[str, Any]) -> None:
    await conn.execute(q.INSERT_AUDIT,
                       {"id": envelope_id, "now": now, "event": event, "detail": Jsonb(detail)})


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
            # Outside the window the same key is a new delivery (control ids get reused): move the
            # old row's key aside so the unique constraint admits the new one.
            aside = expired_key(new.dedup_key, first.id)
            await conn.execute(q.RENAME_DEDUP_KEY, {"id": first.id, "new_key": aside, "now": now})
            await _audit(conn, first.id, now, "dedup_key_expired", {"dedup_key": aside})
            continue
        content_hash = params["content_hash"]
        if first.content_hash == content_hash:
            await _audit(conn, first.id, now, "duplicate", {"content_hash": content_hash})
            return Appended(first, AppendOutcome.DUPLICATE)
        key = conflict_key(new.dedup_key, content_hash)
        reason = f"same dedup key {new.dedup_key} as envelope {first.id} with different content"
        quarantined = _params(new, now, content_hash=content_hash, dedup_key=key, state=State.QUARANTINED,
                              reason=reason)
        stored = await _insert(conn, quarantined)
        if stored is not None:
            await _audit(conn, first.id, now, "conflict",
                         {"envelope_id": stored.id, "content_hash": content_hash})
            return Appended(stored, AppendOutcome.CONFLICT)
        earlier = await _by_key(conn, key)
        if earlier is not None:   # this very conflicting content was sent before: same answer again
            await _audit(conn, earlier.id, now, "duplicate", {"content_hash": content_hash})
            return Appended(earlier, AppendOutcome.CONFLICT)
    raise StoreError(f"appending {new.dedup_key!r}: its dedup key kept changing under concurrent appends",
                     hint="retry the append")


async def append_batch(conn: psycopg.AsyncConnection[Any], news: Sequence[NewEnvelope], *,
                       now: datetime, dedup_window: timedelta | None) -> list[Appended]:
    """Append `news` in one transaction on `conn` (psycopg errors are translated by the caller)."""
    params = [_params(new, now, content_hash=new.content_hash) for new in news]
    # One pipeline: BEGIN, the key locks and every insert travel together; results are read once.
    async with conn.pipeline(), conn.transaction():
        queued_keys = sorted({new.ordering_key for new in news if new.state is State.QUEUED})
        if queued_keys:   # a new queued envelope may become its key's head: see postgres_sql.LOCK_KEYS
            await conn.execute(q.LOCK_KEYS, {"keys": queued_keys})
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
