"""PostgreSQL store plumbing: the psycopg -> StoreError choke point, migrations and row decoding.

Every psycopg call of the store runs inside `translated()`; nothing else catches psycopg errors.
A unique violation on the one-claim-per-key index becomes `KeyTaken` (a StoreError the claim path
expects: "another node got it"); everything else becomes a StoreError saying what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from adapter.envelope import Envelope, Source, State
from adapter.errors import StoreError

__all__ = [
    "ONE_CLAIM_INDEX",
    "Contention",
    "KeyTaken",
    "Where",
    "aware",
    "envelope_from_row",
    "migrate",
    "migrations",
    "schema_sql",
    "translated",
]

log = structlog.get_logger(__name__)

ONE_CLAIM_INDEX = "envelopes_one_claim_per_key"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class KeyTaken(StoreError):
    """Another node holds a claim on this ordering key (the partial unique index said so)."""


class Contention(StoreError):
    """A transaction lost a race (deadlock, serialization failure): running it again is safe."""


class Where:
    """Where the store is, for messages: host:port/dbname and schema (never the password)."""

    def __init__(self, dsn: str, schema: str) -> None:
        try:
            parts = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise StoreError("store.url is not a valid PostgreSQL connection string",
                             hint="use postgresql://user@host:5432/dbname") from exc
        host = parts.get("host") or parts.get("hostaddr") or "localhost"
        self.address = f"{host}:{parts.get('port') or 5432}"
        self.dbname = str(parts.get("dbname") or parts.get("user") or "")
        self.schema = schema

    def __str__(self) -> str:
        return f"PostgreSQL at {self.address}/{self.dbname} (schema {self.schema})"


@contextmanager
def translated(where: Where, action: str) -> Iterator[None]:
    """The one place psycopg and pool exceptions become adapter errors."""
    try:
        yield
    except StoreError:
        raise
    except pg_errors.UniqueViolation as exc:
        constraint = exc.diag.constraint_name or "?"
        if constraint == ONE_CLAIM_INDEX:
            raise KeyTaken(f"{action}: another worker holds a claim on this ordering key") from exc
        raise StoreError(f"{action} in {where}: unique constraint {constraint} violated",
                         hint="a bug or a concurrent writer outside the adapter; report it") from exc
    except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
        raise Contention(f"{action}: lost a race with a concurrent transaction in {where}",
                         hint="retry") from exc
    except psycopg_pool.PoolClosed as exc:
        raise StoreError(f"{action}: the store for {where} is closed",
                         hint="the adapter is shutting down; the sender will resend") from exc
    except psycopg_pool.PoolTimeout as exc:
        raise StoreError(f"{action}: no connection to {where} became free in time",
                         hint="is PostgreSQL reachable? raise store.pool_max_size if workers wait") from exc
    except (pg_errors.InvalidPassword, pg_errors.InvalidAuthorizationSpecification) as exc:
        raise StoreError(f"{action}: {where} refused the credentials",
                         hint="check the user and password in store.url") from exc
    except pg_errors.InvalidCatalogName as exc:
        raise StoreError(f"{action}: database {where.dbname!r} does not exist at {where.address}",
                         hint="create it (createdb) or fix store.url") from exc
    except pg_errors.InsufficientPrivilege as exc:
        raise StoreError(f"{action} in {where}: permission denied ({exc.diag.message_primary})",
                         hint="grant the adapter's user rights on the schema, or pick another") from exc
    except psycopg.OperationalError as exc:
        raise _connection_error(where, action, exc) from exc
    except psycopg.DataError as exc:
        # Primary message only: DETAIL may quote values (patient data).
        primary = exc.diag.message_primary or type(exc).__name__
        raise StoreError(f"{action} in {where}: PostgreSQL cannot store a value ({primary})",
                         hint="text fields and meta must not contain NUL bytes") from exc
    except psycopg.Error as exc:
        primary = exc.diag.message_primary or type(exc).__name__
        raise StoreError(f"{action} in {where}: {exc.sqlstate or '?'} {primary}",
                         hint="see the PostgreSQL server log") from exc


def _connection_error(where: Where, action: str, exc: psycopg.OperationalError) -> StoreError:
    """libpq reports connection failures as text without SQLSTATE: name the cause it gives."""
    text = str(exc)
    reason = text.rsplit("failed: ", 1)[-1].split("\n", 1)[0].replace("FATAL:", "").strip()
    if "database" in reason and "does not exist" in reason:
        return StoreError(f"{action}: database {where.dbname!r} does not exist at {where.address}",
                          hint="create it (createdb) or fix store.url")
    if "password" in reason or "role" in reason or "authentication" in reason:
        return StoreError(f"{action}: {where} refused the login: {reason}",
                          hint="check the user and password in store.url")
    return StoreError(f"{action}: cannot reach {where}: {reason or type(exc).__name__}",
                      hint="is it running? check store.url")


def aware(value: datetime | None) -> datetime | None:
    """Timestamps leave the store as aware UTC datetimes."""
    return None if value is None else value.astimezone(UTC)


def envelope_from_row(row: tuple[Any, ...]) -> Envelope:
    """Decode a row selected with `postgres_sql.COLUMNS` (extra trailing columns are ignored)."""
    (id_, source, kind, ordering_key, dedup_key, payload, content_hash, received_at, state, attempts,
     not_before, lease_owner, lease_until, reason, meta, mapping_version, updated_at) = row[:17]
    return Envelope(
        id=id_, source=Source(source), kind=kind, ordering_key=ordering_key, dedup_key=dedup_key,
        payload=None if payload is None else bytes(payload), content_hash=content_hash,
        received_at=received_at.astimezone(UTC), state=State(state), attempts=attempts,
        not_before=aware(not_before), lease_owner=lease_owner, lease_until=aware(lease_until),
        reason=reason, meta=dict(meta or {}), mapping_version=mapping_version,
        updated_at=aware(updated_at),
    )


def _sql_dir() -> resources.abc.Traversable:
    return resources.files("adapter.store").joinpath("sql", "postgres")


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped with the package, in order: (version, name, sql)."""
    found = []
    for entry in _sql_dir().iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions) or versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"PostgreSQL migrations are not numbered 0001, 0002, ... without gaps: {versions}",
                         hint="a packaging error; reinstall the adapter")
    return found


def schema_sql() -> str:
    """The reference schema (what the migrations must add up to)."""
    return _sql_dir().joinpath("schema.sql").read_text(encoding="utf-8")


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    """Create the schema and apply missing migrations, in one transaction, under an advisory lock.

    The transaction-level advisory lock serialises processes starting together: the second waits,
    then finds the migrations recorded and applies nothing. Returns the names applied.
    """
    applied: list[str] = []
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"oncall_adapter.migrate.{schema}",))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        await conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""")
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, text in migrations():
            if version in done:
                continue
            await conn.execute(text)  # no parameters: sent as one script of several statements
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                               (version, name))
            log.info("store_migrated", store="postgres", schema=schema, version=version)
            applied.append(name)
    return applied
