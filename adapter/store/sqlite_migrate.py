"""The SQLite store's schema: `sql/sqlite/schema.sql` for a new file, numbered migrations for an old one.

`schema.sql` is the final schema in one readable file; `NNNN_name.sql` are the steps an existing
database takes to get there. A test applies the migrations in order to an empty file and checks the
result is the schema of `schema.sql` (tests/integration/test_store_sqlite.py).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

from adapter.errors import StoreError
from adapter.store.sqlite_sql import to_ts

__all__ = ["Migration", "migrate", "migrations", "run_script", "schema_sql"]

_SQL_DIR = "sql/sqlite"
_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _sql_files() -> resources.abc.Traversable:
    return resources.files("adapter.store").joinpath(_SQL_DIR)


def schema_sql() -> str:
    return _sql_files().joinpath("schema.sql").read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    found = []
    for entry in _sql_files().iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run each statement of `script` inside the caller's transaction.

    `executescript` would commit first; splitting on complete statements keeps a migration and its
    schema_migrations row in one transaction (and knows a trigger's BEGIN ... END is one statement).
    """
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise StoreError("an SQL script of the SQLite store ends inside a statement (missing ';')",
                         hint="this is a packaging bug: reinstall oncall-adapter")


def migrate(conn: sqlite3.Connection, path: Path, now: datetime) -> list[int]:
    """Bring the database to the current schema; returns the versions applied now."""
    known = migrations()
    conn.execute("BEGIN IMMEDIATE")   # two processes opening one new file: the second waits here
    try:
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                 "AND name = 'schema_migrations'").fetchone()
        if not has_table:
            others = conn.execute("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            if others.fetchone()[0]:
                raise StoreError(f"{path} holds tables but is not an oncall-adapter store "
                                 "(no schema_migrations table)",
                                 hint="point store.url at a new file or at the adapter's own database")
            run_script(conn, schema_sql())
            pending = known
        else:
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            newer = applied - {m.version for m in known}
            if newer:
                raise StoreError(f"{path} was migrated by a newer oncall-adapter (schema versions "
                                 f"{sorted(newer)} unknown here)",
                                 hint="run the newer oncall-adapter, or restore a backup made for this one")
            pending = [m for m in known if m.version not in applied]
            for m in pending:
                run_script(conn, m.sql)
        conn.executemany("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                         [(m.version, m.name, to_ts(now)) for m in pending])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.version for m in pending]
