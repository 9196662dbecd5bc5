"""open_store(url, **opts): the backend by the URL scheme; options of the other backend left out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from adapter.errors import ConfigError
from adapter.store import open_store
from adapter.store.sqlite import SQLiteStore


def test_sqlite_urls_relative_and_absolute() -> None:
    """sqlite:///x is relative to the working directory, sqlite:////x absolute; query sets options."""
    rel = open_store("sqlite:///var/a.db?synchronous=normal&busy_timeout=2", schema="ignored")
    assert isinstance(rel, SQLiteStore)
    assert (rel.path, rel.synchronous) == (Path("var/a.db"), "NORMAL")
    absolute = open_store("sqlite:////srv/adapter/b.db", synchronous="FULL", dedup_window=timedelta(days=7))
    assert isinstance(absolute, SQLiteStore)
    assert (absolute.path, absolute.dedup_window) == (Path("/srv/adapter/b.db"), timedelta(days=7))


def test_postgres_url_leaves_sqlite_options_out() -> None:
    """A postgresql:// URL builds a PostgresStore (not connected yet) even when SQLite options are given."""
    from adapter.store.postgres import PostgresStore

    store = open_store("postgresql://postgres@127.0.0.1:5432/test", synchronous="FULL",
                       dedup_window=timedelta(days=1), schema="adapter")
    assert isinstance(store, PostgresStore)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://host/a.db", "mysql://x/y", "a.db",
                                 "sqlite:///", "sqlite:///a.db?cache=shared"])
def test_bad_urls_name_the_key(url: str) -> None:
    """A URL the factory cannot use is a ConfigError naming store.url and what is allowed."""
    with pytest.raises(ConfigError, match=r"store\.url"):
        open_store(url)
