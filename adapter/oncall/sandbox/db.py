"""Sandbox state in SQLite: one connection guarded by a lock (a file or ":memory:").

Ids are plain INTEGER PRIMARY KEYs counted from 1 in creation order, so tests can predict URLs;
`reset()` empties every table and starts the counts again. Providers and divisions are seeded
with fixed ids (providers 1, 2; divisions 1, 2).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

__all__ = ["SEED_DIVISIONS", "SEED_PROVIDERS", "SandboxDB"]

SEED_DIVISIONS = (
    (1, "Main Street Clinic"),
    (2, "Virtual Care"),
)
# id, full name, e-mail, division ids (memberships)
SEED_PROVIDERS = (
    (1, "Dr. Avery Sandbox", "avery.sandbox@example.test", (1, 2)),
    (2, "Dr. Blake Sandbox", "blake.sandbox@example.test", (2, 1)),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS divisions (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS providers (
    id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, email TEXT NOT NULL,
    divisions TEXT NOT NULL                         -- JSON list of division ids
);
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY, provider_id INTEGER NOT NULL, division_id INTEGER NOT NULL,
    first_name TEXT, last_name TEXT, email TEXT, phone TEXT, sex TEXT, date_of_birth TEXT, notes TEXT,
    custom_field_values TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS appointments (
    id INTEGER PRIMARY KEY, title TEXT, type TEXT NOT NULL, datetime TEXT, duration INTEGER,
    division_id INTEGER NOT NULL, provider_id INTEGER NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'Incomplete', cancelled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    id INTEGER PRIMARY KEY, appointment_id INTEGER NOT NULL REFERENCES appointments(id),
    name TEXT, first_name TEXT, last_name TEXT, email TEXT, fee TEXT,
    cancelled INTEGER NOT NULL DEFAULT 0, user_id INTEGER, contact_id INTEGER
);
CREATE INDEX IF NOT EXISTS participants_by_appointment ON participants(appointment_id);
CREATE TABLE IF NOT EXISTS emails (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, to_email TEXT, kind TEXT NOT NULL,
    appointment_id INTEGER, participant_id INTEGER, subject TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY, event TEXT NOT NULL, url TEXT NOT NULL, target TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at TEXT NOT NULL
);
"""
_TABLES = ("webhook_deliveries", "emails", "participants", "appointments", "contacts", "providers",
           "divisions")
_JSON_COLUMNS = frozenset({"divisions", "custom_field_values", "metadata"})
_BOOL_COLUMNS = frozenset({"cancelled"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row is not iterable by key
        value = row[key]
        if key in _JSON_COLUMNS and isinstance(value, str):
            value = json.loads(value)
        elif key in _BOOL_COLUMNS:
            value = bool(value)
        out[key] = value
    return out


def _encode(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list | tuple) else value


class SandboxDB:
    """A small row store over SQLite. Every method takes the lock; `transaction()` spans several."""

    def __init__(self, path: str = ":memory:") -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA foreign_keys = ON")
            if path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.executescript(_SCHEMA)
            if not self.select("divisions"):
                self._seed()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._conn.in_transaction:     # nested: the outer one commits
                yield
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _seed(self) -> None:
        with self.transaction():
            for division_id, name in SEED_DIVISIONS:
                self.insert("divisions", id=division_id, name=name)
            for provider_id, full_name, email, divisions in SEED_PROVIDERS:
                self.insert("providers", id=provider_id, full_name=full_name, email=email,
                            divisions=list(divisions))

    def reset(self) -> None:
        """Empty every table and restart ids at 1; reseed providers and divisions."""
        with self.transaction():
            for table in _TABLES:
                self._conn.execute(f"DELETE FROM {table}")
            self._seed()

    # -- rows -------------------------------------------------------------------------------
    def insert(self, table: str, **cols: Any) -> int:
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        with self._lock:
            cur = self._conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                                     [_encode(v) for v in cols.values()])
            return int(cur.lastrowid or 0)

    def update(self, table: str, row_id: int, **cols: Any) -> None:
        if not cols:
            return
        sets = ", ".join(f"{name} = ?" for name in cols)
        with self._lock:
            self._conn.execute(f"UPDATE {table} SET {sets} WHERE id = ?",
                               [*(_encode(v) for v in cols.values()), row_id])

    def get(self, table: str, row_id: int) -> dict[str, Any] | None:
        rows = self.select(table, "id = ?", (row_id,))
        return rows[0] if rows else None

    def select(self, table: str, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        with self._lock:
            return [_row(r) for r in self._conn.execute(sql, args).fetchall()]

    def add_email(self, *, to_email: str | None, kind: str, subject: str, appointment_id: int | None = None,
                  participant_id: int | None = None) -> None:
        self.insert("emails", at=now_iso(), to_email=to_email, kind=kind, subject=subject,
                    appointment_id=appointment_id, participant_id=participant_id)
