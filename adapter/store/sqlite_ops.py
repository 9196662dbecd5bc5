"""The SQLite store's write operations, each a function of (connection, arguments).

They run on the writer thread inside the batch's transaction (see `sqlite_conn.Writer`), so a
read-then-write here is atomic: the writer holds SQLite's write lock for the whole batch.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any

from adapter.envelope import BLOCKING_STATES, Appended, AppendOutcome, Envelope, NewEnvelope, State
from adapter.store import sqlite_sql as q

__all__ = ["append", "audit", "claim", "fix_head", "transition"]

_LEASE_CLEARED = {"lease_owner": None, "lease_until": None}
_BLOCKING = frozenset(s.value for s in BLOCKING_STATES)


def audit(conn: sqlite3.Connection, envelope_id: int, now: datetime, event: str,
          detail: dict[str, Any] | None = None) -> None:
    conn.execute(q.AUDIT, (envelope_id, q.to_ts(now), event, q.to_json(detail)))


def fix_head(conn: sqlite3.Connection, ordering_key: str) -> None:
    """Mark the key's earliest blocking envelope as its head (and no other)."""
    head = conn.execute(q.HEAD_OF_KEY, (ordering_key,)).fetchone()[0]
    conn.execute(q.HEAD_CLEAR, (ordering_key, head))
    if head is not None:
        conn.execute(q.HEAD_SET, (head,))


def _get(conn: sqlite3.Connection, sql: str, arg: object) -> Envelope | None:
    row = conn.execute(sql, (arg,)).fetchone()
    return None if row is None else q.row_to_envelope(row)


def _insert(conn: sqlite3.Connection, new: NewEnvelope, now: str, *, dedup_key: str, state: State,
            reason: str | None, content_hash: str) -> Envelope | None:
    """One INSERT ... RETURNING: row, head mark and audit row (trigger). None: the dedup key is taken."""
    row = conn.execute(q.APPEND, (new.source.value, new.kind, new.ordering_key, dedup_key, new.payload,
                                  content_hash, q.to_ts(new.received_at), state.value, reason,
                                  q.to_json(new.meta), now)).fetchone()
    if row is None:
        return None
    return Envelope(id=row[0], source=new.source, kind=new.kind, ordering_key=new.ordering_key,
                    dedup_key=dedup_key, payload=new.payload, content_hash=content_hash,
                    received_at=q.from_ts(q.to_ts(new.received_at)), state=state, reason=reason,
                    meta=dict(new.meta), updated_at=q.from_ts(now))


def append(conn: sqlite3.Connection, new: NewEnvelope, now: datetime,
           dedup_window: timedelta | None) -> Appended:
    """Store `new` (one statement when its dedup key is new: the common case and the ACK path)."""
    if new.state not in (State.QUEUED, State.REJECTED, State.QUARANTINED):
        raise ValueError(f"a new envelope is queued, rejected or quarantined, not {new.state.value}")
    content_hash = new.content_hash
    ts = q.to_ts(now)
    env = _insert(conn, new, ts, dedup_key=new.dedup_key, state=new.state, reason=new.reason,
                  content_hash=content_hash)
    if env is not None:
        return Appended(env, AppendOutcome.STORED)
    first = _get(conn, q.GET_BY_DEDUP_KEY, new.dedup_key)
    assert first is not None   # the insert above met its dedup key, inside this same transaction
    if dedup_window is not None and new.received_at - first.received_at > dedup_window:
        # Outside the window the same key is a new delivery (control ids get reused); move the old
        # row's key aside so the unique constraint still holds.
        aside = f"{new.dedup_key}#expired#{first.id}"
        conn.execute(q.RENAME_DEDUP_KEY, {"new_key": aside, "now": ts, "id": first.id})
        audit(conn, first.id, now, "dedup_key_expired", {"dedup_key": aside})
        env = _insert(conn, new, ts, dedup_key=new.dedup_key, state=new.state, reason=new.reason,
                      content_hash=content_hash)
        assert env is not None   # the key was just moved aside
        return Appended(env, AppendOutcome.STORED)
    if first.content_hash == content_hash:
        audit(conn, first.id, now, "duplicate", {"content_hash": content_hash})
        return Appended(first, AppendOutcome.DUPLICATE)
    conflict_key = f"{new.dedup_key}#conflict#{content_hash[:16]}"
    reason = f"same dedup key {new.dedup_key} as envelope {first.id} with different content"
    env = _insert(conn, new, ts, dedup_key=conflict_key, state=State.QUARANTINED, reason=reason,
                  content_hash=content_hash)
    if env is None:   # this very conflicting content was sent before: same answer again
        earlier = _get(conn, q.GET_BY_DEDUP_KEY, conflict_key)
        assert earlier is not None
        audit(conn, earlier.id, now, "duplicate", {"content_hash": content_hash})
        return Appended(earlier, AppendOutcome.CONFLICT)
    audit(conn, first.id, now, "conflict", {"envelope_id": env.id, "content_hash": content_hash})
    return Appended(env, AppendOutcome.CONFLICT)


def claim(conn: sqlite3.Connection, owner: str, limit: int, lease: timedelta,
          now: datetime) -> list[Envelope]:
    if limit <= 0:
        return []
    args = {"now": q.to_ts(now), "limit": limit}
    expired = conn.execute(q.CLAIM_EXPIRED, args).fetchall()
    ready = [(row[0], None, None) for row in conn.execute(q.CLAIM_READY, args)]
    picks = sorted(expired + ready)[:limit]   # oldest first across both kinds
    until = q.to_ts(now + lease)
    for envelope_id, previous_owner, previous_until in picks:
        if previous_owner is not None:   # reclaim: attempts unchanged, the crash is on record
            audit(conn, envelope_id, now, "lease_expired",
                  {"previous_owner": previous_owner, "lease_until": previous_until})
        conn.execute(q.SET_CLAIMED, {"owner": owner, "until": until, "now": args["now"], "id": envelope_id})
        audit(conn, envelope_id, now, "claimed", {"owner": owner, "lease_until": until})
    if not picks:
        return []
    marks = ",".join("?" * len(picks))
    rows = conn.execute(f"SELECT {q.COLUMNS} FROM envelopes WHERE id IN ({marks}) ORDER BY id",
                        [p[0] for p in picks])
    return [q.row_to_envelope(row) for row in rows]


def transition(conn: sqlite3.Connection, envelope_id: int, now: datetime, *, from_states: tuple[State, ...],
               owner: str | None, sets: dict[str, Any], event: str, detail: dict[str, Any]) -> bool:
    """Move one envelope to another state if it is in `from_states` (and held by `owner`, if given).

    `sets` names columns of `envelopes` (fixed by the callers in sqlite.py, never user input).
    """
    row = conn.execute("SELECT ordering_key, state, lease_owner FROM envelopes WHERE id = ?",
                       (envelope_id,)).fetchone()
    if row is None or State(row[1]) not in from_states or (owner is not None and row[2] != owner):
        return False
    values = {**sets, "updated_at": q.to_ts(now)}
    if "state" in values and values["state"] != State.CLAIMED.value:
        values.update(_LEASE_CLEARED)
    if "state" in values and values["state"] not in _BLOCKING:
        values["head"] = None   # a finished envelope stops being its key's head; fix_head picks the next
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    conn.execute(f"UPDATE envelopes SET {assignments} WHERE id = :id", {**values, "id": envelope_id})
    audit(conn, envelope_id, now, event, detail)
    if "state" in values:
        fix_head(conn, row[0])
    return True
