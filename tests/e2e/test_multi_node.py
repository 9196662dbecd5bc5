"""Several adapters, one PostgreSQL: three `oncall-adapter serve` processes share one store schema, each
with its own MLLP port, all delivering to one `oncall-adapter sandbox`. 10,000 messages for 500 patients
are spread over the three connections; one process is SIGKILLed midway (seeded: which one, when) while
it holds claims; the others take its claims over once the lease runs out, and the sender resends what
the dead node had not acknowledged to the survivors (as a TCP load balancer would).

At the end: every message stored once and completed once, the dead node's claims taken over, no
envelope of a patient claimed before the previous one was completed, and OnCall received each
patient's writes in the order sent (a write trace inside the sandbox), ending with the last value.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.delivery_harness import Adapter, sandbox_process, wait_until
from tests.e2e.multi_node_harness import (
    PG_DSN,
    Feeder,
    StoreView,
    contact_writes,
    install_write_trace,
    message_id,
    node_env,
    patient_messages,
    pg_schema,
    phone_of,
)

pytestmark = pytest.mark.slow

SEED = 20261126
NODES = 3
PATIENTS = 500
PER_PATIENT = 20              # an A04 then 19 A08s: 10,000 messages
LEASE_SECONDS = 5             # how long the dead node's claims wait before the others take them
DRAIN_DEADLINE = 240.0


def _start_nodes(tmp: Path, schema: str, sandbox_url: str, nodes: list[Adapter]) -> None:
    """Start NODES serve processes on one schema, appending each to `nodes` (stopped by the caller)."""
    for index in range(NODES):
        home = tmp / f"node{index}"
        home.mkdir()
        env, mllp = node_env(home, store_url=PG_DSN, schema=schema, sandbox_url=sandbox_url, extra={
            "ONCALL_ADAPTER_STORE__LEASE_SECONDS": str(LEASE_SECONDS)})
        node = Adapter(home, ["serve"], env, mllp, sandbox_url)
        nodes.append(node)
        node.start()


def _rounds(rng: random.Random, streams: dict[int, list[bytes]], live: list[int], seq: int
            ) -> dict[int, list[bytes]]:
    """Message `seq` of every patient, in a seeded order, each to a seeded node among the live ones.
    A patient's next message is sent only once this one is acknowledged (the next round), so its
    messages reach different nodes yet are stored in the order sent."""
    batches: dict[int, list[bytes]] = {node: [] for node in live}
    order = list(streams)
    rng.shuffle(order)
    for patient in order:
        batches[rng.choice(live)].append(streams[patient][seq])
    return batches


def _completions(view: StoreView) -> dict[str, dict[str, Any]]:
    """Per message control id: envelope id, key, and from the audit the claims, completions, takeovers."""
    rows = view.rows("""
        SELECT e.meta->>'control_id', e.id, e.ordering_key, e.state,
               count(*) FILTER (WHERE a.event = 'claimed'),
               count(*) FILTER (WHERE a.event = 'completed'),
               count(*) FILTER (WHERE a.event = 'op_applied'),
               count(*) FILTER (WHERE a.event = 'duplicate'),
               min(a.id) FILTER (WHERE a.event = 'claimed'),
               max(a.id) FILTER (WHERE a.event = 'completed'),
               max(a.at) FILTER (WHERE a.event = 'completed'),
               array_agg(a.detail->>'previous_owner') FILTER (WHERE a.event = 'lease_expired')
        FROM envelopes e JOIN audit a ON a.envelope_id = e.id
        GROUP BY e.id""")
    return {r[0]: {"id": r[1], "key": r[2], "state": r[3], "claims": r[4], "completed": r[5],
                   "applied": r[6], "duplicates": r[7], "first_claim_row": r[8], "done_row": r[9],
                   "done_at": r[10], "expired_from": r[11] or []} for r in rows}


def test_three_nodes_on_one_postgres_survive_a_sigkill_in_order_and_exactly_once(tmp_path: Path) -> None:
    """Three serve processes on one PostgreSQL, 10,000 messages for 500 patients spread over their MLLP
    ports, one process SIGKILLed midway while holding claims: every message is stored and completed
    exactly once, the dead node's claims are taken over after the lease, each patient's envelopes are
    claimed only after the previous one completed, and OnCall received one create per patient and each
    patient's phone changes in the order sent (re-writes only for envelopes the dead node held), so
    every contact ends with its last message's value."""
    rng = random.Random(SEED)
    victim = rng.randrange(NODES)
    kill_round = rng.randint(PER_PATIENT // 2 - 2, PER_PATIENT // 2 + 1)
    kill_after = rng.randint(20, 100)     # the victim's ACKs in that round before it is killed
    streams = {p: patient_messages(p, PER_PATIENT) for p in range(PATIENTS)}
    total = PATIENTS * PER_PATIENT
    with pg_schema() as schema, sandbox_process(tmp_path) as sandbox_url:
        install_write_trace(tmp_path / "sandbox.db")
        nodes: list[Adapter] = []
        view = StoreView(schema)
        feeder: Feeder | None = None
        killed: dict[str, Any] = {}

        def kill_midway(node: int, acked: int) -> None:
            if node != victim or acked != kill_after or killed:
                return
            proc = nodes[victim].proc
            assert proc is not None
            # Kill while it holds claims, so there is something to take over.
            wait_until(lambda: view.claimed_by(proc.pid), deadline=30, what="the victim to hold claims",
                       interval=0.02)
            killed.update(pid=proc.pid, held=view.claimed_by(proc.pid))
            nodes[victim].kill()

        try:
            _start_nodes(tmp_path, schema, sandbox_url, nodes)
            feeder = Feeder({i: node.mllp_port for i, node in enumerate(nodes)})
            started = time.monotonic()
            resent = 0
            for seq in range(PER_PATIENT):
                live = sorted(feeder.conns)
                lost = feeder.send(_rounds(rng, streams, live, seq),
                                   on_ack=kill_midway if seq == kill_round else None)
                while lost:   # the dead node's unacknowledged messages go to the survivors, in order
                    pending = [m for batch in lost.values() for m in batch]
                    resent += len(pending)
                    live = sorted(feeder.conns)
                    lost = feeder.send({live[0]: pending})
            ingested = time.monotonic() - started
            assert killed and victim not in feeder.conns

            def drained() -> bool:
                return view.by_state() == {"done": total}

            wait_until(drained, deadline=DRAIN_DEADLINE, what=f"all {total} envelopes done", interval=0.5)
            elapsed = time.monotonic() - started
            print(f"\nmulti-node: ingested {total} in {ingested:.1f} s ({total / ingested:.0f} msg/s), "
                  f"all done after {elapsed:.1f} s ({total / elapsed:.0f} env/s); node {victim} killed in "
                  f"round {kill_round} holding {killed['held']} claims; {resent} messages resent")

            taken_over = _assert_store_exactly_once_in_order(view, killed_pid=killed["pid"], resent=resent)
            rewrites = _assert_oncall_writes_in_order(nodes[(victim + 1) % NODES].state(),
                                                      contact_writes(tmp_path / "sandbox.db"), taken_over)
            print(f"multi-node: {len(taken_over)} envelopes taken over, {rewrites} writes repeated by them")
        finally:
            if feeder is not None:
                feeder.close()
            view.close()
            for node in nodes:
                node.stop()


def _assert_store_exactly_once_in_order(view: StoreView, *, killed_pid: int, resent: int) -> set[str]:
    """Every message stored and completed once; more than one claim or application only where the dead
    node's lease ran out; per patient, stored in send order and each envelope claimed only after the
    previous one completed. Returns the control ids taken over from the dead node."""
    seen = _completions(view)
    assert len(seen) == PATIENTS * PER_PATIENT
    assert all(e["state"] == "done" and e["completed"] == 1 for e in seen.values())
    victim_owner = f":{killed_pid}:"
    taken_over = {cid for cid, e in seen.items()
                  if any(victim_owner in (owner or "") for owner in e["expired_from"])}
    assert taken_over, "the dead node held claims: some must have been taken over after the lease"
    for cid, e in seen.items():
        if e["claims"] > 1 or e["applied"] > 1:
            assert cid in taken_over, (cid, e)
    assert sum(e["duplicates"] for e in seen.values()) <= resent
    for patient in range(PATIENTS):
        chain = [seen[message_id(patient, seq)] for seq in range(PER_PATIENT)]
        assert len({e["key"] for e in chain}) == 1
        for before, after in itertools.pairwise(chain):
            assert before["id"] < after["id"], f"patient {patient}: stored out of send order"
            # Audit row ids, not timestamps: a node takes its clock before waiting for a connection, so a
            # claim's `at` may precede the completion it waited for; ids are drawn inside the statements.
            assert before["done_row"] < after["first_claim_row"], \
                f"patient {patient}: envelope {after['id']} claimed before {before['id']} completed"
            assert before["done_at"] < after["done_at"], f"patient {patient}: completed out of send order"
    return taken_over


def _assert_oncall_writes_in_order(state: dict[str, Any], trace: dict[int, list[tuple[str, str | None]]],
                                   taken_over: set[str]) -> int:
    """One contact per patient, created once; its phone writes, repeats collapsed, are exactly the values
    of the patient's messages in send order; repeats only for envelopes taken over. Returns the repeats."""
    by_emr = {c["custom_field_values"].get("2"): c for c in state["contacts"]}
    assert len(state["contacts"]) == PATIENTS == len(by_emr)
    rewrites = 0
    for patient in range(PATIENTS):
        contact = by_emr[f"MRN7{patient:05d}"]
        assert contact["phone"] == phone_of(patient, PER_PATIENT - 1)
        writes = trace[contact["id"]]
        assert [op for op, _ in writes].count("insert") == 1 and writes[0][0] == "insert"
        phones = [phone for _, phone in writes]
        collapsed = [p for i, p in enumerate(phones) if i == 0 or p != phones[i - 1]]
        assert collapsed == [phone_of(patient, s) for s in range(PER_PATIENT)], (patient, phones)
        repeats = len(phones) - len(collapsed)
        assert repeats <= sum(message_id(patient, s) in taken_over for s in range(PER_PATIENT)), \
            (patient, phones)
        rewrites += repeats
    return rewrites
