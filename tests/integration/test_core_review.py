"""A review of the exactly-once, in-order core: each test pins one rule a finding broke (or a subtle
rule that held), against both stores, the real OnCall sandbox over HTTP and the real worker pool."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from datetime import timedelta, timezone
from typing import Any

import anyio
import pytest

from adapter.envelope import Envelope, NewEnvelope, Source, State, utcnow
from adapter.errors import OutcomeUnknownError, StoreError
from adapter.mapping.engine import MappingResult
from adapter.mapping.operations import (
    AppointmentCancel,
    AppointmentParticipant,
    AppointmentUpsert,
    Operation,
    ParticipantUpdate,
    PatientMerge,
    operation_from_dict,
)
from adapter.oncall.client import OnCallClient
from adapter.retry import RetryPolicy
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.executor import Executor, OperationFailed
from adapter.worker.pool import WorkerPool
from tests.integration.worker_fixtures import Sandbox, client, sandbox, wait_for

__all__ = ["client", "sandbox"]   # fixtures used by name below

pytestmark = pytest.mark.anyio

_counter = itertools.count(1)
FUTURE = dt.datetime(2031, 5, 6, 14, 0, tzinfo=dt.UTC)
LEASE = timedelta(seconds=30)


def _new(key: str = "patient:K", payload: bytes = b"MSH|x") -> NewEnvelope:
    return NewEnvelope(Source.MLLP, "ADT^A08", key, f"review:{next(_counter)}", payload)


async def _run(store: Store, executor: Executor, *ops: Operation) -> list[str]:
    envelope = (await store.append(_new())).envelope
    await executor.execute(envelope, MappingResult("TEST", list(ops), "v1"))
    return [e.detail["action"] for e in await store.history(envelope.id) if e.event == "op_applied"]


def _participant(pid: str, first: str) -> AppointmentParticipant:
    return AppointmentParticipant(emr_patient_id=pid, first_name=first, last_name="Test",
                                  email=f"{pid.lower()}@example.org")


def _appointment(sandbox: Sandbox, *participants: AppointmentParticipant) -> AppointmentUpsert:
    return AppointmentUpsert(emr_appointment_id="APPT1", title="Follow-up", type="online", datetime=FUTURE,
                             duration=30, division=f"{sandbox.base_url}/divisions/1/",
                             participants=list(participants) or [_participant("MRN1", "Ada")])


class FailingStore:
    """The real store, except that calls chosen by `fails(name, args)` raise StoreError (a database
    outage at one precise point)."""

    def __init__(self, inner: Store, fails: Any) -> None:
        self.inner = inner
        self.fails = fails

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.fails(name, args):
                raise StoreError(f"injected store failure in {name}")
            return await attr(*args, **kwargs)
        return call


# -- the store -----------------------------------------------------------------------------------

async def test_drop_refuses_a_live_claim(store: Store) -> None:
    """Dropping an envelope a worker is applying (live lease) is refused: it would let the key's next
    envelope be claimed while this one is still being sent. Once the lease has lapsed (the worker
    died) the drop goes through and unblocks the key."""
    first = (await store.append(_new())).envelope
    second = (await store.append(_new())).envelope
    [held] = await store.claim("w1", limit=5, lease=LEASE)
    assert held.id == first.id
    assert not await store.drop(first.id, "operator")
    assert await store.claim("w2", limit=5, lease=LEASE) == []
    assert await store.complete(first.id, "w1")
    # A claim whose lease has already lapsed (claimed a minute ago with a 1 s lease) may be dropped.
    a_minute_ago = utcnow() - timedelta(minutes=1)
    [taken] = await store.claim("w3", limit=5, lease=timedelta(seconds=1), now=a_minute_ago)
    assert taken.id == second.id
    assert await store.drop(second.id, "operator")
    got = await store.get(second.id)
    assert got is not None and got.state is State.DROPPED and got.lease_owner is None


async def test_both_stores_clear_retry_fields_when_finished(store: Store) -> None:
    """Both stores leave the same row after the same calls: a completed envelope keeps no retry reason
    or not_before (SQLite kept the last retry's reason), a dead letter no not_before."""
    env = (await store.append(_new())).envelope
    now = utcnow()
    await store.claim("w", limit=1, lease=LEASE, now=now)
    assert await store.retry_at(env.id, "w", now + timedelta(seconds=5), "TransientError: 503")
    await store.claim("w", limit=1, lease=LEASE, now=now + timedelta(seconds=6))
    assert await store.complete(env.id, "w", mapping_version="v1")
    done = await store.get(env.id)
    assert done is not None and (done.state, done.reason, done.not_before, done.attempts) == (
        State.DONE, None, None, 1)
    other = (await store.append(_new("patient:L"))).envelope
    await store.claim("w", limit=1, lease=LEASE, now=now)
    assert await store.retry_at(other.id, "w", now + timedelta(seconds=5), "TransientError: 503")
    await store.claim("w", limit=1, lease=LEASE, now=now + timedelta(seconds=6))
    assert await store.dead_letter(other.id, "w", "PermanentError: 400")
    dead = await store.get(other.id)
    assert dead is not None and (dead.state, dead.reason, dead.not_before) == (
        State.DEAD, "PermanentError: 400", None)


async def test_future_retry_blocks_its_key_in_any_time_zone(store: Store) -> None:
    """Rule: an envelope waiting for its retry time stays its key's head, so a later envelope of the key
    waits too; the retry time is compared as an instant whatever the time zone of `at` and `now`
    (SQLite compares UTC text)."""
    first = (await store.append(_new())).envelope
    later = (await store.append(_new())).envelope
    now = utcnow()
    await store.claim("w", limit=5, lease=LEASE, now=now)
    east = timezone(timedelta(hours=5))
    assert await store.retry_at(first.id, "w", (now + timedelta(hours=1)).astimezone(east), "503")
    assert await store.claim("w", limit=5, lease=LEASE, now=now) == []
    west = timezone(timedelta(hours=-8))
    early = (now + timedelta(minutes=59)).astimezone(west)
    assert await store.claim("w", limit=5, lease=LEASE, now=early) == []
    due = (now + timedelta(minutes=61)).astimezone(west)
    retaken = await store.claim("w", limit=5, lease=LEASE, now=due)
    assert [e.id for e in retaken] == [first.id]
    assert later.id not in [e.id for e in retaken]


# -- the worker pool -----------------------------------------------------------------------------

class JsonOps:
    """A mapping set whose payloads are the operations themselves, as JSON."""

    version = "json-ops-v1"

    def map(self, kind: str, payload: bytes | str, *, source: str) -> MappingResult:
        return MappingResult("TEST", [operation_from_dict(op) for op in json.loads(payload)["ops"]],
                             self.version)


def _contact_payload(pid: str) -> bytes:
    return json.dumps({"ops": [{"kind": "contact_upsert", "emr_patient_id": pid, "first_name": "Slow",
                                "last_name": "Test", "email": f"{pid.lower()}@example.org"}]}).encode()


async def test_a_lapsed_claim_of_the_same_pool_cannot_be_completed_by_its_first_holder(store: Store) -> None:
    """Every claim carries its own owner token: when a worker's lease lapses and a sibling worker of
    the same process claims the envelope again, the first worker's late complete is refused (with one
    owner per process it was accepted, and both applied the envelope)."""
    env = (await store.append(_new())).envelope
    pool = WorkerPool(store, JsonOps, None, lease=timedelta(seconds=0.2))
    [first] = await pool._claim()
    retaken: list[Envelope] = []

    async def reclaimed() -> bool:
        retaken.extend(await pool._claim())
        return bool(retaken)
    await wait_for(reclaimed, deadline=10, what="the lapsed claim taken again")
    assert retaken[0].id == first.id == env.id
    assert first.lease_owner != retaken[0].lease_owner
    assert str(first.lease_owner).startswith(pool.owner_id)
    assert not await store.complete(env.id, str(first.lease_owner))
    assert await store.complete(env.id, str(retaken[0].lease_owner))


async def test_work_stops_when_the_lease_cannot_be_confirmed(store: Store, client: OnCallClient,
                                                            sandbox: Sandbox) -> None:
    """A worker that cannot renew its lease (the store fails) stops applying the envelope before the
    lease lapses, since another process may take it over then: only the process that took over
    records the operation and completes it (before, both did: two op_applied rows)."""
    await sandbox.faults([{"path": "/contacts/", "method": "POST", "latency_ms": 1200}], seed=1)
    env = (await store.append(_new("patient:SLOW", _contact_payload("SLOW")))).envelope
    flaky = FailingStore(store, lambda name, _args: name == "extend_lease")
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=50)
    stuck = WorkerPool(flaky, JsonOps, client, workers=1, lease=timedelta(seconds=0.3), poll_seconds=0.05,
                       retry_policy=fast, owner_id="stuck")
    rival = WorkerPool(store, JsonOps, client, workers=1, lease=timedelta(seconds=30), poll_seconds=0.05,
                       retry_policy=fast, owner_id="rival")

    async def state_is(state: State) -> bool:
        got = await store.get(env.id)
        return got is not None and got.state is state
    async with anyio.create_task_group() as tg:
        await tg.start(stuck.run)
        await wait_for(lambda: state_is(State.CLAIMED))
        stuck.stop()
        await tg.start(rival.run)
        await wait_for(lambda: state_is(State.DONE))
        rival.stop()
    history = await store.history(env.id)
    assert [e.event for e in history].count("op_applied") == 1
    [completed] = [e for e in history if e.event == "completed"]
    assert str(completed.detail["owner"]).startswith("rival")


