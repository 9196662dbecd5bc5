"""PostgreSQL-only behaviour of the store: migrations, several nodes sharing one queue, SKIP LOCKED.

The Store contract itself is tested for every backend in test_store.py. These tests need the real
PostgreSQL at 127.0.0.1:5432 (user postgres, database test); if it is missing they fail, never skip.
Each test works in a fresh schema, dropped afterwards. "Nodes" are separate PostgresStore instances
(separate pools, so separate connections and transactions), as separate processes would be.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from adapter.envelope import AppendOutcome, NewEnvelope, Source, State, utcnow
from adapter.errors import ConfigError, StoreError
from adapter.store.postgres import PostgresStore
from adapter.store.postgres_support import migrations, schema_sql

DSN = "postgresql://postgres@127.0.0.1:5432/test"
LEASE = timedelta(seconds=30)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"   # psycopg's async API runs on asyncio


def _drop(*schemas: str) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for name in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"test_pg_{uuid.uuid4().hex[:12]}"
    yield name
    _drop(name)


@asynccontextmanager
async def node(schema: str, **kwargs: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(DSN, schema=schema, **kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def new(i: int, key: str, payload: bytes | None = None) -> NewEnvelope:
    return NewEnvelope(source=Source.MLLP, kind="ADT^A08", ordering_key=f"patient:{key}",
                       dedup_key=f"mllp:FAC|MSG{i:05d}", payload=payload or f"MSH|{i}".encode())


def _catalog(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """The schema as pg_catalog describes it, with the schema name taken out."""
    def rows(query: str) -> list[tuple[Any, ...]]:
        got = conn.execute(query, {"s": schema}).fetchall()
        return sorted(tuple(str(v).replace(f"{schema}.", "") for v in row) for row in got)
    return {
        "columns": rows("""SELECT table_name, column_name, data_type, is_nullable, column_default,
                                  is_identity, identity_generation
                           FROM information_schema.columns
                           WHERE table_schema = %(s)s AND table_name <> 'schema_migrations'"""),
        "constraints": rows("""SELECT t.relname, c.conname, pg_get_constraintdef(c.oid)
                               FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                               JOIN pg_namespace n ON n.oid = t.relnamespace
                               WHERE n.nspname = %(s)s AND t.relname <> 'schema_migrations'"""),
        "indexes": rows("""SELECT tablename, indexname, indexdef FROM pg_indexes
                           WHERE schemaname = %(s)s AND tablename <> 'schema_migrations'"""),
        "triggers": rows("""SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid)
                            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                            JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = %(s)s AND NOT t.tgisinternal"""),
        "functions": rows("""SELECT p.proname, pg_get_function_result(p.oid), p.prosrc
                             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                             WHERE n.nspname = %(s)s"""),
    }


async def test_migrations_add_up_to_schema_sql(schema: str) -> None:
    """Applying every numbered migration (what open() does) yields exactly the schema of schema.sql."""
    reference = f"{schema}_ref"
    try:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(reference)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(reference)))
            conn.execute(schema_sql())
        async with node(schema):
            pass
        with psycopg.connect(DSN, autocommit=True) as conn:
            migrated, expected = _catalog(conn, schema), _catalog(conn, reference)
            applied = conn.execute(sql.SQL("SELECT version FROM {}.schema_migrations ORDER BY version")
                                   .format(sql.Identifier(schema))).fetchall()
        assert migrated["columns"], "the migrations created no tables"
        assert migrated == expected
        assert [v for (v,) in applied] == [v for v, _, _ in migrations()]
    finally:
        _drop(reference)


async def test_nodes_starting_together_migrate_once(schema: str) -> None:
    """Several nodes opening one new schema at once all succeed; each migration is applied once."""
    stores = [PostgresStore(DSN, schema=schema, min_size=1, max_size=2) for _ in range(4)]
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(store.open)
        assert all([await store.ping() for store in stores])
    finally:
        for store in stores:
            await store.close()
    with psycopg.connect(DSN) as conn:
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}.schema_migrations")
                             .format(sql.Identifier(schema))).fetchone()
    assert count == (len(migrations()),)


async def test_two_nodes_claim_each_envelope_once_in_per_key_order(schema: str) -> None:
    """Two nodes claiming concurrently from 200 envelopes over 20 keys never hold two envelopes of one
    key at once, and together claim every envelope exactly once, each key's in arrival order."""
    rng = random.Random(20240601)
    async with node(schema) as a, node(schema) as b:
        keys = [f"K{rng.randrange(20):02d}" for _ in range(200)]
        appended = await a.append_many([new(i, key) for i, key in enumerate(keys)])
        ids_by_key: dict[str, list[int]] = defaultdict(list)
        for result in appended:
            ids_by_key[result.envelope.ordering_key].append(result.envelope.id)

        held: dict[str, int] = {}
        claimed: dict[str, list[int]] = defaultdict(list)
        violations: list[str] = []

        async def worker(store: PostgresStore, owner: str) -> None:
            while sum(len(v) for v in claimed.values()) < 200:
                got = await store.claim(owner, limit=rng.randrange(1, 6), lease=LEASE)
                for env in got:
                    if env.ordering_key in held:
                        violations.append(f"{env.ordering_key}: {held[env.ordering_key]} and {env.id}")
                    held[env.ordering_key] = env.id
                    claimed[env.ordering_key].append(env.id)
                await anyio.lowlevel.checkpoint()   # let the other node run while these are held
                for env in got:
                    del held[env.ordering_key]     # before complete: we hold the lease until it commits
                    assert await store.complete(env.id, owner)
                if not got:
                    await anyio.lowlevel.checkpoint()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(worker, a, f"a{n}")
                    tg.start_soon(worker, b, f"b{n}")

        assert violations == []
        assert dict(claimed) == dict(ids_by_key)   # each once, and in arrival order per key
        assert _head_violations(schema) == []
        stats = await b.stats()
        assert {k: v for k, v in stats.by_state.items() if v} == {"done": 200}


