"""The worker pool against the real sandbox and both stores: order per patient, parallel across patients,
retries with backoff through injected faults, dead letters that block their patient, graceful stop.

The mapping step is given operations as JSON (`JsonOps`) so these tests exercise claiming and delivery
alone; the shipped HL7 v2 mappings run in the end-to-end tests."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import anyio
import pytest

from adapter.envelope import NewEnvelope, Source, State, utcnow
from adapter.errors import MappingError
from adapter.mapping.engine import MappingResult
from adapter.mapping.operations import operation_from_dict
from adapter.oncall.client import OnCallClient
from adapter.retry import RetryPolicy
from adapter.store.base import Store
from adapter.worker.pool import WorkerPool
from tests.integration.worker_fixtures import Sandbox, client, sandbox, wait_for

__all__ = ["client", "sandbox"]

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(base=0.01, cap=0.05, max_attempts=50, jitter=0.5)


class JsonOps:
    """A mapping set whose payloads are the operations themselves, as JSON."""

    version = "json-ops-v1"

    def map(self, kind: str, payload: bytes | str, *, source: str) -> MappingResult:
        data = json.loads(payload)
        if "fail" in data:
            raise MappingError(data["fail"], route="TEST", target="first_name", source="PID-5-2")
        return MappingResult("TEST", [operation_from_dict(op) for op in data["ops"]], self.version)


def _contact_op(pid: str, phone: str) -> dict[str, Any]:
    return {"kind": "contact_upsert", "emr_patient_id": pid, "first_name": f"First{pid}", "last_name": "Test",
            "email": f"{pid.lower()}@example.org", "phone": phone}


async def _append(store: Store, pid: str, n: int, body: dict[str, Any]) -> int:
    new = NewEnvelope(Source.MLLP, "ADT^A08", f"patient:{pid}", f"test:{pid}:{n}", json.dumps(body).encode())
    return (await store.append(new)).envelope.id


def _pool(store: Store, client: OnCallClient, **kw: Any) -> WorkerPool:
    options: dict[str, Any] = {"workers": 4, "batch": 4, "poll_seconds": 0.05, "retry_policy": FAST,
                               "seed": 7, "lease": timedelta(seconds=30)}
    return WorkerPool(store, JsonOps, client, **{**options, **kw})


async def _settled(store: Store) -> bool:
    stats = await store.stats()
    return not stats.by_state.get(State.QUEUED.value) and not stats.by_state.get(State.CLAIMED.value)


async def test_order_per_patient_and_parallel_across(store: Store, client: OnCallClient,
                                                     sandbox: Sandbox) -> None:
    """Ten patients with five updates each, interleaved: every envelope completes with the mapping version,
    each patient has one contact, and its phone is the one of its LAST update (applied in order)."""
    rng = random.Random(3)
    pids = [f"P{i}" for i in range(10)]
    plan = [(pid, n) for n in range(5) for pid in pids]
    rng.shuffle(plan)   # interleave patients; order within a patient stays n = 0..4 below
    counters = {pid: 0 for pid in pids}
    for pid, _n in plan:
        n = counters[pid]
        counters[pid] += 1
        await _append(store, pid, n, {"ops": [_contact_op(pid, f"+1 416 555 01{n:02d}")]})
    pool = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _settled(store), deadline=60)
        pool.stop()
    done = await store.list(states=[State.DONE], limit=1000)
    assert len(done) == 50 and {e.mapping_version for e in done} == {"json-ops-v1"}
    contacts = (await sandbox.state())["contacts"]
    assert sorted(c["custom_field_values"]["2"] for c in contacts) == sorted(pids)
    assert {c["phone"] for c in contacts} == {"+1 416 555 0104"}


async def test_transient_faults_are_retried_to_the_same_state(store: Store, client: OnCallClient,
                                                              sandbox: Sandbox) -> None:
    """With 30% of OnCall calls answering 503 or 429 (seeded), every envelope still completes, retries are
    durable (attempts recorded) and the final state is one contact per patient with its last phone."""
    await sandbox.faults([{"path": "/contacts/*", "rate_503": 0.15, "rate_429": 0.15, "retry_after": 0}],
                         seed=11)
    for pid in ("A", "B", "C", "D"):
        for n in range(3):
            await _append(store, pid, n, {"ops": [_contact_op(pid, f"+1 416 555 02{n:02d}")]})
    pool = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _settled(store), deadline=60)
        pool.stop()
    done = await store.list(states=[State.DONE], limit=100)
    assert len(done) == 12
    histories = [await store.history(e.id) for e in done]
    assert any(entry.event == "retry_scheduled" for h in histories for entry in h)
    contacts = (await sandbox.state())["contacts"]
    assert sorted(c["custom_field_values"]["2"] for c in contacts) == ["A", "B", "C", "D"]
    assert {c["phone"] for c in contacts} == {"+1 416 555 0202"}


async def test_dead_letter_blocks_only_its_patient(store: Store, client: OnCallClient,
                                                   sandbox: Sandbox) -> None:
    """A permanent failure (OnCall 400) goes to the dead letter with OnCall's text and the operation that
    failed; the patient's later envelope waits behind it; other patients are applied."""
    bad = _contact_op("BAD", "x")
    bad["division"] = f"{sandbox.base_url}/divisions/999/"    # OnCall refuses an unknown division
    first = await _append(store, "BAD", 0, {"ops": [bad]})
    later = await _append(store, "BAD", 1, {"ops": [_contact_op("BAD", "+1 416 555 0300")]})
    other = await _append(store, "OK", 0, {"ops": [_contact_op("OK", "+1 416 555 0301")]})
    mapping = await _append(store, "MAP", 0, {"fail": "PID-5-2 is empty"})
    pool = _pool(store, client)

    async def blocked() -> bool:
        states = [(await store.get(i)).state for i in (first, other, mapping)]  # type: ignore[union-attr]
        return states == [State.DEAD, State.DONE, State.DEAD]

    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(blocked, deadline=30)
        pool.stop()
    dead = await store.get(first)
    assert dead is not None and dead.reason is not None
    assert dead.reason.startswith("operation 1 (contact_upsert) failed: PermanentError")
    assert "400" in dead.reason and "division" in dead.reason
    assert (await store.get(later)).state == State.QUEUED      # type: ignore[union-attr]
    assert "route TEST, field first_name, from PID-5-2" in (await store.get(mapping)).reason  # type: ignore
    assert (await store.stats()).blocked_keys == 2


