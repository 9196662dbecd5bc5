"""Harness for several `oncall-adapter serve` processes on one PostgreSQL store (the multi-node test and
the scaling benchmark): a fresh schema per run, per-node environments, per-patient message streams
whose effect on OnCall is observable and ordered, a pipelined MLLP feeder over several connections,
a write trace inside the sandbox, and read-outs of the shared store.

The processes themselves (start, SIGKILL, stop), the sandbox process and `wait_until` come from
tests/e2e/delivery_harness.py.
"""

from __future__ import annotations

import selectors
import socket
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from listeners.mllp.framing import FrameDecoder, encode_frame
from tests.e2e.delivery_harness import adapter_env, free_port

__all__ = ["PG_DSN", "Feeder", "StoreView", "contact_writes", "install_write_trace", "message_id",
           "node_env", "patient_messages", "pg_schema", "phone_of"]

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SENDER = "EPIC|CLINIC_A"


# -- PostgreSQL --------------------------------------------------------------------------------------
@contextmanager
def pg_schema(prefix: str = "mn") -> Iterator[str]:
    """A fresh schema name for one run; the schema (created by the first node) is dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def node_env(tmp: Path, *, store_url: str, sandbox_url: str, schema: str | None = None,
             extra: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """The environment of one `serve` node (its own MLLP and HTTP ports) and its MLLP port."""
    mllp = free_port()
    env = adapter_env(tmp, mllp_port=mllp, http_port=free_port(), extra={
        "ONCALL_ADAPTER_STORE__URL": store_url,
        "ONCALL_ADAPTER_ONCALL__BASE_URL": sandbox_url,
        "ONCALL_ADAPTER_ONCALL__API_KEY": "sandbox-token",
        "ONCALL_ADAPTER_LOGGING__LEVEL": "WARNING",   # 10,000 envelopes: info lines would cost CPU
        **({"ONCALL_ADAPTER_STORE__PG_SCHEMA": schema} if schema else {}),
        **(extra or {}),
    })
    return env, mllp


class StoreView:
    """Read-only SQL on the shared store's schema (counts and audit in bulk: history() per envelope
    would be 10,000 round trips)."""

    def __init__(self, schema: str) -> None:
        self.conn = psycopg.connect(PG_DSN, autocommit=True)
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

    def close(self) -> None:
        self.conn.close()

    def rows(self, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(query, params or {}).fetchall()
        except psycopg.errors.UndefinedTable:
            return []        # no node has created the schema yet

    def by_state(self) -> dict[str, int]:
        return {state: n for state, n in self.rows("SELECT state, count(*) FROM envelopes GROUP BY state")}

    def claimed_by(self, pid: int) -> int:
        return int(self.rows("SELECT count(*) FROM envelopes WHERE state = 'claimed' "
                             "AND lease_owner LIKE %(o)s", {"o": f"%:{pid}:%"})[0][0])


# -- messages -----------------------------------------------------------------------------------------
def message_id(patient: int, seq: int) -> str:
    return f"MN{patient:05d}{seq:04d}"


def phone_of(patient: int, seq: int) -> str:
    """The phone number message `seq` of `patient` sets: every message changes it, so each one is one
    observable write in OnCall, and the last one is the final value."""
    return f"1{patient:04d}{seq:05d}"


def patient_messages(patient: int, count: int) -> list[bytes]:
    """An ADT^A04 (create the contact) then count - 1 ADT^A08 (one contact PATCH each)."""
    out = []
    for seq in range(count):
        trigger = "A04" if seq == 0 else "A08"
        out.append(
            (f"MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20250301101500||ADT^{trigger}^ADT_A01|"
             f"{message_id(patient, seq)}|P|2.5\r"
             f"EVN|{trigger}|20250301101500\r"
             f"PID|1||MRN7{patient:05d}^^^CLINIC_A^MR||MULTI{patient}^NODE||19800214|F|||||"
             f"{phone_of(patient, seq)}^PRN^PH~^NET^Internet^multi{patient}@example.org\r"
             f"PV1|1|O|CLINIC_A^101^1||||1234^SMITH^JOHN^^^DR\r").encode())
    return out


# -- the sandbox's write trace ------------------------------------------------------------------------
def install_write_trace(sandbox_db: Path) -> None:
    """Record every contact INSERT and every UPDATE that sets `phone`, in the order the sandbox applied
    them: triggers in the sandbox's own SQLite file, so each write OnCall received is kept (its control
    API shows the final state only)."""
    with sqlite3.connect(sandbox_db, timeout=30) as conn:
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS mn_writes (seq INTEGER PRIMARY KEY, contact_id INTEGER NOT NULL,
                                                  op TEXT NOT NULL, phone TEXT);
            CREATE TRIGGER IF NOT EXISTS mn_contact_insert AFTER INSERT ON contacts BEGIN
                INSERT INTO mn_writes (contact_id, op, phone) VALUES (NEW.id, 'insert', NEW.phone);
            END;
            CREATE TRIGGER IF NOT EXISTS mn_contact_phone AFTER UPDATE OF phone ON contacts BEGIN
                INSERT INTO mn_writes (contact_id, op, phone) VALUES (NEW.id, 'update', NEW.phone);
            END;
        """)
    conn.close()