def _head_violations(schema: str) -> list[str]:
    """Keys whose `head` is not exactly their earliest queued/claimed/dead envelope (one snapshot)."""
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(sql.SQL("SELECT ordering_key, id, state, head FROM {} ORDER BY id")
                            .format(sql.Identifier(schema, "envelopes"))).fetchall()
    heads: dict[str, list[int]] = defaultdict(list)
    first: dict[str, int] = {}
    for key, id_, state, head in rows:
        if head:
            heads[key].append(id_)
        if state in ("queued", "claimed", "dead"):
            first.setdefault(key, id_)
    return [key for key in set(heads) | set(first)
            if heads.get(key, []) != ([first[key]] if key in first else [])]


async def test_heads_stay_right_under_concurrent_nodes_and_operators(schema: str) -> None:
    """With two nodes completing, retrying, releasing and dead-lettering, an operator requeueing and
    dropping, and a listener appending meanwhile, every committed state has exactly one head per
    key (its earliest queued/claimed/dead envelope), each key's envelopes complete in arrival order,
    and everything ends done or dropped."""
    rng = random.Random(7)
    async with node(schema) as a, node(schema) as b:
        await a.append_many([new(i, f"K{rng.randrange(15)}") for i in range(150)])
        completed: dict[str, list[int]] = defaultdict(list)
        snapshots_bad: list[list[str]] = []
        finished = anyio.Event()

        async def worker(store: PostgresStore, owner: str) -> None:
            while not finished.is_set():
                for env in await store.claim(owner, limit=3, lease=LEASE):
                    roll = rng.random()
                    if roll < 0.7:
                        completed[env.ordering_key].append(env.id)
                        assert await store.complete(env.id, owner)
                    elif roll < 0.8:
                        assert await store.retry_at(env.id, owner, utcnow(), "transient")
                    elif roll < 0.9:
                        assert await store.release(env.id, owner)
                    else:
                        assert await store.dead_letter(env.id, owner, "permanent")
                await anyio.lowlevel.checkpoint()

        async def operator() -> None:
            while not finished.is_set():
                for env in await b.list(states=[State.DEAD], limit=5):
                    if rng.random() < 0.8:
                        await b.requeue(env.id)
                    else:
                        await b.drop(env.id, "given up")
                left = await b.list(states=[State.QUEUED, State.CLAIMED, State.DEAD], limit=1)
                if not left and appended.is_set():
                    finished.set()
                await anyio.sleep(0.005)

        async def listener() -> None:
            for i in range(150, 200):
                await a.append(new(i, f"K{rng.randrange(15)}"))
            appended.set()

        async def checker() -> None:
            while not finished.is_set():
                bad = await anyio.to_thread.run_sync(_head_violations, schema)
                if bad:
                    snapshots_bad.append(bad)
                await anyio.sleep(0.01)

        appended = anyio.Event()
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for n in range(2):
                    tg.start_soon(worker, a, f"a{n}")
                    tg.start_soon(worker, b, f"b{n}")
                tg.start_soon(operator)
                tg.start_soon(listener)
                tg.start_soon(checker)

        assert snapshots_bad == []
        assert _head_violations(schema) == []
        for key, ids in completed.items():
            assert ids == sorted(ids), key
        stats = await a.stats()
        assert stats.by_state["done"] + stats.by_state["dropped"] == 200
        assert stats.by_state["done"] == sum(len(ids) for ids in completed.values())


