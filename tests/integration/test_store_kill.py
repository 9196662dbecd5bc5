"""The SQLite store survives SIGKILL: acknowledged appends are on disk, a dead holder's claim expires.

A child process (store_child.py) uses the store file and is killed with SIGKILL at a point it
announced on stdout; the test then opens the same file. Time moves by `claim(now=...)`.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from adapter.envelope import NewEnvelope, Source, State, utcnow
from adapter.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("store_child.py")
ROOT = Path(__file__).resolve().parents[2]


class Child:
    """A child process whose stdout is read line by line with a deadline."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, str(CHILD), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self._buf = b""

    def _fill(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not ready:
            return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        self._buf += chunk
        return bool(chunk)

    def line(self, deadline: float) -> str:
        while b"\n" not in self._buf:
            if time.monotonic() > deadline:
                raise AssertionError(f"child printed no line in time; stderr: {self.stderr()}")
            if not self._fill(deadline - time.monotonic()):
                raise AssertionError(f"child exited early; stderr: {self.stderr()}")
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def kill_and_drain(self) -> list[str]:
        """SIGKILL, then every complete line it had printed before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        while self._fill(5):
            pass
        lines = self._buf.split(b"\n")
        self._buf = b""
        self.close()
        return [ln.decode() for ln in lines[:-1]]   # the last piece may be a half-written line

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def test_claim_of_killed_process_expires_then_reclaims(tmp_path: Path) -> None:
    """A claim held by a SIGKILLed process blocks its envelope until the lease expires, then is reclaimed."""
    path = tmp_path / "adapter.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        env = (await store.append(NewEnvelope(source=Source.MLLP, kind="ADT^A08", ordering_key="patient:A",
                                              dedup_key="mllp:FAC|1", payload=b"MSH|1"))).envelope
        child = Child("claim", str(path), "60")
        try:
            assert child.line(time.monotonic() + 60) == f"claimed {env.id}"
        finally:
            child.kill_and_drain()
        held = await store.get(env.id)
        assert held is not None and held.state is State.CLAIMED and held.lease_owner == "child"
        assert await store.claim("parent", limit=10, lease=timedelta(seconds=30), now=utcnow()) == []
        later = utcnow() + timedelta(seconds=61)
        [again] = await store.claim("parent", limit=10, lease=timedelta(seconds=30), now=later)
        assert again.id == env.id and again.lease_owner == "parent" and again.attempts == 0
        history = [h.event for h in await store.history(env.id)]
        assert history == ["stored", "claimed", "lease_expired", "claimed"]
        assert await store.complete(env.id, "parent")
    finally:
        await store.close()


async def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    """Every append that returned in a process killed mid-stream is in the file afterwards."""
    path = tmp_path / "adapter.db"
    child = Child("append", str(path))
    try:
        deadline = time.monotonic() + 60
        seen = [child.line(deadline) for _ in range(300)]
    finally:
        printed = child.kill_and_drain()
    acknowledged = {int(x) for x in seen + printed}
    assert len(acknowledged) >= 300
    conn = sqlite3.connect(path)
    try:
        on_disk = {row[0] for row in conn.execute("SELECT id FROM envelopes")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert acknowledged <= on_disk