async def test_cancel_releases_claims_and_restart_creates_once(store: Store, client: OnCallClient,
                                                               sandbox: Sandbox) -> None:
    """Cancelling the pool while a create is in flight releases the claim (QUEUED, attempts unchanged);
    a new pool then finishes it, and the patient still has exactly one contact."""
    await sandbox.faults([{"path": "/contacts/", "method": "POST", "latency_ms": 1500,
                           "latency_after_processing": True, "times": None}], seed=1)
    envelope_id = await _append(store, "SLOW", 0, {"ops": [_contact_op("SLOW", "+1 416 555 0400")]})
    pool = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _has_state(store, envelope_id, State.CLAIMED))
        await wait_for(lambda: _contact_count(sandbox, "SLOW", 1))   # the POST was applied, no answer yet
        tg.cancel_scope.cancel()
    released = await store.get(envelope_id)
    assert released is not None and released.state == State.QUEUED and released.attempts == 0
    await sandbox.clear_faults()
    again = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(again.run)
        await wait_for(lambda: _has_state(store, envelope_id, State.DONE))
        again.stop()
    assert await _contact_count(sandbox, "SLOW", 1)


async def test_prune_purges_old_payloads_keeps_crosswalk(store: Store, client: OnCallClient,
                                                         sandbox: Sandbox) -> None:
    """The pool's retention pass purges payloads of completed envelopes older than the retention; the
    crosswalk and the audit stay."""
    envelope_id = await _append(store, "OLD", 0, {"ops": [_contact_op("OLD", "+1 416 555 0500")]})
    pool = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _has_state(store, envelope_id, State.DONE))
        pool.stop()
    assert await pool.prune_once(now=utcnow()) == 0
    assert await pool.prune_once(now=utcnow() + timedelta(days=31)) == 1
    envelope = await store.get(envelope_id)
    assert envelope is not None and envelope.payload is None
    assert await store.xref_get("patient", "OLD") is not None
    assert any(e.event == "op_applied" for e in await store.history(envelope_id))