_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 4)),
    st.tuples(st.just("conflict"), st.integers(0, 50)),
    st.tuples(st.just("claim"), st.integers(1, 4)),
    st.tuples(st.sampled_from(["complete", "dead_letter", "release", "retry_past", "retry_future",
                               "requeue", "drop"]), st.integers(0, 50)),
), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
async def test_claims_follow_the_head_model(ops: list[tuple[str, int]]) -> None:
    """For any sequence of appends, claims and state changes, claim() returns exactly what a plain
    model says: per key only the earliest queued/claimed/dead envelope, if queued and due and its key
    holds no claim, oldest first, up to the limit; and the stored heads match that model throughout."""
    schema = f"test_pg_{uuid.uuid4().hex[:12]}"
    now = utcnow()
    try:
        async with node(schema, group_commit=False) as store:
            model: dict[int, dict[str, Any]] = {}   # id -> {"key", "state", "due"}

            def blocking(env: dict[str, Any]) -> bool:
                return env["state"] in ("queued", "claimed", "dead")

            def expected_claim(limit: int) -> list[int]:
                heads: dict[str, int] = {}
                for id_, env in sorted(model.items()):
                    if blocking(env):
                        heads.setdefault(env["key"], id_)
                held = {env["key"] for env in model.values() if env["state"] == "claimed"}
                ready = [i for k, i in heads.items()
                         if model[i]["state"] == "queued" and model[i]["due"] and k not in held]
                return sorted(ready)[:limit]

            for n, (op, arg) in enumerate(ops):
                if op == "append":
                    env = (await store.append(new(n, f"K{arg}"))).envelope
                    model[env.id] = {"key": env.ordering_key, "state": "queued", "due": True}
                elif op == "claim":
                    want = expected_claim(arg)
                    got = [e.id for e in await store.claim("w", limit=arg, lease=LEASE, now=now)]
                    assert got == want, (ops[:n + 1], got, want)
                    for id_ in got:
                        model[id_]["state"] = "claimed"
                else:
                    wanted = {"requeue": ("dead", "quarantined"), "conflict": ("queued", "done"),
                              "drop": ("queued", "dead")}.get(op, ("claimed",))
                    candidates = sorted(i for i, e in model.items() if e["state"] in wanted)
                    if not candidates:
                        continue
                    id_ = candidates[arg % len(candidates)]
                    if op == "conflict":   # the same dedup key with other content: quarantined
                        first = await store.get(id_)
                        assert first is not None
                        resent = NewEnvelope(source=Source.MLLP, kind="ADT^A08",
                                             ordering_key=first.ordering_key, dedup_key=first.dedup_key,
                                             payload=f"other {n}".encode())
                        result = await store.append(resent)
                        assert result.outcome is AppendOutcome.CONFLICT
                        model[result.envelope.id] = {"key": first.ordering_key, "state": "quarantined",
                                                     "due": True}
                    elif op == "complete":
                        assert await store.complete(id_, "w")
                        model[id_]["state"] = "done"
                    elif op == "dead_letter":
                        assert await store.dead_letter(id_, "w", "permanent")
                        model[id_]["state"] = "dead"
                    elif op == "release":
                        assert await store.release(id_, "w")
                        model[id_]["state"] = "queued"
                    elif op.startswith("retry"):
                        future = op == "retry_future"
                        at = now + timedelta(hours=1) if future else now - timedelta(seconds=1)
                        assert await store.retry_at(id_, "w", at, "transient")
                        model[id_].update(state="queued", due=not future)
                    elif op == "requeue":
                        assert await store.requeue(id_)
                        model[id_].update(state="queued", due=True)
                    else:
                        assert await store.drop(id_, "operator")
                        model[id_]["state"] = "dropped"
            assert _head_violations(schema) == []
    finally:
        _drop(schema)


async def test_claim_skips_rows_locked_by_another_node(schema: str) -> None:
    """A row locked by another transaction is skipped at once (SKIP LOCKED), and so is the rest of its
    key: the claim neither waits nor hands out a later envelope of that key."""
    async with node(schema) as store:
        results = await store.append_many([new(0, "A"), new(1, "A"), new(2, "B")])
        head_a = results[0].envelope.id
        with psycopg.connect(DSN) as other:
            other.execute(sql.SQL("SELECT 1 FROM {}.envelopes WHERE id = %s FOR UPDATE")
                          .format(sql.Identifier(schema)), (head_a,))
            with anyio.fail_after(5):
                got = await store.claim("w", limit=10, lease=LEASE)
            assert [e.ordering_key for e in got] == ["patient:B"]
            other.rollback()
        got = await store.claim("w", limit=10, lease=LEASE)
        assert [e.id for e in got] == [head_a]