def contact_writes(sandbox_db: Path) -> dict[int, list[tuple[str, str | None]]]:
    """contact id -> [(op, phone)] in the order the sandbox applied them."""
    out: dict[int, list[tuple[str, str | None]]] = {}
    with sqlite3.connect(sandbox_db, timeout=30) as conn:
        for contact_id, op, phone in conn.execute("SELECT contact_id, op, phone FROM mn_writes ORDER BY seq"):
            out.setdefault(contact_id, []).append((op, phone))
    conn.close()
    return out


# -- the MLLP feeder ----------------------------------------------------------------------------------
@dataclass
class _Conn:
    node: int
    sock: socket.socket
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    waiting: deque[bytes] = field(default_factory=deque)        # not sent yet
    in_flight: deque[bytes] = field(default_factory=deque)      # sent, ACK not read yet
    out: bytearray = field(default_factory=bytearray)
    acked: int = 0
    broken: bool = False


def _control_id(message: bytes) -> bytes:
    return message.split(b"\r", 1)[0].split(b"|")[9]


@dataclass
class Feeder:
    """Sends messages pipelined (up to `window` unacknowledged per connection) over one held MLLP
    connection per node, as an interface engine with a TCP load balancer in front of the nodes would.
    Every ACK must be AA (CA) and answer the oldest message in flight on its connection."""

    ports: dict[int, int]                 # node -> MLLP port
    window: int = 32
    deadline: float = 120.0
    conns: dict[int, _Conn] = field(default_factory=dict)
    ack_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for node, port in self.ports.items():
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            self.conns[node] = _Conn(node, sock)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.sock.close()

    def drop(self, node: int) -> None:
        """Stop using a node (its process is gone)."""
        conn = self.conns.pop(node, None)
        if conn is not None:
            conn.sock.close()

    def send(self, batches: dict[int, list[bytes]],
             on_ack: Callable[[int, int], None] | None = None) -> dict[int, list[bytes]]:
        """Send each node's batch in order and wait for every ACK. Returns, per node whose connection
        broke, the messages not acknowledged (in order), for the caller to resend elsewhere.
        `on_ack(node, acked_so_far)` is called after each ACK."""
        with selectors.DefaultSelector() as sel:
            active = []
            for node, batch in batches.items():
                conn = self.conns[node]
                conn.waiting.extend(batch)
                conn.acked = 0
                if batch:
                    sel.register(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                    active.append(conn)
            end = time.monotonic() + self.deadline
            while any(c.waiting or c.in_flight for c in active if not c.broken):
                if time.monotonic() > end:
                    raise AssertionError(f"MLLP ACKs not all read after {self.deadline} s: "
                                         + ", ".join(f"node {c.node}: {len(c.in_flight)} in flight"
                                                     for c in active))
                for key, events in sel.select(timeout=1.0):
                    conn = key.data
                    if not conn.broken and events & selectors.EVENT_WRITE:
                        self._write(conn)
                    if not conn.broken and events & selectors.EVENT_READ:
                        self._read(conn, on_ack)
                    if conn.broken:
                        sel.unregister(conn.sock)
                    elif not (conn.out or (conn.waiting and len(conn.in_flight) < self.window)):
                        sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    else:
                        sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        lost: dict[int, list[bytes]] = {}
        for conn in active:
            if conn.broken:
                lost[conn.node] = [*conn.in_flight, *conn.waiting]
                conn.in_flight.clear()
                conn.waiting.clear()
                self.drop(conn.node)
        return lost

    def _write(self, conn: _Conn) -> None:
        while conn.waiting and len(conn.in_flight) < self.window:
            message = conn.waiting.popleft()
            conn.in_flight.append(message)
            conn.out += encode_frame(message)
        if not conn.out:
            return
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            conn.broken = True
            return
        del conn.out[:sent]

    def _read(self, conn: _Conn, on_ack: Callable[[int, int], None] | None) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            conn.broken = True
            conn.out.clear()
            return
        for frame in conn.decoder.feed(data):
            msa = next(s for s in frame.payload.split(b"\r") if s.startswith(b"MSA"))
            code, control_id = msa.split(b"|")[1:3]
            expected = _control_id(conn.in_flight.popleft())
            assert code in (b"AA", b"CA"), f"node {conn.node}: {msa!r} for {expected!r}"
            assert control_id == expected, f"node {conn.node}: ACK {control_id!r} for {expected!r}"
            conn.acked += 1
            self.ack_times.append(time.monotonic())
            if on_ack is not None:
                on_ack(conn.node, conn.acked)
