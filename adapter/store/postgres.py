"""The PostgreSQL store: the `Store` contract (base.py) for several processes or hosts sharing one queue.

What is PostgreSQL-specific:
- `open()` creates the schema and applies numbered migrations under an advisory lock, so several
  nodes starting together do not race.
- `claim()` is one statement with `FOR UPDATE SKIP LOCKED` (see postgres_sql.CLAIM): concurrent
  claimers skip each other's rows, and only the head of an ordering key is ever eligible, so one
  key's envelopes are applied in order across every node. The partial unique index
  (one CLAIMED per key) is the last line of defence: its violation means "another node got it".
- Concurrent single appends are group-committed (postgres_batch.py).

Clock: every timestamp written or compared is computed in Python (`now=` or utcnow()) and passed
as a parameter, never the database's now(). One clock per decision, the same rule as SQLite, and
`now=` moves time for a whole claim. Nodes sharing a store must keep their clocks in sync (NTP);
a lease is long (a minute) against any sane skew.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from adapter.envelope import Appended, AppendOutcome, Envelope, NewEnvelope, State, utcnow
from adapter.errors import ConfigError, StoreError
from adapter.store import postgres_sql as q
from adapter.store.base import AuditEntry, QueueStats, Xref
from adapter.store.postgres_batch import GroupCommit
from adapter.store.postgres_inbox import append_batch
from adapter.store.postgres_support import (
    Contention,
    KeyTaken,
    Where,
    aware,
    envelope_from_row,
    migrate,
    translated,
)

__all__ = ["PostgresStore"]

log = structlog.get_logger(__name__)

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CLAIM_TRIES = 3
_APPEND_TRIES = 3


class PostgresStore:
    """The store on PostgreSQL (psycopg 3, an async connection pool)."""

    def __init__(self, dsn: str, *, schema: str = "oncall_adapter", min_size: int = 1, max_size: int = 10,
                 dedup_window: timedelta | None = None, connect_timeout: float = 10.0,
                 group_commit: bool = True, commit_window: float = 0.001) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError("store.schema", schema, "a PostgreSQL identifier: letters, digits, _")
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._dedup_window = dedup_window
        self._connect_timeout = connect_timeout
        self._where = Where(dsn, schema)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._group = GroupCommit(self._append_batch, window=commit_window) if group_commit else None

    @property
    def group_commits(self) -> tuple[int, int]:
        """(transactions, appends) committed by group commit since creation: appends per commit."""
        return (self._group.batches, self._group.appends) if self._group else (0, 0)

    # -- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        with translated(self._where, "opening the store"):
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(2, round(self._connect_timeout)))
            async with conn:
                applied = await migrate(conn, self._schema)
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self._dsn, min_size=self._min_size, max_size=self._max_size, open=False,
                kwargs={"autocommit": True}, configure=self._configure,
                name=f"oncall-adapter-{self._schema}")
            try:
                await pool.open(wait=True, timeout=self._connect_timeout)
            except BaseException:
                await pool.close()
                raise
        self._pool = pool
        log.info("store_opened", store="postgres", schema=self._schema, address=self._where.address,
                 migrations_applied=len(applied))

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        await conn.execute("SET TimeZone TO 'UTC'")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
            log.info("store_closed", store="postgres", schema=self._schema)

    async def ping(self) -> bool:
        try:
            # A readiness probe answers quickly: it does not queue behind a starved pool for long.
            async with self._conn("pinging the store", wait_for_connection=2.0) as conn:
                await conn.execute("SELECT 1")
        except StoreError:
            return False
        return True

    @asynccontextmanager
    async def _conn(self, action: str, *, wait_for_connection: float | None = None,
                    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError(f"{action}: the PostgreSQL store is not open", hint="call open() first")
        with translated(self._where, action):
            async with self._pool.connection(timeout=wait_for_connection) as conn:
                yield conn

    async def _fetch(self, action: str, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._conn(action) as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _update(self, action: str, query: str, params: dict[str, Any],
                      event: str | None = None, detail: dict[str, Any] | None = None,
                      *, moves_head: bool = False) -> bool:
        """One state change (an UPDATE that audits itself, see postgres_sql._audited) in one transaction.

        When it `moves_head`, the key's lock is taken first and its head fixed after, all sent as one
        pipeline: one network round trip whatever the number of statements.
        """
        params.setdefault("now", utcnow())
        if event is not None:
            params.update(event=event, detail=Jsonb(detail or {}))
        key_of = {"id": params["id"]}
        async with self._conn(action) as conn, conn.pipeline(), conn.transaction():
            if moves_head:
                await conn.execute(q.LOCK_KEY_OF, key_of)
            cur = await conn.execute(query, params)
            if moves_head:   # harmless when nothing changed: the head is recomputed as it was
                await conn.execute(q.HEAD_CLEAR, key_of)
                await conn.execute(q.HEAD_SET, key_of)
        if cur.rowcount != 1:
            if "owner" in params:
                log.info("lease_lost", store="postgres", envelope_id=params["id"], owner=params["owner"])
            return False
        return True

    # -- inbox ------------------------------------------------------------------------------
    async def append(self, new: NewEnvelope) -> Appended:
        if self._group is not None:
            result = await self._group.append(new)
        else:
            result = (await self._append_batch([new]))[0]
        _log_appended(result)
        return result

    async def append_many(self, news: Sequence[NewEnvelope]) -> list[Appended]:
        results = await self._append_batch(news) if news else []
        for result in results:
            _log_appended(result)
        return results

    async def _append_batch(self, news: Sequence[NewEnvelope]) -> list[Appended]:
        for attempt in range(1, _APPEND_TRIES + 1):
            try:
                async with self._conn(f"appending {len(news)} envelope(s)") as conn:
                    return await append_batch(conn, news, now=utcnow(), dedup_window=self._dedup_window)
            except Contention:
                # Two batches inserting the same dedup keys in opposite orders deadlock; PostgreSQL
                # aborts one, which is rolled back whole and simply runs again.
                if attempt == _APPEND_TRIES:
                    raise
                log.info("store_append_retried", store="postgres", size=len(news), attempt=attempt)
        raise AssertionError("unreachable")

    async def get(self, envelope_id: int) -> Envelope | None:
        rows = await self._fetch("reading an envelope", q.GET, {"id": envelope_id})
        return envelope_from_row(rows[0]) if rows else None

    async def list(self, *, states: Iterable[State] | None = None, source: str | None = None,
                   limit: int = 100, newest_first: bool = True) -> builtins.list[Envelope]:
        where: list[sql.Composable] = []
        params: dict[str, Any] = {"limit": limit}
        if states is not None:
            where.append(sql.SQL("state = ANY(%(states)s)"))
            params["states"] = [str(State(s)) for s in states]
        if source is not None:
            where.append(sql.SQL("source = %(source)s"))
            params["source"] = str(source)
        query = sql.SQL("SELECT {} FROM envelopes {} ORDER BY id {} LIMIT %(limit)s").format(
            sql.SQL(q.COLUMNS),
            sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
            sql.SQL("DESC" if newest_first else "ASC"))
        async with self._conn("listing envelopes") as conn:
            cur = await conn.execute(query, params)
            return [envelope_from_row(row) for row in await cur.fetchall()]

    # -- work -------------------------------------------------------------------------------
    async def claim(self, owner: str, *, limit: int, lease: timedelta,
                    now: datetime | None = None) -> builtins.list[Envelope]:
        if limit <= 0:
            return []
        now = now or utcnow()
        params = {"owner": owner, "limit": limit, "now": now, "until": now + lease}
        for _ in range(_CLAIM_TRIES):
            try:
                rows = await self._fetch("claiming envelopes", q.CLAIM, params)
            except KeyTaken:
                # A stale snapshot chose a key another node has just claimed: the statement was
                # rolled back whole; the next one sees that claim and skips the key.
                log.info("store_claim_key_taken", store="postgres", owner=owner)
                continue
            taken_over = [row[0] for row in rows if row[17] == State.CLAIMED]
            if taken_over:
                log.warning("store_lease_taken_over", store="postgres", owner=owner,
                            envelope_ids=taken_over, count=len(taken_over))
            return [envelope_from_row(row) for row in rows]
        return []

    async def extend_lease(self, envelope_id: int, owner: str, lease: timedelta) -> bool:
        now = utcnow()
        return await self._update("extending a lease", q.EXTEND_LEASE,
                                  {"id": envelope_id, "owner": owner, "now": now, "until": now + lease})

    async def complete(self, envelope_id: int, owner: str, *, mapping_version: str | None = None,
                       detail: dict[str, Any] | None = None) -> bool:
        return await self._update("completing an envelope", q.COMPLETE,
                                  {"id": envelope_id, "owner": owner, "mapping_version": mapping_version},
                                  "completed", {"owner": owner, "mapping_version": mapping_version,
                                                **(detail or {})}, moves_head=True)

    async def retry_at(self, envelope_id: int, owner: str, at: datetime, reason: str) -> bool:
        # RETRY_AT writes its own audit row (it carries the new attempt count).
        done = await self._update("scheduling a retry", q.RETRY_AT,
                                  {"id": envelope_id, "owner": owner, "at": at, "reason": reason})
        if done:
            log.info("retry_scheduled", store="postgres", envelope_id=envelope_id, retry_at=at.isoformat())
        return done

    async def dead_letter(self, envelope_id: int, owner: str, reason: str) -> bool:
        done = await self._update("dead-lettering an envelope", q.DEAD_LETTER,
                                  {"id": envelope_id, "owner": owner, "reason": reason},
                                  "dead_lettered", {"owner": owner, "reason": reason})
        if done:
            log.warning("dead_lettered", store="postgres", envelope_id=envelope_id)
        return done

    async def release(self, envelope_id: int, owner: str) -> bool:
        return await self._update("releasing a claim", q.RELEASE, {"id": envelope_id, "owner": owner},
                                  "released", {"owner": owner})

    async def requeue(self, envelope_id: int, *, reason: str = "requeued by operator") -> bool:
        return await self._update("requeueing an envelope", q.REQUEUE, {"id": envelope_id},
                                  "requeued", {"reason": reason}, moves_head=True)

    async def drop(self, envelope_id: int, reason: str) -> bool:
        return await self._update("dropping an envelope", q.DROP, {"id": envelope_id, "reason": reason},
                                  "dropped", {"reason": reason}, moves_head=True)

    # -- crosswalk --------------------------------------------------------------------------
    @staticmethod
    def _xref(row: tuple[Any, ...]) -> Xref:
        namespace, source_id, target, written_at, detail = row
        return Xref(namespace=namespace, source_id=source_id, target=target,
                    written_at=written_at.astimezone(UTC), detail=dict(detail or {}))

    async def xref_get(self, namespace: str, source_id: str) -> Xref | None:
        rows = await self._fetch("reading the crosswalk", q.XREF_GET, {"ns": namespace, "sid": source_id})
        return self._xref(rows[0]) if rows else None

    async def xref_put(self, namespace: str, source_id: str, target: str,
                       detail: dict[str, Any] | None = None) -> Xref:
        rows = await self._fetch("writing the crosswalk", q.XREF_PUT, {
            "ns": namespace, "sid": source_id, "target": target, "now": utcnow(),
            "detail": Jsonb(detail or {})})
        return self._xref(rows[0])

    async def xref_by_target(self, namespace: str, target: str) -> builtins.list[Xref]:
        rows = await self._fetch("reading the crosswalk", q.XREF_BY_TARGET,
                                 {"ns": namespace, "target": target})
        return [self._xref(row) for row in rows]

    async def xref_list(self, namespace: str, *, prefix: str | None = None) -> builtins.list[Xref]:
        if prefix:
            rows = await self._fetch("listing the crosswalk", q.XREF_LIST_PREFIX,
                                     {"ns": namespace, "prefix": prefix})
        else:
            rows = await self._fetch("listing the crosswalk", q.XREF_LIST, {"ns": namespace})
        return [self._xref(row) for row in rows]

    async def xref_delete(self, namespace: str, source_id: str) -> bool:
        async with self._conn("deleting from the crosswalk") as conn:
            cur = await conn.execute(q.XREF_DELETE, {"ns": namespace, "sid": source_id})
            return cur.rowcount == 1

    # -- audit ------------------------------------------------------------------------------
    async def audit(self, envelope_id: int, event: str, detail: dict[str, Any] | None = None) -> None:
        async with self._conn("writing the audit") as conn:
            await conn.execute(q.INSERT_AUDIT, {"id": envelope_id, "now": utcnow(), "event": event,
                                                "detail": Jsonb(detail or {})})

    async def history(self, envelope_id: int) -> builtins.list[AuditEntry]:
        rows = await self._fetch("reading the audit", q.HISTORY, {"id": envelope_id})
        return [AuditEntry(envelope_id=r[0], at=r[1].astimezone(UTC), event=r[2], detail=dict(r[3] or {}))
                for r in rows]

    # -- small durable state ----------------------------------------------------------------
    async def kv_get(self, key: str) -> str | None:
        rows = await self._fetch("reading a cursor", q.KV_GET, {"key": key})
        return rows[0][0] if rows else None

    async def kv_put(self, key: str, value: str) -> None:
        async with self._conn("writing a cursor") as conn:
            await conn.execute(q.KV_PUT, {"key": key, "value": value, "now": utcnow()})

    # -- operations -------------------------------------------------------------------------
    async def stats(self, now: datetime | None = None) -> QueueStats:
        async with self._conn("computing queue statistics") as conn:
            cur = await conn.execute(q.STATS_BY_SOURCE_KIND_STATE)
            groups = await cur.fetchall()
            cur = await conn.execute(q.STATS_SCALARS)
            oldest, retrying, blocked = (await cur.fetchall())[0]
            cur = await conn.execute(q.STATS_SIZE, {"schema": self._schema})
            size = (await cur.fetchall())[0][0]
        by_state = {state.value: 0 for state in State}   # every state, as in SQLite
        for _, _, state, count in groups:
            by_state[state] += count
        return QueueStats(by_state=by_state,
                          by_source_kind_state={(s, k, st): c for s, k, st, c in groups},
                          oldest_waiting=aware(oldest), retrying=retrying, blocked_keys=blocked,
                          size_bytes=int(size))

    async def prune(self, *, older_than: datetime) -> int:
        rows = await self._fetch("pruning payloads", q.PRUNE, {"older_than": older_than, "now": utcnow()})
        purged = int(rows[0][0])
        log.info("payloads_purged", store="postgres", purged=purged)
        return purged


_APPEND_EVENTS = {AppendOutcome.STORED: "envelope_stored", AppendOutcome.DUPLICATE: "envelope_duplicate",
                  AppendOutcome.CONFLICT: "envelope_conflict"}


def _log_appended(result: Appended) -> None:
    env = result.envelope
    log.info(_APPEND_EVENTS[result.outcome], store="postgres", envelope_id=env.id, source=env.source.value,
             kind=env.kind, state=env.state.value, content_hash=env.content_hash[:16])
