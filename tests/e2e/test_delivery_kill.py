"""End to end with crashes: the adapter (`oncall-adapter serve`, against a separate `oncall-adapter sandbox`
process that outlives it) is SIGKILLed at seeded-random moments while messages stream in and workers
create contacts and appointments; it is restarted and the sender resends what was not acknowledged.
Final state: exactly what the messages call for, no duplicate contact or appointment, every message
that got an AA applied."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest
from delivery_harness import (
    Adapter,
    adapter_env,
    expected_state,
    free_port,
    observed_state,
    sample_messages,
    sandbox_process,
    wait_until,
)

from listeners.mllp.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.slow

SEED = 20261125
PATIENTS = 40


def synthetic(n: int) -> list[bytes]:
    """A registration then a booking for patient n (the shipped mappings' ADT^A04 and SIU^S12)."""
    mrn, appt = f"MRN9{n:05d}", f"APPT9{n:05d}"
    a04 = (f"MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20240501101500||ADT^A04^ADT_A01|KA{n:05d}|P|2.5\r"
           f"EVN|A04|20240501101500\r"
           f"PID|1||{mrn}^^^CLINIC_A^MR||PATIENT{n}^ALEX||19800214|F|||||(514)555-{n:04d}^PRN^PH"
           f"~^NET^Internet^alex{n}@example.org\r"
           f"PV1|1|O|CLINIC_A^101^1||||1234^SMITH^JOHN^^^DR\r")
    s12 = (f"MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20240510090000||SIU^S12^SIU_S12|KS{n:05d}|P|2.5\r"
           f"SCH|PL-{n}^EPIC|{appt}^EPIC|||||FOLLOWUP^Follow-up|VIRTUAL^Virtual visit|30|MIN|"
           f"^^30^20300515143000^20300515150000|||||1234^SMITH^JOHN|||||||||Booked\r"
           f"PID|1||{mrn}^^^CLINIC_A^MR||PATIENT{n}^ALEX||19800214|F|||||~^NET^Internet^alex{n}@example.org\r"
           f"PV1|1|O|CLINIC_A^101||||1234^SMITH^JOHN\rRGS|1|A\rAIL|1|A|CLINIC_A^101\rAIP|1|A|1234^SMITH^JOHN|MD\r")
    return [a04.encode(), s12.encode()]


def send(port: int, messages: list[bytes], start: int, stop_after: int | None) -> int:
    """Send messages[start:] one by one, each waiting for its ACK; return the index of the first message
    not acknowledged AA/CA (the sender resends from there). Stops after `stop_after` ACKs when given."""
    index = start
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            decoder = FrameDecoder()
            while index < len(messages) and (stop_after is None or index - start < stop_after):
                sock.sendall(encode_frame(messages[index]))
                frames = []
                while not frames:
                    data = sock.recv(65536)
                    if not data:
                        return index
                    frames = decoder.feed(data)
                msa = next(s for s in frames[0].payload.split(b"\r") if s.startswith(b"MSA"))
                assert msa.split(b"|")[1] in (b"AA", b"CA"), msa
                index += 1
    except OSError:
        pass   # the adapter died mid-exchange: the message in flight is resent
    return index


def test_sigkill_during_replay_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Kill -9 the adapter three times at seeded-random points of a stream (with creates in flight,
    answered slowly after OnCall applied them), restart it each time and resend the unacknowledged rest:
    OnCall ends with one contact per patient and one appointment per EMR appointment id, field by field
    what the messages call for, and nothing is left queued or dead."""
    rng = random.Random(SEED)
    messages = sample_messages() + [m for n in range(PATIENTS) for m in synthetic(n)]
    with sandbox_process(tmp_path) as sandbox_url:
        mllp, http = free_port(), free_port()
        env = adapter_env(tmp_path, mllp_port=mllp, http_port=http, extra={
            "ONCALL_ADAPTER_ONCALL__BASE_URL": sandbox_url,
            "ONCALL_ADAPTER_ONCALL__API_KEY": "sandbox-token"})
        adapter = Adapter(tmp_path, ["serve"], env, mllp, sandbox_url)
        # Creates answer 80 ms after being applied: kills land between a create and its recording.
        adapter.faults([{"path": "/*", "method": "POST", "latency_ms": 80, "latency_after_processing": True}],
                       seed=SEED)
        adapter.start()
        try:
            sent = 0
            for _kill in range(3):
                sent = send(mllp, messages, sent, stop_after=rng.randint(5, len(messages) // 4))
                # The workers are still busy with the envelopes just acknowledged: kill at a random
                # moment of that work (choosing the moment, not waiting for anything).
                time.sleep(rng.uniform(0.0, 0.4))
                adapter.kill()
                adapter.start()
            while sent < len(messages):
                sent = send(mllp, messages, sent, stop_after=None)
            summary = wait_until(adapter.settled, deadline=180, what="the queue to drain", interval=0.5)
            assert summary["by_state"].get("dead", 0) == 0, summary["dead_letters"]
            expected, observed = expected_state(messages), observed_state(adapter.state())
            assert len(observed.contacts) == len(expected.contacts)
            assert observed.contacts == expected.contacts
            assert observed.appointments == expected.appointments
            assert observed.emails == expected.emails
        finally:
            adapter.stop()
