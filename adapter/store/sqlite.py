"""The embedded store: one SQLite file in WAL mode, group commit on one writer thread.

How the contract of `store/base.py` is kept here:
- durability: `append` returns after COMMIT with `synchronous=FULL` (survives power loss) or
  `NORMAL` (survives a process crash; a power cut may lose the last commits). Concurrent appends
  share one commit (see `sqlite_conn.Writer`); `commit_count` tells how many there were.
- order: each ordering key's earliest queued/claimed/dead envelope carries `head = 1` (kept on
  every state change, unique per key by index); a claim reads only heads, oldest first, through a
  partial index, so 100k queued envelopes cost a claim what 10 do.
- invariants in the schema: unique dedup key, one claimed envelope per key, one head per key,
  lease set iff claimed, append-only audit (triggers), see `sql/sqlite/schema.sql`.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from adapter.envelope import Appended, AppendOutcome, Envelope, NewEnvelope, State, utcnow
from adapter.errors import StoreError
from adapter.store import sqlite_ops as ops
from adapter.store import sqlite_sql as q
from adapter.store.base import AuditEntry, QueueStats, Xref
from adapter.store.sqlite_conn import Reader, Writer
from adapter.store.sqlite_migrate import migrate

__all__ = ["SQLiteStore"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

_HELD = (State.CLAIMED,)
_MIN_SQLITE = (3, 35, 0)


class SQLiteStore:
    """`Store` on a SQLite file. `open()` creates the directory, the file and the schema."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 dedup_window: timedelta | None = None, busy_timeout: float = 5.0,
                 max_batch: int = 512, cache_mib: int = 64, wal_autocheckpoint: int = 1000,
                 journal_size_limit_mib: int = 64) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.dedup_window = dedup_window
        self.cache_mib = cache_mib
        self.wal_autocheckpoint = wal_autocheckpoint
        self.journal_size_limit_mib = journal_size_limit_mib
        self._writer = Writer(self.path, busy_timeout=busy_timeout, setup=self._setup, max_batch=max_batch)
        self._reader = Reader(self.path, busy_timeout=busy_timeout)

    @property
    def commit_count(self) -> int:
        """Write transactions committed since open (fewer than writes when batching works)."""
        return self._writer.commit_count

    @property
    def write_count(self) -> int:
        """Write requests run since open (an `append_many` counts once)."""
        return self._writer.request_count

    # -- lifecycle ------------------------------------------------------------------------------
    def _setup(self, conn: sqlite3.Connection) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(f"the SQLite library is {sqlite3.sqlite_version}; the store needs "
                             f"{'.'.join(map(str, _MIN_SQLITE))} or newer (INSERT ... RETURNING)",
                             hint="run on Python built with a newer SQLite (the official builds are)")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")   # only takes on a new, empty file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL mode (journal_mode is {mode}); "
                                           "the store needs a local file system")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # The writer's connection lives as long as the store: a page cache that holds the hot
        # index pages; checkpoints every `wal_autocheckpoint` pages (fewer, larger ones: a page
        # rewritten by many commits is copied to the database once); and the WAL file kept at its
        # working size rather than truncated, so a commit overwrites it in place (an fdatasync that
        # need not journal a size change) yet shrinks back after a burst.
        conn.execute(f"PRAGMA cache_size = {-1024 * int(self.cache_mib)}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
        conn.execute(f"PRAGMA journal_size_limit = {int(self.journal_size_limit_mib) * 1024 * 1024}")
        applied = migrate(conn, self.path, utcnow())
        if applied:
            log.info("store_migrated", store="sqlite", version=applied[-1], count=len(applied))

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._writer.start()
        log.info("store_opened", store="sqlite", path=str(self.path))

    async def close(self) -> None:
        await self._writer.stop()   # runs what is queued first
        self._reader.close()
        log.info("store_closed", store="sqlite", count=self.commit_count)

    async def ping(self) -> bool:
        try:
            return bool(await self._reader.run(lambda c: c.execute("SELECT 1").fetchone()[0]))
        except Exception:
            return False

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.run(op)

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._reader.run(op)

    # -- inbox ----------------------------------------------------------------------------------
    async def append(self, new: NewEnvelope) -> Appended:
        result = await self._write(lambda c: ops.append(c, new, utcnow(), self.dedup_window))
        _log_appended(result)
        return result

    async def append_many(self, news: Sequence[NewEnvelope]) -> list[Appended]:
        results = await self._write(lambda c: [ops.append(c, n, utcnow(), self.dedup_window) for n in news])
        for result in results:
            _log_appended(result)
        return results

    async def get(self, envelope_id: int) -> Envelope | None:
        def op(c: sqlite3.Connection) -> Envelope | None:
            row = c.execute(q.GET, (envelope_id,)).fetchone()
            return None if row is None else q.row_to_envelope(row)
        return await self._read(op)

    async def list(self, *, states: Iterable[State] | None = None, source: str | None = None,
                   limit: int = 100, newest_first: bool = True) -> list[Envelope]:
        where: builtins.list[str] = []
        args: builtins.list[object] = []
        if states is not None:
            wanted = [State(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        if source is not None:
            where.append("source = ?")
            args.append(source)
        sql = (f"SELECT {q.COLUMNS} FROM envelopes {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?")
        args.append(limit)
        return await self._read(lambda c: [q.row_to_envelope(r) for r in c.execute(sql, args)])

    # -- work -----------------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int, lease: timedelta,
                    now: datetime | None = None) -> builtins.list[Envelope]:
        at = now or utcnow()
        claimed = await self._write(lambda c: ops.claim(c, owner, limit, lease, at))
        if claimed:
            log.debug("envelopes_claimed", owner=owner, envelope_ids=[e.id for e in claimed])
        return claimed

    async def _transition(self, envelope_id: int, *, from_states: tuple[State, ...], owner: str | None,
                          sets: dict[str, Any], event: str, detail: dict[str, Any]) -> bool:
        done = await self._write(lambda c: ops.transition(
            c, envelope_id, utcnow(), from_states=from_states, owner=owner, sets=sets, event=event,
            detail=detail))
        if not done and owner is not None:
            log.info("lease_lost", envelope_id=envelope_id, owner=owner, event_type=event)
        return done

    async def extend_lease(self, envelope_id: int, owner: str, lease: timedelta) -> bool:
        until = q.to_ts(utcnow() + lease)
        return await self._write(lambda c: c.execute(
            "UPDATE envelopes SET lease_until = ? WHERE id = ? AND state = 'claimed' AND lease_owner = ?",
            (until, envelope_id, owner)).rowcount == 1)

    async def complete(self, envelope_id: int, owner: str, *, mapping_version: str | None = None,
                       detail: dict[str, Any] | None = None) -> bool:
        return await self._transition(
            envelope_id, from_states=_HELD, owner=owner, event="completed",
            sets={"state": State.DONE.value, "mapping_version": mapping_version, "not_before": None,
                  "reason": None},
            detail={"owner": owner, "mapping_version": mapping_version, **(detail or {})})

    async def retry_at(self, envelope_id: int, owner: str, at: datetime, reason: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT attempts FROM envelopes WHERE id = ?", (envelope_id,)).fetchone()
            attempts = (row[0] if row else 0) + 1
            return ops.transition(
                c, envelope_id, utcnow(), from_states=_HELD, owner=owner, event="retry_scheduled",
                sets={"state": State.QUEUED.value, "not_before": q.to_ts(at), "attempts": attempts,
                      "reason": reason},
                detail={"owner": owner, "at": q.to_ts(at), "reason": reason, "attempts": attempts})
        done = await self._write(op)
        if done:
            log.info("retry_scheduled", envelope_id=envelope_id, retry_at=q.to_ts(at))
        return done

    async def dead_letter(self, envelope_id: int, owner: str, reason: str) -> bool:
        done = await self._transition(envelope_id, from_states=_HELD, owner=owner, event="dead_lettered",
                                      sets={"state": State.DEAD.value, "reason": reason,
                                            "not_before": None},
                                      detail={"owner": owner, "reason": reason})
        if done:
            log.warning("dead_lettered", envelope_id=envelope_id)
        return done

    async def release(self, envelope_id: int, owner: str) -> bool:
        return await self._transition(envelope_id, from_states=_HELD, owner=owner, event="released",
                                      sets={"state": State.QUEUED.value}, detail={"owner": owner})

    async def requeue(self, envelope_id: int, *, reason: str = "requeued by operator") -> bool:
        return await self._transition(
            envelope_id, from_states=(State.DEAD, State.QUARANTINED), owner=None, event="requeued",
            sets={"state": State.QUEUED.value, "attempts": 0, "not_before": None, "reason": None},
            detail={"reason": reason})

    async def drop(self, envelope_id: int, reason: str) -> bool:
        # A claim whose lease is live is being applied right now: dropping it would unblock the
        # key's next envelope while this one is still being sent (two of one key in flight). Such
        # a drop is refused; once the worker finishes (or its lease lapses) the drop goes through.
        def op(c: sqlite3.Connection) -> bool:
            now = utcnow()
            row = c.execute("SELECT state, lease_until FROM envelopes WHERE id = ?",
                            (envelope_id,)).fetchone()
            if row is not None and row[0] == State.CLAIMED.value and row[1] >= q.to_ts(now):
                return False
            return ops.transition(
                c, envelope_id, now, from_states=(State.QUEUED, State.CLAIMED, State.DEAD, State.QUARANTINED),
                owner=None, event="dropped",
                sets={"state": State.DROPPED.value, "reason": reason, "not_before": None},
                detail={"reason": reason})
        return await self._write(op)

    # -- crosswalk ------------------------------------------------------------------------------
    async def xref_get(self, namespace: str, source_id: str) -> Xref | None:
        def op(c: sqlite3.Connection) -> Xref | None:
            row = c.execute(f"SELECT {q.XREF_COLUMNS} FROM crosswalk WHERE namespace = ? AND source_id = ?",
                            (namespace, source_id)).fetchone()
            return None if row is None else _xref(row)
        return await self._read(op)

    async def xref_put(self, namespace: str, source_id: str, target: str,
                       detail: dict[str, Any] | None = None) -> Xref:
        now = utcnow()
        xref = Xref(namespace, source_id, target, q.from_ts(q.to_ts(now)), dict(detail or {}))
        await self._write(lambda c: c.execute(
            "INSERT INTO crosswalk (namespace, source_id, target, written_at, detail) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, source_id) DO UPDATE SET target = excluded.target, "
            "written_at = excluded.written_at, detail = excluded.detail",
            (namespace, source_id, target, q.to_ts(now), q.to_json(detail))))
        return xref

    async def xref_by_target(self, namespace: str, target: str) -> builtins.list[Xref]:
        sql = f"SELECT {q.XREF_COLUMNS} FROM crosswalk WHERE namespace = ? AND target = ? ORDER BY source_id"
        return await self._read(lambda c: [_xref(r) for r in c.execute(sql, (namespace, target))])

    async def xref_list(self, namespace: str, *, prefix: str | None = None) -> builtins.list[Xref]:
        sql = f"SELECT {q.XREF_COLUMNS} FROM crosswalk WHERE namespace = ?"
        args: builtins.list[str] = [namespace]
        if prefix:   # a key range on the primary key, not LIKE (no escaping, uses the index)
            sql += " AND source_id >= ?"
            args.append(prefix)
            upper = q.prefix_upper_bound(prefix)
            if upper is not None:
                sql += " AND source_id < ?"
                args.append(upper)
        sql += " ORDER BY source_id"
        return await self._read(lambda c: [_xref(r) for r in c.execute(sql, args)])

    async def xref_delete(self, namespace: str, source_id: str) -> bool:
        sql = "DELETE FROM crosswalk WHERE namespace = ? AND source_id = ?"
        return await self._write(lambda c: c.execute(sql, (namespace, source_id)).rowcount == 1)

    # -- audit ----------------------------------------------------------------------------------
    async def audit(self, envelope_id: int, event: str, detail: dict[str, Any] | None = None) -> None:
        await self._write(lambda c: ops.audit(c, envelope_id, utcnow(), event, detail))

    async def history(self, envelope_id: int) -> builtins.list[AuditEntry]:
        sql = "SELECT envelope_id, at, event, detail FROM audit WHERE envelope_id = ? ORDER BY id"
        return await self._read(lambda c: [AuditEntry(r[0], q.from_ts(r[1]), r[2], q.from_json(r[3]))
                                           for r in c.execute(sql, (envelope_id,))])

    # -- small durable state --------------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])
        return await self._read(op)

    async def kv_put(self, key: str, value: str) -> None:
        now = q.to_ts(utcnow())
        await self._write(lambda c: c.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, updated_at = excluded.updated_at", (key, value, now)))

    # -- operations -----------------------------------------------------------------------------
    async def stats(self, now: datetime | None = None) -> QueueStats:
        def op(c: sqlite3.Connection) -> QueueStats:
            by_state = {s.value: 0 for s in State}
            detailed: dict[tuple[str, str, str], int] = {}
            for source, kind, state, count in c.execute(
                    "SELECT source, kind, state, count(*) FROM envelopes GROUP BY source, kind, state"):
                detailed[(source, kind, state)] = count
                by_state[state] += count
            oldest = c.execute("SELECT min(received_at) FROM envelopes WHERE state = 'queued'").fetchone()[0]
            retrying = c.execute("SELECT count(*) FROM envelopes WHERE state = 'queued' AND attempts > 0")
            blocked = c.execute("SELECT count(*) FROM envelopes WHERE head = 1 AND state = 'dead'")
            pages = c.execute("PRAGMA page_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0]
            return QueueStats(by_state=by_state, by_source_kind_state=detailed,
                              oldest_waiting=None if oldest is None else q.from_ts(oldest),
                              retrying=retrying.fetchone()[0], blocked_keys=blocked.fetchone()[0],
                              size_bytes=pages)
        return await self._read(op)

    async def prune(self, *, older_than: datetime) -> int:
        def op(c: sqlite3.Connection) -> int:
            args = {"before": q.to_ts(older_than), "now": q.to_ts(utcnow())}
            c.execute(q.PRUNE_AUDIT, args)
            return c.execute(q.PRUNE_PAYLOADS, args).rowcount
        purged = await self._write(op)
        if purged:
            # Give the freed pages back to the file system (auto_vacuum = INCREMENTAL).
            await self._write(lambda c: c.execute("PRAGMA incremental_vacuum").fetchall())
        log.info("payloads_purged", purged=purged)
        return purged


def _xref(row: tuple[Any, ...]) -> Xref:
    return Xref(namespace=row[0], source_id=row[1], target=row[2], written_at=q.from_ts(row[3]),
                detail=q.from_json(row[4]))


def _log_appended(result: Appended) -> None:
    env = result.envelope
    event = {AppendOutcome.STORED: "envelope_stored", AppendOutcome.DUPLICATE: "envelope_duplicate",
             AppendOutcome.CONFLICT: "envelope_conflict"}[result.outcome]
    log.info(event, envelope_id=env.id, source=env.source.value, kind=env.kind, state=env.state.value,
             content_hash=env.content_hash[:16])
