"""Integration fixtures: a real store per backend.

`store` (and `make_store`, for a store with options such as `dedup_window`) is parametrised over
SQLite (a file in tmp_path) and PostgreSQL (127.0.0.1:5432, a fresh schema per test, dropped
afterwards). A missing PostgreSQL fails the postgres tests; it never skips them. Run one backend
with `-k sqlite` or `-k postgres`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from adapter.store.base import Store

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

MakeStore = Callable[..., Awaitable[Store]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _drop_pg_schemas(names: list[str]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(backend: str, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """An async factory of opened stores of the test's backend; all are closed after the test."""
    opened: list[Store] = []
    schemas: list[str] = []

    async def make(**opts: Any) -> Store:
        store: Store
        if backend == "sqlite":
            from adapter.store.sqlite import SQLiteStore

            store = SQLiteStore(tmp_path / f"store{len(opened)}" / "adapter.db", **opts)
        else:
            from adapter.store.postgres import PostgresStore

            schema = f"t_{uuid.uuid4().hex[:8]}"
            schemas.append(schema)
            store = PostgresStore(PG_DSN, schema=schema, **opts)
        await store.open()
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in reversed(opened):
            await store.close()
        if schemas:
            _drop_pg_schemas(schemas)


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    """An opened, empty store of the test's backend."""
    return await make_store()
