"""The Store contract (adapter/store/base.py), tested on every backend through the `store` fixture.

Nothing here knows which backend it runs on: SQLite- and PostgreSQL-only behaviour lives in
test_store_sqlite.py and test_store_postgres.py. Time moves through `claim(now=...)` and
`received_at`, never by sleeping.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from adapter.envelope import AppendOutcome, Envelope, NewEnvelope, Source, State, utcnow
from adapter.store.base import Store

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=30)
MakeStore = Callable[..., Awaitable[Store]]
_seq = itertools.count(1)


def new(key: str = "patient:1", payload: bytes | None = None, **kw: object) -> NewEnvelope:
    n = next(_seq)
    fields: dict[str, object] = {"source": Source.MLLP, "kind": "ADT^A08", "ordering_key": key,
                                 "dedup_key": f"mllp:FAC|MSG{n:06d}",
                                 "payload": payload if payload is not None else f"MSH|{n}".encode()}
    fields.update(kw)
    return NewEnvelope(**fields)  # type: ignore[arg-type]


async def claim_all(store: Store, owner: str = "w1", now: datetime | None = None) -> list[Envelope]:
    return await store.claim(owner, limit=100, lease=LEASE, now=now)


async def events(store: Store, envelope_id: int) -> list[str]:
    return [entry.event for entry in await store.history(envelope_id)]


# -- append and dedup ----------------------------------------------------------------------------
async def test_append_stores_exact_bytes_and_fields(store: Store) -> None:
    """An appended envelope comes back from get() with its payload byte for byte and its fields."""
    payload = b"MSH|^~\\&|EMR|FAC\rPID|1||MRN1\r\xe9\x00"
    received = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    result = await store.append(new("patient:MRN1", payload, received_at=received,
                                    meta={"charset": "8859/1"}))
    assert result.outcome is AppendOutcome.STORED
    got = await store.get(result.envelope.id)
    assert got is not None
    assert got.payload == payload
    assert got.content_hash == result.envelope.content_hash
    assert (got.state, got.attempts) == (State.QUEUED, 0)
    assert (got.ordering_key, got.kind) == ("patient:MRN1", "ADT^A08")
    assert got.received_at == received
    assert got.meta == {"charset": "8859/1"}
    assert await store.get(result.envelope.id + 1000) is None
    assert await events(store, got.id) == ["stored"]


async def test_duplicate_returns_first_and_queues_nothing(store: Store) -> None:
    """Same dedup key and same content: DUPLICATE, the first envelope comes back, only one is queued."""
    first = await store.append(new(dedup_key="mllp:FAC|DUP1", payload=b"same"))
    again = await store.append(new(dedup_key="mllp:FAC|DUP1", payload=b"same"))
    assert again.outcome is AppendOutcome.DUPLICATE
    assert again.envelope.id == first.envelope.id
    assert [e.id for e in await claim_all(store)] == [first.envelope.id]
    assert "duplicate" in await events(store, first.envelope.id)


async def test_conflict_is_quarantined_never_claimed(store: Store) -> None:
    """Same dedup key, other content: CONFLICT, stored QUARANTINED with a reason naming the first."""
    first = await store.append(new(dedup_key="mllp:FAC|C1", payload=b"one"))
    other = await store.append(new(dedup_key="mllp:FAC|C1", payload=b"two"))
    assert other.outcome is AppendOutcome.CONFLICT
    assert other.envelope.id != first.envelope.id
    assert other.envelope.state is State.QUARANTINED
    assert other.envelope.reason == (f"same dedup key mllp:FAC|C1 as envelope {first.envelope.id} "
                                     "with different content")
    stored = await store.get(other.envelope.id)
    assert stored is not None and stored.payload == b"two" and stored.state is State.QUARANTINED
    assert [e.id for e in await claim_all(store)] == [first.envelope.id]
    # The same conflicting content again is answered the same way, and nothing more is stored.
    again = await store.append(new(dedup_key="mllp:FAC|C1", payload=b"two"))
    assert (again.outcome, again.envelope.id) == (AppendOutcome.CONFLICT, other.envelope.id)


async def test_dedup_window_treats_old_key_as_new(make_store: MakeStore) -> None:
    """With a dedup window, a key whose first copy is older than the window is a new delivery."""
    store = await make_store(dedup_window=timedelta(days=1))
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    first = await store.append(new(dedup_key="mllp:FAC|1", payload=b"x", received_at=t0))
    within = await store.append(new(dedup_key="mllp:FAC|1", payload=b"x",
                                    received_at=t0 + timedelta(hours=23)))
    assert (within.outcome, within.envelope.id) == (AppendOutcome.DUPLICATE, first.envelope.id)
    later = await store.append(new(dedup_key="mllp:FAC|1", payload=b"x", received_at=t0 + timedelta(days=2)))
    assert later.outcome is AppendOutcome.STORED
    assert later.envelope.id != first.envelope.id
    assert later.envelope.dedup_key == "mllp:FAC|1"
    dup = await store.append(new(dedup_key="mllp:FAC|1", payload=b"x",
                                 received_at=t0 + timedelta(days=2, hours=1)))
    assert (dup.outcome, dup.envelope.id) == (AppendOutcome.DUPLICATE, later.envelope.id)


async def test_rejected_and_quarantined_new_envelopes_are_kept_not_claimed(store: Store) -> None:
    """A NewEnvelope refused at the edge is stored in its state with its reason and never claimed."""
    rejected = await store.append(new(state=State.REJECTED, reason="AR: unsupported message type ZZZ^Z01"))
    quarantined = await store.append(new(state=State.QUARANTINED, reason="sender defect"))
    assert rejected.outcome is AppendOutcome.STORED
    got = await store.get(rejected.envelope.id)
    assert got is not None and got.state is State.REJECTED
    assert got.reason == "AR: unsupported message type ZZZ^Z01"
    got = await store.get(quarantined.envelope.id)
    assert got is not None and got.state is State.QUARANTINED
    assert await claim_all(store) == []


async def test_append_many_commits_all(store: Store) -> None:
    """append_many stores several envelopes at once and reports each outcome in order."""
    a, b = new(), new()
    results = await store.append_many([a, b, a])
    assert [r.outcome.value for r in results] == ["stored", "stored", "duplicate"]
    assert results[2].envelope.id == results[0].envelope.id
    assert len(await claim_all(store)) == 1   # same ordering key: one at a time


async def test_list_filters_and_orders(store: Store) -> None:
    """list() filters by state and source and orders by arrival, newest first by default."""
    ids = [(await store.append(new(f"k{i}"))).envelope.id for i in range(3)]
    hook = await store.append(new("k9", source=Source.ONCALL_WEBHOOK, kind="appointment_updated"))
    rejected = await store.append(new("k8", state=State.REJECTED, reason="bad"))
    assert [e.id for e in await store.list()] == [rejected.envelope.id, hook.envelope.id, *reversed(ids)]
    assert [e.id for e in await store.list(newest_first=False, limit=2)] == ids[:2]
    assert [e.id for e in await store.list(states=[State.REJECTED])] == [rejected.envelope.id]
    assert [e.id for e in await store.list(source="oncall_webhook")] == [hook.envelope.id]


# -- claim and order -----------------------------------------------------------------------------
async def test_claim_one_per_key_in_order(store: Store) -> None:
    """Claims hand out the oldest envelope of each key, one per key; the next follows completion."""
    a1 = (await store.append(new("patient:A"))).envelope
    a2 = (await store.append(new("patient:A"))).envelope
    b1 = (await store.append(new("patient:B"))).envelope
    first = await claim_all(store)
    assert [e.id for e in first] == [a1.id, b1.id]
    assert all(e.state is State.CLAIMED and e.lease_owner == "w1" for e in first)
    assert await claim_all(store, "w2") == []
    assert await store.complete(a1.id, "w1", mapping_version="v1")
    assert [e.id for e in await claim_all(store, "w2")] == [a2.id]
    done = await store.get(a1.id)
    assert done is not None and done.state is State.DONE and done.mapping_version == "v1"


async def test_claim_limit_is_oldest_first(store: Store) -> None:
    """With more ready keys than the limit, the oldest envelopes are claimed first."""
    ids = [(await store.append(new(f"patient:{i}"))).envelope.id for i in range(5)]
    assert [e.id for e in await store.claim("w1", limit=2, lease=LEASE)] == ids[:2]
    assert [e.id for e in await store.claim("w2", limit=10, lease=LEASE)] == ids[2:]


async def test_concurrent_workers_never_hold_two_of_one_key(store: Store) -> None:
    """Four workers claiming concurrently apply each key's envelopes one at a time, in arrival order."""
    rng = random.Random(7)
    keys = [f"patient:{i}" for i in range(6)]
    expected: dict[str, list[int]] = {k: [] for k in keys}
    for _ in range(60):
        key = rng.choice(keys)
        expected[key].append((await store.append(new(key))).envelope.id)
    applied: dict[str, list[int]] = {k: [] for k in keys}
    held: set[str] = set()

    async def worker(name: str) -> None:
        idle = 0
        while idle < 3:
            batch = await store.claim(name, limit=3, lease=LEASE)
            idle = idle + 1 if not batch else 0
            for env in batch:
                assert env.ordering_key not in held, f"two claims of {env.ordering_key} at once"
                held.add(env.ordering_key)
            for env in batch:
                await anyio.lowlevel.checkpoint()
                applied[env.ordering_key].append(env.id)
                held.discard(env.ordering_key)
                assert await store.complete(env.id, name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(worker, f"w{i}")
    assert applied == expected


async def test_dead_letter_blocks_key_until_requeued(store: Store) -> None:
    """A dead letter holds back later envelopes of its key; requeue makes it claimable again first."""
    a1 = (await store.append(new("patient:A"))).envelope
    a2 = (await store.append(new("patient:A"))).envelope
    b1 = (await store.append(new("patient:B"))).envelope
    await claim_all(store)
    assert await store.dead_letter(a1.id, "w1", "422 from OnCall: email invalid")
    assert await store.complete(b1.id, "w1")
    assert await claim_all(store) == []
    dead = await store.get(a1.id)
    assert dead is not None and dead.state is State.DEAD and dead.reason == "422 from OnCall: email invalid"
    assert await store.requeue(a1.id, reason="fixed mapping")
    again = await claim_all(store)
    assert [e.id for e in again] == [a1.id]
    assert again[0].attempts == 0
    assert await store.complete(a1.id, "w1")
    assert [e.id for e in await claim_all(store)] == [a2.id]
    assert await events(store, a1.id) == ["stored", "claimed", "dead_lettered", "requeued", "claimed",
                                          "completed"]


async def test_drop_unblocks_key(store: Store) -> None:
    """Dropping a dead letter unblocks its key: the next envelope is claimable, the dropped one never."""
    a1 = (await store.append(new("patient:A"))).envelope
    a2 = (await store.append(new("patient:A"))).envelope
    await claim_all(store)
    assert await store.dead_letter(a1.id, "w1", "permanent")
    assert await store.drop(a1.id, "duplicate patient, merged by hand")
    assert [e.id for e in await claim_all(store)] == [a2.id]
    dropped = await store.get(a1.id)
    assert dropped is not None and dropped.state is State.DROPPED
    assert not await store.drop(a1.id, "again")
    assert not await store.requeue(a1.id)


async def test_requeued_quarantine_waits_for_claimed_envelope_of_its_key(store: Store) -> None:
    """A quarantined envelope requeued while a later one of its key is claimed is not claimed beside it."""
    first = (await store.append(new("patient:A", dedup_key="mllp:FAC|Q", payload=b"one"))).envelope
    assert await store.complete((await claim_all(store))[0].id, "w1")
    conflict = (await store.append(new("patient:A", dedup_key="mllp:FAC|Q", payload=b"two"))).envelope
    later = (await store.append(new("patient:A"))).envelope
    assert [e.id for e in await claim_all(store)] == [later.id]
    assert await store.requeue(conflict.id, reason="checked by hand: a real correction")
    assert await claim_all(store, "w2") == []
    assert await store.complete(later.id, "w1")
    assert [e.id for e in await claim_all(store, "w2")] == [conflict.id]
    assert first.id < conflict.id < later.id


async def test_retry_at_schedules_durably(store: Store) -> None:
    """retry_at: not claimable before `at` (nor is its key), claimable after, attempts incremented."""
    a1 = (await store.append(new("patient:A"))).envelope
    a2 = (await store.append(new("patient:A"))).envelope
    await claim_all(store)
    at = utcnow() + timedelta(minutes=5)
    assert await store.retry_at(a1.id, "w1", at, "503 from OnCall")
    waiting = await store.get(a1.id)
    assert waiting is not None and waiting.state is State.QUEUED and waiting.attempts == 1
    assert waiting.not_before == at
    assert await claim_all(store, now=at - timedelta(seconds=1)) == []
    later = await claim_all(store, now=at + timedelta(seconds=1))
    assert [e.id for e in later] == [a1.id]
    assert later[0].attempts == 1
    assert await store.retry_at(a1.id, "w1", at + timedelta(minutes=5), "503 again")
    assert (await store.get(a1.id)).attempts == 2  # type: ignore[union-attr]
    # While it waits or runs, its key's later envelope stays behind it.
    assert [e.id for e in await claim_all(store, now=at + timedelta(minutes=20))] == [a1.id]
    assert await store.complete(a1.id, "w1")
    assert [e.id for e in await claim_all(store, now=at + timedelta(minutes=20))] == [a2.id]
    history = await store.history(a1.id)
    retry = next(h for h in history if h.event == "retry_scheduled")
    assert retry.detail["reason"] == "503 from OnCall"


async def test_expired_lease_is_reclaimed(store: Store) -> None:
    """A claim whose lease ran out is claimable by another worker, attempts unchanged, on record."""
    env = (await store.append(new("patient:A"))).envelope
    [held] = await store.claim("w1", limit=1, lease=timedelta(seconds=10))
    assert await store.claim("w2", limit=1, lease=LEASE, now=utcnow()) == []
    [taken] = await store.claim("w2", limit=1, lease=LEASE, now=utcnow() + timedelta(seconds=11))
    assert taken.id == env.id and taken.lease_owner == "w2" and taken.attempts == 0
    assert "lease_expired" in await events(store, env.id)
    # The first worker lost its lease: every lease-holder operation answers False.
    assert not await store.complete(held.id, "w1")
    assert not await store.retry_at(held.id, "w1", utcnow(), "x")
    assert not await store.dead_letter(held.id, "w1", "x")
    assert not await store.release(held.id, "w1")
    assert not await store.extend_lease(held.id, "w1", LEASE)
    assert await store.complete(taken.id, "w2")


async def test_release_gives_claim_back(store: Store) -> None:
    """release() puts a claim back as QUEUED with attempts unchanged; it is claimable at once."""
    env = (await store.append(new("patient:A"))).envelope
    await claim_all(store)
    assert await store.release(env.id, "w1")
    got = await store.get(env.id)
    assert got is not None and got.state is State.QUEUED and got.attempts == 0 and got.lease_owner is None
    assert [e.id for e in await claim_all(store, "w2")] == [env.id]


async def test_extend_lease_keeps_claim(store: Store) -> None:
    """extend_lease pushes the lease forward for its owner only."""
    env = (await store.append(new("patient:A"))).envelope
    [held] = await store.claim("w1", limit=1, lease=timedelta(seconds=5))
    assert await store.extend_lease(env.id, "w1", timedelta(minutes=10))
    assert not await store.extend_lease(env.id, "w2", timedelta(minutes=10))
    assert await store.claim("w2", limit=1, lease=LEASE, now=utcnow() + timedelta(minutes=1)) == []
    got = await store.get(env.id)
    assert got is not None and held.lease_until is not None and got.lease_until is not None
    assert got.lease_until > held.lease_until


# -- crosswalk, audit, kv -------------------------------------------------------------------------
async def test_crosswalk(store: Store) -> None:
    """Crosswalk entries: put, get, overwrite, look up by target, list by prefix, delete."""
    first = await store.xref_put("patient", "MRN1", "https://x/contacts/1/", {"email_hash": "ab"})
    got = await store.xref_get("patient", "MRN1")
    assert got is not None and got.target == "https://x/contacts/1/" and got.detail == {"email_hash": "ab"}
    assert await store.xref_get("appointment", "MRN1") is None
    second = await store.xref_put("patient", "MRN1", "https://x/contacts/2/")
    got = await store.xref_get("patient", "MRN1")
    assert got is not None and got.target == "https://x/contacts/2/" and got.detail == {}
    assert second.written_at >= first.written_at
    await store.xref_put("patient", "MRN2", "https://x/contacts/2/")
    same_target = await store.xref_by_target("patient", "https://x/contacts/2/")
    assert [x.source_id for x in same_target] == ["MRN1", "MRN2"]
    for source_id in ("APPT9|MRN1", "APPT9|MRN2", "APPT90|MRN1", "APPT8|MRN1", "A_1", "AB1", "A%1"):
        await store.xref_put("participant", source_id, f"https://x/participants/{source_id}/")
    listed = await store.xref_list("participant", prefix="APPT9|")
    assert [x.source_id for x in listed] == ["APPT9|MRN1", "APPT9|MRN2"]
    assert [x.source_id for x in await store.xref_list("participant", prefix="A_")] == ["A_1"]
    assert [x.source_id for x in await store.xref_list("participant", prefix="A%")] == ["A%1"]
    assert len(await store.xref_list("participant")) == 7
    assert await store.xref_delete("patient", "MRN1")
    assert not await store.xref_delete("patient", "MRN1")
    assert await store.xref_get("patient", "MRN1") is None


async def test_audit_history_in_order(store: Store) -> None:
    """history() lists the audit rows of one envelope in the order written, callers' rows included."""
    env = (await store.append(new("patient:A"))).envelope
    await claim_all(store)
    await store.audit(env.id, "op_applied", {"op": "create_contact", "oncall_id": 42})
    assert await store.complete(env.id, "w1")
    history = await store.history(env.id)
    assert [h.event for h in history] == ["stored", "claimed", "op_applied", "completed"]
    assert history[2].detail == {"op": "create_contact", "oncall_id": 42}
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert all(h.envelope_id == env.id for h in history)


async def test_kv(store: Store) -> None:
    """kv keeps small durable values: absent is None, put overwrites."""
    assert await store.kv_get("contacts_cursor") is None
    await store.kv_put("contacts_cursor", "2026-01-01T00:00:00Z")
    await store.kv_put("contacts_cursor", "2026-02-01T00:00:00Z")
    assert await store.kv_get("contacts_cursor") == "2026-02-01T00:00:00Z"


# -- operations -----------------------------------------------------------------------------------
async def test_stats(store: Store) -> None:
    """stats() counts by state and by (source, kind, state), oldest waiting, retrying, blocked keys, size."""
    t0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    a1 = (await store.append(new("patient:A", received_at=t0))).envelope
    a2 = (await store.append(new("patient:A", received_at=t0 + timedelta(seconds=1)))).envelope
    b1 = (await store.append(new("patient:B", received_at=t0 + timedelta(seconds=2)))).envelope
    await store.append(new("patient:C", state=State.REJECTED, reason="AR"))
    await claim_all(store)
    assert await store.dead_letter(a1.id, "w1", "permanent")
    assert await store.retry_at(b1.id, "w1", utcnow() + timedelta(hours=1), "503")
    stats = await store.stats()
    counts = {k: v for k, v in stats.by_state.items() if v}
    assert counts == {"dead": 1, "queued": 2, "rejected": 1}
    assert stats.by_source_kind_state[("mllp", "ADT^A08", "queued")] == 2
    assert stats.oldest_waiting == a2.received_at
    assert stats.retrying == 1
    assert stats.blocked_keys == 1
    assert stats.size_bytes > 0


async def test_prune_purges_finished_payloads_only(store: Store) -> None:
    """prune() empties payloads of DONE/DROPPED/REJECTED envelopes older than the cut; rows stay."""
    done = (await store.append(new("k1"))).envelope
    dropped = (await store.append(new("k2"))).envelope
    rejected = (await store.append(new("k3", state=State.REJECTED, reason="AR"))).envelope
    queued = (await store.append(new("k4"))).envelope
    dead = (await store.append(new("k5"))).envelope
    await store.xref_put("patient", "MRN1", "https://x/contacts/1/")
    await claim_all(store)
    assert await store.complete(done.id, "w1")
    assert await store.dead_letter(dead.id, "w1", "permanent")
    assert await store.release(queued.id, "w1")
    assert await store.release(dropped.id, "w1")   # a live claim cannot be dropped
    assert await store.drop(dropped.id, "operator")
    assert await store.prune(older_than=utcnow() - timedelta(days=1)) == 0
    assert await store.prune(older_than=utcnow() + timedelta(seconds=1)) == 3
    for env in (done, dropped, rejected):
        got = await store.get(env.id)
        assert got is not None and got.payload is None and got.content_hash == env.content_hash
    for env in (queued, dead):
        got = await store.get(env.id)
        assert got is not None and got.payload == env.payload
    assert (await events(store, done.id))[-1] == "purged"
    assert await store.xref_get("patient", "MRN1") is not None
    assert await store.prune(older_than=utcnow() + timedelta(seconds=1)) == 0


async def test_concurrent_appends_stored_exactly_once(store: Store) -> None:
    """8 tasks appending 500 envelopes each at once (every fifth twice): each is stored exactly once."""
    results: list[tuple[NewEnvelope, AppendOutcome, int]] = []

    async def appender(task: int) -> None:
        for i in range(500):
            env = new(f"patient:{task}:{i % 7}", dedup_key=f"mllp:T{task}|{i}")
            outcome = await store.append(env)
            results.append((env, outcome.outcome, outcome.envelope.id))
            if i % 5 == 0:
                again = await store.append(env)
                assert (again.outcome, again.envelope.id) == (AppendOutcome.DUPLICATE, outcome.envelope.id)

    async with anyio.create_task_group() as tg:
        for task in range(8):
            tg.start_soon(appender, task)
    assert len(results) == 4000
    assert {o for _, o, _ in results} == {AppendOutcome.STORED}
    assert len({i for _, _, i in results}) == 4000
    stats = await store.stats()
    assert stats.by_state["queued"] == 4000
    stored = await store.list(limit=5000)
    assert {e.dedup_key for e in stored} == {n.dedup_key for n, _, _ in results}


async def test_ping(store: Store) -> None:
    """ping() is True on an open store."""
    assert await store.ping()