async def _has_state(store: Store, envelope_id: int, state: State) -> bool:
    envelope = await store.get(envelope_id)
    return envelope is not None and envelope.state == state


async def _contact_count(sandbox: Sandbox, pid: str, count: int) -> bool:
    contacts = (await sandbox.state())["contacts"]
    return len([c for c in contacts if pid.lower() in (c.get("email") or "")]) == count


async def test_leases_are_extended_during_slow_operations(store: Store, client: OnCallClient,
                                                          sandbox: Sandbox) -> None:
    """An operation slower than the lease (OnCall answering after 1.2 s, lease 0.3 s) keeps its claim:
    the lease is renewed, so no other claim takes the envelope and it completes on its first attempt."""
    await sandbox.faults([{"path": "/contacts/", "method": "POST", "latency_ms": 1200}], seed=1)
    envelope_id = await _append(store, "LONG", 0, {"ops": [_contact_op("LONG", "+1 416 555 0600")]})
    pool = _pool(store, client, lease=timedelta(seconds=0.3))
    rival = _pool(store, client, lease=timedelta(seconds=0.3), owner_id="rival")
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _has_state(store, envelope_id, State.CLAIMED))
        await tg.start(rival.run)   # would take the envelope over if the lease lapsed
        await wait_for(lambda: _has_state(store, envelope_id, State.DONE))
        pool.stop()
        rival.stop()
    envelope = await store.get(envelope_id)
    assert envelope is not None and envelope.attempts == 0 and envelope.lease_owner in (None, pool.owner_id)
    events = [e.event for e in await store.history(envelope_id)]
    assert events.count("claimed") == 1 and "lease_expired" not in events
    assert await _contact_count(sandbox, "LONG", 1)


async def test_oncall_envelopes_go_to_the_reverse_path(store: Store, client: OnCallClient,
                                                       sandbox: Sandbox) -> None:
    """Webhook envelopes are handed to the reverse path (its outcome completes them with its mapping
    version); without an EMR target they wait in the dead letter with a reason that says what to set."""

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def process(self, envelope: Any) -> Any:
            self.seen.append(envelope.id)
            return type("Outcome", (), {"mapping_version": "reverse-v1", "action": "delivered"})()

    body = b'{"event": "appointment_updated", "url": "https://api.oncallhealth.com/appointments/1"}'
    first = (await store.append(NewEnvelope(Source.ONCALL_WEBHOOK, "appointment_updated", "appointment:1",
                                            "webhook:1", body))).envelope.id
    recorder = Recorder()
    pool = _pool(store, client, reverse=recorder)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(lambda: _has_state(store, first, State.DONE))
        pool.stop()
    assert recorder.seen == [first] and (await store.get(first)).mapping_version == "reverse-v1"  # type: ignore
    second = (await store.append(NewEnvelope(Source.ONCALL_WEBHOOK, "appointment_updated", "appointment:2",
                                             "webhook:2", body))).envelope.id
    bare = _pool(store, client)
    async with anyio.create_task_group() as tg:
        await tg.start(bare.run)
        await wait_for(lambda: _has_state(store, second, State.DEAD))
        bare.stop()
    reason = (await store.get(second)).reason  # type: ignore[union-attr]
    assert "no EMR target is set" in reason and "[emr] target" in reason