async def test_a_dead_nodes_claims_are_taken_over(schema: str) -> None:
    """When a node dies, its leases expire and the other node claims the same envelopes (audited as
    lease_expired, attempts unchanged); the dead node, if it comes back, has lost them."""
    async with node(schema) as survivor:
        await survivor.append_many([new(i, f"K{i}") for i in range(10)])
        now = utcnow()
        async with node(schema) as doomed:
            taken = await doomed.claim("doomed", limit=10, lease=LEASE, now=now)
            assert len(taken) == 10
            assert await survivor.claim("survivor", limit=10, lease=LEASE, now=now) == []
            # the doomed node stops here: nothing completed, its pool closed

        later = now + LEASE + timedelta(seconds=1)
        retaken = await survivor.claim("survivor", limit=10, lease=LEASE, now=later)
        assert sorted(e.id for e in retaken) == sorted(e.id for e in taken)
        assert all(e.lease_owner == "survivor" and e.attempts == 0 for e in retaken)
        assert [h.event for h in await survivor.history(retaken[0].id)] == [
            "stored", "claimed", "lease_expired", "claimed"]

        async with node(schema) as back:
            assert not await back.complete(taken[0].id, "doomed")
        assert await survivor.complete(taken[0].id, "survivor")


_CHILD = """
import asyncio, sys
from datetime import timedelta
from adapter.envelope import NewEnvelope, Source
from adapter.store.postgres import PostgresStore

async def main(dsn, schema):
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    held = await store.claim("child", limit=5, lease=timedelta(seconds=30))
    print("held", *[e.id for e in held], flush=True)
    for i in range(10_000):   # appends until killed; each line is an acknowledgement
        new = NewEnvelope(Source.MLLP, "ADT^A08", f"patient:C{i % 9}", f"child:{i}", b"MSH|c")
        print("acked", (await store.append(new)).envelope.id, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_killed_node_loses_no_acknowledged_append_and_its_claims_expire(schema: str) -> None:
    """SIGKILL a node process while it holds claims and appends: every append it acknowledged is
    stored, nothing half-written is visible, and its claims are taken over once the lease expires."""
    async with node(schema) as survivor:
        await survivor.append_many([new(i, f"K{i}") for i in range(5)])
        root = str(ROOT)
        acked: list[int] = []
        async with await anyio.open_process([sys.executable, "-c", _CHILD, DSN, schema],
                                            env={**os.environ, "PYTHONPATH": root}, cwd=root) as child:
            assert child.stdout is not None
            buffer = b""
            with anyio.fail_after(30):
                while len(acked) < 25:   # let it run a while, then kill it mid-stream
                    buffer += await child.stdout.receive()
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        word, *ids = line.decode().split() or [""]
                        if word == "held":
                            held = [int(i) for i in ids]
                        elif word == "acked":   # other lines are the child's logs
                            acked.append(int(ids[0]))
            child.send_signal(signal.SIGKILL)
            await child.wait()

        assert len(held) == 5
        for envelope_id in acked:
            got = await survivor.get(envelope_id)
            assert got is not None and got.state is State.QUEUED
        later = utcnow() + timedelta(seconds=31)
        retaken = await survivor.claim("survivor", limit=5, lease=LEASE, now=later)
        assert [e.id for e in retaken][:5] == held
        assert _head_violations(schema) == []


async def test_concurrent_appends_of_one_dedup_key_store_it_once(schema: str) -> None:
    """Two nodes appending the same dedup keys at the same moment: exactly one STORED per key, the other
    a DUPLICATE of it (same content) or a CONFLICT stored QUARANTINED (other content)."""
    async with node(schema) as a, node(schema) as b:
        outcomes: dict[int, list[Any]] = defaultdict(list)

        async def send(store: PostgresStore, i: int, payload: bytes) -> None:
            outcomes[i].append(await store.append(new(i, f"K{i}", payload)))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    other = b"same" if i % 2 == 0 else b"other"
                    tg.start_soon(send, a, i, b"same")
                    tg.start_soon(send, b, i, other)

        for i, pair in outcomes.items():
            kinds = sorted(r.outcome for r in pair)
            stored = next(r.envelope for r in pair if r.outcome is AppendOutcome.STORED)
            if i % 2 == 0:
                assert kinds == [AppendOutcome.DUPLICATE, AppendOutcome.STORED]
                assert {r.envelope.id for r in pair} == {stored.id}
            else:
                assert kinds == [AppendOutcome.CONFLICT, AppendOutcome.STORED]
                conflict = next(r.envelope for r in pair if r.outcome is AppendOutcome.CONFLICT)
                assert conflict.state is State.QUARANTINED and conflict.id != stored.id
        stats = await a.stats()
        assert {k: v for k, v in stats.by_state.items() if v} == {"queued": 60, "quarantined": 30}


async def test_unique_index_stops_a_second_claim_of_one_key(schema: str) -> None:
    """If a claim's snapshot misses another node's claim on the same key, the partial unique index
    refuses it and the claim goes on without that key ("someone else got it")."""
    async with node(schema) as store:
        results = await store.append_many([new(0, "A"), new(1, "A"), new(2, "B")])
        first_a, second_a, only_b = (r.envelope.id for r in results)
        table = sql.Identifier(schema, "envelopes")
        async with await psycopg.AsyncConnection.connect(DSN) as intruder:
            # An uncommitted claim of A's *second* envelope: invisible to the store's snapshot.
            await intruder.execute(sql.SQL("UPDATE {} SET state = 'claimed', lease_owner = 'intruder', "
                                           "lease_until = now() + interval '1 hour' WHERE id = %s")
                                   .format(table), (second_a,))
            async with anyio.create_task_group() as tg:
                got: list[Any] = []

                async def claim() -> None:
                    got.extend(await store.claim("w", limit=10, lease=LEASE))

                tg.start_soon(claim)
                await _until_blocked_by(intruder.info.backend_pid)
                await intruder.commit()
        assert [e.id for e in got] == [only_b]
        assert first_a not in [e.id for e in got]
        held = await store.list(states=[State.CLAIMED])
        assert {e.id for e in held} == {second_a, only_b}


async def _until_blocked_by(pid: int, deadline: float = 10.0) -> None:
    """Poll PostgreSQL (an external condition, with a deadline) until a session waits on `pid`."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
    with anyio.fail_after(deadline):
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as watch:
            while True:
                row = await (await watch.execute(query, (pid,))).fetchone()
                if row and row[0]:
                    return
                await anyio.sleep(0.01)


