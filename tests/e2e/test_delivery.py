"""End to end: `oncall-adapter serve --sandbox` as a subprocess, every HL7 v2 sample replayed over MLLP with
`oncall-adapter replay`, the sandbox's state asserted field by field against what the samples' operations
must produce; replaying everything again changes nothing. The same with seeded faults on the OnCall side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_harness import (
    SAMPLES,
    Adapter,
    adapter_env,
    expected_state,
    free_port,
    observed_state,
    sample_messages,
    wait_until,
)

pytestmark = pytest.mark.slow

SETTLE_DEADLINE = 120.0


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[Adapter]:
    mllp, http, sandbox = free_port(), free_port(), free_port()
    env = adapter_env(tmp_path, mllp_port=mllp, http_port=http, extra={
        "ONCALL_ADAPTER_SANDBOX__PORT": str(sandbox),
        "ONCALL_ADAPTER_SANDBOX__DB": str(tmp_path / "sandbox.db")})
    running = Adapter(tmp_path, ["serve", "--sandbox"], env, mllp, f"http://127.0.0.1:{sandbox}")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _replay_and_settle(adapter: Adapter, count: int) -> dict:
    done = adapter.run("replay", str(SAMPLES), "--mllp", f"127.0.0.1:{adapter.mllp_port}")
    # Every message accepted: AA, or CA for the samples that ask for enhanced acknowledgments.
    assert done.stdout.startswith(f"sent {count} of {count} message(s): "), done.stdout
    assert set(done.stdout.split(":", 1)[1].split()[::2]) <= {"AA", "CA"}, done.stdout
    return wait_until(adapter.settled, deadline=SETTLE_DEADLINE, what="the queue to drain", interval=0.5)


def _assert_expected(adapter: Adapter, messages: list[bytes]) -> dict:
    state = adapter.state()
    expected, observed = expected_state(messages), observed_state(state)
    assert observed.contacts == expected.contacts
    assert observed.appointments == expected.appointments
    assert observed.emails == expected.emails
    for contact in state["contacts"]:      # the EMR id custom field, as OnCall shows it
        assert contact["custom_field_names"] == {"2": "EMR id"}
    return state


def test_replay_applies_every_sample_once(adapter: Adapter) -> None:
    """Every sample is acknowledged AA, applied without a dead letter, and OnCall ends up holding exactly
    the contacts (with the EMR id), appointments (fields, participants, metadata, cancellations) and
    e-mails the samples' operations call for; replaying all of them again changes nothing."""
    messages = sample_messages()
    summary = _replay_and_settle(adapter, len(messages))
    assert summary["by_state"].get("dead", 0) == 0, summary["dead_letters"]
    first = _assert_expected(adapter, messages)
    _replay_and_settle(adapter, len(messages))
    assert adapter.state() == first


def test_faults_on_oncall_side_reach_the_same_state(adapter: Adapter) -> None:
    """With 20% of OnCall calls answered 5xx or 429, added latency and dropped connections (some after the
    create was applied), seeded: the same final state, no duplicate, no dead letter."""
    adapter.faults([
        {"path": "/*", "method": "POST", "rate_500": 0.05, "rate_502": 0.05, "rate_503": 0.05,
         "rate_429": 0.05, "retry_after": 0, "drop_rate": 0.1, "drop_after_processing": True,
         "latency_ms": 20},
        {"path": "/*", "rate_500": 0.05, "rate_502": 0.05, "rate_503": 0.05, "rate_429": 0.05,
         "retry_after": 0, "drop_rate": 0.05, "latency_ms": 20},
    ], seed=20260101)
    messages = sample_messages()
    summary = _replay_and_settle(adapter, len(messages))
    assert summary["by_state"].get("dead", 0) == 0, summary["dead_letters"]
    first = _assert_expected(adapter, messages)
    _replay_and_settle(adapter, len(messages))
    assert adapter.state() == first