# -- the executor --------------------------------------------------------------------------------

async def test_merge_interrupted_by_a_store_error_moves_participants_on_rerun(
        store: Store, client: OnCallClient, sandbox: Sandbox) -> None:
    """A merge that fails half-way (store error) and runs again still moves every participant entry to
    the survivor: the reverse-index entry the re-run looks for is deleted last (it was deleted before
    the participant moved, so a re-run found nothing and the survivor's updates went nowhere)."""
    executor = Executor(store, client)
    await _run(store, executor, _appointment(sandbox, _participant("OLD", "Ada")))
    failing = FailingStore(store, lambda name, args: name == "xref_put" and args[0] == xref.PARTICIPANT)
    broken = Executor(failing, client)
    merge = PatientMerge(surviving_emr_patient_id="NEW", merged_emr_patient_id="OLD")
    with pytest.raises(OperationFailed):
        await _run(store, broken, merge)
    await _run(store, executor, merge)
    assert await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "OLD")) is None
    moved = await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "NEW"))
    participant_url = (await sandbox.state())["appointments"][0]["participants"][0]["url"]
    assert moved is not None and moved.target == participant_url
    assert await store.xref_get(xref.PATIENT_APPOINTMENT, xref.patient_appointment_key("NEW", "APPT1"))


async def test_uncancelled_appointment_forgets_the_old_participants(
        store: Store, client: OnCallClient, sandbox: Sandbox) -> None:
    """An appointment cancelled then revived by the EMR is created anew; a patient no longer on it must
    not have its updates sent to its participant on the cancelled appointment (the old entries
    stayed and `future_appointments` still listed the revived appointment for that patient)."""
    executor = Executor(store, client)
    both = _appointment(sandbox, _participant("MRN1", "Ada"), _participant("MRN2", "Bob"))
    await _run(store, executor, both)
    await _run(store, executor, AppointmentCancel(emr_appointment_id="APPT1"))
    assert await _run(store, executor, _appointment(sandbox, _participant("MRN1", "Ada"))) == ["recreated"]
    update = ParticipantUpdate(scope="future_appointments", emr_patient_id="MRN2", first_name="Robert")
    assert await _run(store, executor, update) == ["nothing_to_update"]
    appointments = sorted((await sandbox.state())["appointments"], key=lambda a: a["url"])
    old_bob = [p for p in appointments[0]["participants"] if p["email"] == "mrn2@example.org"]
    assert [p["first_name"] for p in old_bob] == ["Bob"]
    assert await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "MRN2")) is None
    ada = await store.xref_get(xref.PARTICIPANT, xref.participant_key("APPT1", "MRN1"))
    assert ada is not None and ada.target == appointments[1]["participants"][0]["url"]


async def test_cancel_after_a_lost_create_cancels_what_it_made(
        store: Store, client: OnCallClient, sandbox: Sandbox) -> None:
    """A cancel meeting a create whose outcome is unknown (intent row, no crosswalk entry) looks for the
    appointment by its EMR id and cancels it; before, it answered nothing_to_cancel and the
    appointment stayed live in OnCall, e-mails and all."""
    executor = Executor(store, client)
    await sandbox.faults([{"path": "/appointments/", "method": "POST", "drop_rate": 1.0,
                           "drop_after_processing": True, "times": 1}], seed=1)
    with pytest.raises(OperationFailed) as failed:
        await _run(store, executor, _appointment(sandbox))
    assert isinstance(failed.value.error, OutcomeUnknownError)
    assert await _run(store, executor, AppointmentCancel(emr_appointment_id="APPT1")) == [
        "cancelled_after_unknown_outcome"]
    [appointment] = (await sandbox.state())["appointments"]
    assert appointment["cancelled"] is True
    known = await store.xref_get(xref.APPOINTMENT, "APPT1")
    assert known is not None and known.detail["cancelled"] and known.target == appointment["url"]
    assert await _run(store, executor, AppointmentCancel(emr_appointment_id="APPT1")) == ["unchanged"]
