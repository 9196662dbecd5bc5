"""SIGKILL the MLLP server mid-stream: every message that got an AA is in the store after restart,
and resending everything stores nothing twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from adapter.envelope import Envelope
from adapter.store.sqlite import SQLiteStore
from listeners.mllp.framing import FrameDecoder, encode_frame

SCRIPT = Path(__file__).with_name("mllp_server.py")
ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0
COUNT = 2000

pytestmark = pytest.mark.slow


def message(n: int) -> bytes:
    return (f"MSH|^~\\&|EPIC|HOSP|ONCALL|CLINIC|20240101120000||ADT^A08^ADT_A01|K{n:05d}|P|2.5.1\r"
            f"EVN|A08|20240101120000\rPID|1||{n % 50}^^^HOSP^MR||Doe^John||19800101|M\rPV1|1|O\r").encode()


@contextmanager
def server(db: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(db.with_suffix(".log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(db)], stdout=subprocess.PIPE,
                                stderr=log, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()          # blocks until the server listens (or dies)
        assert line.startswith("PORT "), f"server did not start: {line!r}, see {db.with_suffix('.log')}"
        yield proc, int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
        if proc.stdout is not None:
            proc.stdout.close()


def stream_and_read_acks(port: int, numbers: range, *, until: int | None = None,
                         on_until: Callable[[], None] | None = None) -> list[str]:
    """Send the messages pipelined from a thread; return the control ids answered AA, in order.
    With `until`, call `on_until()` once that many AAs arrived and keep reading until the socket dies."""
    acked: list[str] = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

    def send_all() -> None:
        try:
            for n in numbers:
                sock.sendall(encode_frame(message(n)))
        except OSError:
            pass                                          # the server was killed mid-stream

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    decoder = FrameDecoder()
    try:
        while len(acked) < len(numbers):
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            for frame in decoder.feed(data):
                fields = frame.payload.split(b"\r")[1].split(b"|")
                assert fields[0] == b"MSA"
                if fields[1] == b"AA":
                    acked.append(fields[2].decode())
            if until is not None and len(acked) >= until and on_until is not None:
                on_until()
                until = None
    finally:
        sock.close()
        sender.join(DEADLINE)
    return acked


def stored(db: Path) -> list[Envelope]:
    async def read() -> list[Envelope]:
        store = SQLiteStore(db)
        await store.open()
        try:
            return await store.list(limit=COUNT * 2, newest_first=False)
        finally:
            await store.close()
    return anyio.run(read)


def test_every_acked_message_survives_sigkill(tmp_path: Path) -> None:
    """Kill -9 the server after 300 AAs while messages still stream in: each AA'd control id is in the
    store (opened by this process); after a restart, resending all messages gets AA for every one and
    the store holds each control id exactly once."""
    db = tmp_path / "store.db"
    with server(db) as (proc, port):
        acked = stream_and_read_acks(port, range(COUNT), until=300,
                                     on_until=lambda: proc.send_signal(signal.SIGKILL))
        proc.wait(DEADLINE)
    assert proc.returncode == -signal.SIGKILL
    assert 300 <= len(acked) < COUNT, "the kill must land mid-stream"
    before = stored(db)
    ids = [e.meta["control_id"] for e in before]
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages were lost"
    assert len(ids) == len(set(ids))

    started = time.monotonic()
    with server(db) as (_proc, port):
        again = stream_and_read_acks(port, range(COUNT))
    assert sorted(again) == [f"K{n:05d}" for n in range(COUNT)]
    after = stored(db)
    assert sorted(e.meta["control_id"] for e in after) == [f"K{n:05d}" for n in range(COUNT)]
    assert time.monotonic() - started < DEADLINE * 2