async def test_audit_is_append_only(schema: str) -> None:
    """The schema refuses to change or delete audit rows, whoever asks."""
    async with node(schema) as store:
        stored = (await store.append(new(0, "A"))).envelope
        with psycopg.connect(DSN) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql.SQL("UPDATE {} SET event = 'x'").format(sql.Identifier(schema, "audit")))
            conn.rollback()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "audit")))
        assert [h.event for h in await store.history(stored.id)] == ["stored"]


async def test_concurrent_appends_share_commits_and_a_bad_one_fails_alone(schema: str) -> None:
    """Appends arriving together are committed in shared transactions (group commit); an envelope
    PostgreSQL cannot store (a NUL in a text field) fails its own append only, with a StoreError."""
    async with node(schema) as store:
        outcomes: dict[int, Any] = {}

        async def send(i: int) -> None:
            envelope = new(i, f"K{i % 7}")
            if i == 13:
                envelope = NewEnvelope(source=Source.MLLP, kind="ADT\x00A08", ordering_key="patient:K13",
                                       dedup_key="mllp:FAC|BAD", payload=b"MSH|bad")
            try:
                outcomes[i] = (await store.append(envelope)).outcome
            except StoreError as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(send, i)

        commits, appends = store.group_commits
        assert isinstance(outcomes.pop(13), StoreError)
        assert set(outcomes.values()) == {AppendOutcome.STORED}
        assert appends >= 40 and commits < 40
        assert len(await store.list(limit=100)) == 39


async def test_missing_database_and_bad_schema_name_say_what_to_do(schema: str) -> None:
    """A database that does not exist and a schema name that is not an identifier are named, with the fix."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:5432/no_such_db_here", schema=schema)
    with pytest.raises(StoreError, match=r"database 'no_such_db_here' does not exist.*createdb"):
        await store.open()
    with pytest.raises(ConfigError, match=r"store\.schema"):
        PostgresStore(DSN, schema="bad-name; DROP")


async def test_unreachable_postgres_says_where_and_what_to_do(schema: str) -> None:
    """Opening a store whose PostgreSQL does not answer raises StoreError naming host:port and store.url."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", schema=schema, connect_timeout=2)
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1/test .*store\.url"):
        await store.open()
    assert not await store.ping()
