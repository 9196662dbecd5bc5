"""The SQLite writer thread's batching (adapter/store/sqlite_conn.py) and the one-statement append
(adapter/store/sqlite_ops.py): batches run without savepoints and replay with them only when a
request fails; a cancelled request not yet started is never run; the append audits itself.

The writer is held on a `threading.Event` inside a first request, so the requests queued meanwhile
are one batch for certain (no timing involved).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from adapter.envelope import AppendOutcome, NewEnvelope, Source, State
from adapter.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


def new(i: int, *, key: str | None = None, state: State = State.QUEUED,
        reason: str | None = None) -> NewEnvelope:
    return NewEnvelope(source=Source.MLLP, kind="ADT^A04", ordering_key=key or f"patient:{i}",
                       dedup_key=f"mllp:FAC|{i}", payload=f"MSH|{i}".encode(), state=state, reason=reason)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "w.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class Gate:
    """A writer request that blocks the writer thread until `release()`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def op(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        if not self.opened.wait(DEADLINE):
            raise TimeoutError("the test never released the writer")

    def release(self) -> None:
        self.opened.set()


async def hold_writer(store: SQLiteStore, tg: anyio.abc.TaskGroup) -> Gate:
    gate = Gate()
    tg.start_soon(store._write, gate.op)
    with anyio.fail_after(DEADLINE):
        while not gate.entered.is_set():   # a condition with a deadline; the writer sets it
            await anyio.to_thread.run_sync(gate.entered.wait, 0.05)
    return gate


async def test_failing_request_fails_alone_and_others_commit(store: SQLiteStore) -> None:
    """A request that raises inside a batch fails with its own error; the rest of the batch commits
    (the batch is replayed with one savepoint per request)."""
    results: dict[int, AppendOutcome | BaseException] = {}

    async def append(i: int, env: NewEnvelope) -> None:
        try:
            results[i] = (await store.append(env)).outcome
        except ValueError as exc:
            results[i] = exc

    replays = store._writer.replay_count
    async with anyio.create_task_group() as tg:
        gate = await hold_writer(store, tg)
        commits = store.commit_count
        for i in range(10):
            tg.start_soon(append, i, new(i, state=State.DONE) if i == 4 else new(i))
        await anyio.wait_all_tasks_blocked()
        gate.release()
    assert isinstance(results.pop(4), ValueError)
    assert set(results.values()) == {AppendOutcome.STORED}
    assert store._writer.replay_count == replays + 1
    assert store.commit_count - commits == 2          # the gate's batch, then the ten in one
    assert len(await store.list(limit=100)) == 9


async def test_cancelled_request_not_started_is_never_run(store: SQLiteStore) -> None:
    """An append cancelled while still queued behind a busy writer is not run: nothing stored, no
    commit for it; the next append is stored as usual."""
    scopes: list[anyio.CancelScope] = []

    async def append_in_scope() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await store.append(new(1))

    async with anyio.create_task_group() as tg:
        gate = await hold_writer(store, tg)
        commits = store.commit_count
        tg.start_soon(append_in_scope)
        await anyio.wait_all_tasks_blocked()   # queued, waiting for the writer
        scopes[0].cancel()
        await anyio.wait_all_tasks_blocked()
        gate.release()
    assert await store.list() == []
    assert (await store.append(new(2))).outcome is AppendOutcome.STORED
    assert store.commit_count - commits == 2   # the gate's batch and the last append, nothing between


async def test_append_audits_itself_in_one_statement(store: SQLiteStore) -> None:
    """The stored envelope's audit row is written by the schema's trigger: 'stored' with the content
    hash for a queued envelope; the state and reason for a rejected one."""
    queued = (await store.append(new(1))).envelope
    rejected = (await store.append(new(2, state=State.REJECTED, reason="AR: ZZZ^Z01 not routed"))).envelope
    [stored] = await store.history(queued.id)
    assert (stored.event, stored.detail) == ("stored", {"content_hash": queued.content_hash})
    assert stored.at == queued.updated_at
    [refused] = await store.history(rejected.id)
    assert (refused.event, refused.detail) == (
        "rejected", {"content_hash": rejected.content_hash, "reason": "AR: ZZZ^Z01 not routed"})


async def test_head_is_folded_into_the_insert(store: SQLiteStore, tmp_path: Path) -> None:
    """The first queued envelope of a key is its head, later ones are not, a rejected one never is."""
    a = (await store.append(new(1, key="patient:k"))).envelope
    b = (await store.append(new(2, key="patient:k"))).envelope
    r = (await store.append(new(3, key="patient:r", state=State.REJECTED, reason="AR"))).envelope
    with sqlite3.connect(tmp_path / "w.db") as conn:
        heads = dict(conn.execute("SELECT id, head FROM envelopes").fetchall())
    conn.close()
    assert heads == {a.id: 1, b.id: None, r.id: None}


async def test_writer_pragmas(tmp_path: Path) -> None:
    """The writer connection runs with the configured cache, checkpoint interval and WAL size limit."""
    s = SQLiteStore(tmp_path / "p.db", cache_mib=16, wal_autocheckpoint=500, journal_size_limit_mib=8)
    await s.open()
    try:
        got = await s._write(lambda c: [c.execute(f"PRAGMA {p}").fetchone()[0] for p in
                                        ("cache_size", "wal_autocheckpoint", "journal_size_limit",
                                         "synchronous")])
    finally:
        await s.close()
    assert got == [-16 * 1024, 500, 8 * 1024 * 1024, 2]   # synchronous 2 = FULL
