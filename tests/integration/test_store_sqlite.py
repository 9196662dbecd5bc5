"""SQLite-only behaviour of the store: schema and migrations, invariants refused by the schema itself,
group commit, error translation, the URL factory. The contract is in test_store.py.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from adapter.envelope import AppendOutcome, NewEnvelope, Source
from adapter.errors import StoreError
from adapter.store import open_store
from adapter.store import sqlite_sql as q
from adapter.store.sqlite import SQLiteStore
from adapter.store.sqlite_migrate import migrations, run_script, schema_sql

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=30)


def new(i: int, key: str | None = None) -> NewEnvelope:
    return NewEnvelope(source=Source.MLLP, kind="ADT^A04", ordering_key=key or f"patient:{i}",
                       dedup_key=f"mllp:FAC|{i}", payload=f"MSH|{i}".encode())


def _normalised_schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                        "AND name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    out = []
    for type_, name, sql in rows:
        text = re.sub(r"--[^\n]*", "", sql)
        out.append((type_, name, re.sub(r"\s+", " ", text).replace("( ", "(").replace(" )", ")").strip()))
    return out


async def test_migrations_yield_schema_sql(tmp_path: Path) -> None:
    """Applying every numbered migration in order gives exactly the schema of schema.sql."""
    assert [m.version for m in migrations()] == list(range(1, len(migrations()) + 1))
    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    stepped = sqlite3.connect(tmp_path / "stepped.db", isolation_level=None)
    try:
        run_script(fresh, schema_sql())
        for migration in migrations():
            run_script(stepped, migration.sql)
        assert _normalised_schema(stepped) == _normalised_schema(fresh)
        assert len(_normalised_schema(fresh)) > 10
    finally:
        fresh.close()
        stepped.close()


async def test_open_creates_directory_and_reopens(tmp_path: Path) -> None:
    """open() creates missing directories and the schema; reopening keeps data and migrates nothing."""
    path = tmp_path / "a" / "b" / "adapter.db"
    store = SQLiteStore(path)
    await store.open()
    stored = await store.append(new(1))
    await store.close()
    again = SQLiteStore(path)
    await again.open()
    try:
        assert (await again.get(stored.envelope.id)) is not None
    finally:
        await again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert versions == [(m.version,) for m in migrations()]
    conn.close()


async def test_schema_refuses_two_claimed_per_key(tmp_path: Path) -> None:
    """The partial unique index refuses a second CLAIMED envelope of one key, even from raw SQL."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.append(new(1, "patient:A"))
        second = await store.append(new(2, "patient:A"))
        assert len(await store.claim("w1", limit=10, lease=LEASE)) == 1
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
            conn.execute("UPDATE envelopes SET state = 'claimed', lease_owner = 'x', lease_until = 'y' "
                         "WHERE id = ?", (second.envelope.id,))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET event = 'x'")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute("UPDATE envelopes SET state = 'claimed' WHERE id = ?", (second.envelope.id,))
    finally:
        conn.close()


async def test_claim_reads_heads_through_index(tmp_path: Path) -> None:
    """The claim queries use their partial indexes (no walk over every queued envelope)."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        args = {"now": "2026-01-01T00:00:00.000000Z", "limit": 10}
        ready = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.CLAIM_READY, args))
        expired = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.CLAIM_EXPIRED, args))
    finally:
        conn.close()
    assert "envelopes_ready" in ready and "envelopes_one_claimed_per_key" in ready
    assert "TEMP B-TREE" not in ready
    assert "envelopes_leases" in expired


async def test_group_commit_batches_concurrent_appends(tmp_path: Path) -> None:
    """8 concurrent appenders of 500 envelopes each share commits: fewer commits than appends."""
    store = SQLiteStore(tmp_path / "s.db", synchronous="FULL")
    await store.open()
    try:
        before = store.commit_count

        async def appender(task: int) -> None:
            for i in range(500):
                assert (await store.append(new(task * 1000 + i))).outcome is AppendOutcome.STORED

        async with anyio.create_task_group() as tg:
            for task in range(8):
                tg.start_soon(appender, task)
        commits = store.commit_count - before
        assert store.write_count >= 4000
        assert commits < 4000
    finally:
        await store.close()


async def test_close_flushes_pending_appends(tmp_path: Path) -> None:
    """close() runs every append already queued before it stops the writer; later ones are refused."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    done: list[int] = []

    async def append(i: int) -> None:
        done.append((await store.append(new(i))).envelope.id)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(append, i)
        await anyio.wait_all_tasks_blocked()
        await store.close()
    assert len(done) == 50
    with pytest.raises(StoreError, match="closed"):
        await store.append(new(99))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM envelopes").fetchone()[0] == 50
    conn.close()


async def test_locked_database_is_a_store_error(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout gives a StoreError naming the file."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="database is locked") as info:
            await store.append(new(1))
        assert str(path) in str(info.value)
        other.execute("ROLLBACK")
        assert (await store.append(new(1))).outcome is AppendOutcome.STORED
    finally:
        other.close()
        await store.close()


async def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    """Opening a file that is not SQLite fails with a StoreError that says what to do."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just text " * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="not a usable SQLite database") as info:
        await store.open()
    assert "store.url" in str(info.value)


async def test_foreign_database_refused(tmp_path: Path) -> None:
    """A SQLite file with other tables and no schema_migrations is not taken over."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="not an oncall-adapter store"):
        await SQLiteStore(path).open()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    """A file migrated by a newer version (unknown migration number) is refused, not damaged."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    conn.close()
    with pytest.raises(StoreError, match="newer oncall-adapter"):
        await SQLiteStore(path).open()


async def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store from open_store("sqlite:///relative/path") opens its file under the working directory."""
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///var/a.db?synchronous=normal")
    assert isinstance(rel, SQLiteStore) and rel.path == Path("var/a.db") and rel.synchronous == "NORMAL"
    absolute = open_store(f"sqlite:///{tmp_path}/b.db", dedup_window=timedelta(days=7))
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "b.db"
    assert absolute.dedup_window == timedelta(days=7)
    await rel.open()
    try:
        assert (tmp_path / "var" / "a.db").exists()
    finally:
        await rel.close()
