"""The durable store: `open_store(url)` picks the implementation by the URL's scheme.

    sqlite:///var/adapter.db          a file relative to the working directory
    sqlite:////srv/adapter/adapter.db an absolute path (four slashes, as SQLAlchemy spells it)
    postgresql://user@host:5432/db    PostgreSQL (several processes or hosts on one store)

The returned store is not opened yet: the caller runs `await store.open()` at start-up and
`await store.close()` at shutdown.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from adapter.errors import ConfigError
from adapter.store.base import AuditEntry, QueueStats, Store, Xref

__all__ = ["AuditEntry", "QueueStats", "Store", "Xref", "open_store"]

_SQLITE_OPTIONS = {"synchronous", "busy_timeout"}   # accepted in a sqlite URL's query string
# Options that only mean something to one backend: the composition root passes the whole [store]
# section, and the other backend leaves these out (they describe SQLite's file or PG's pool).
_ONLY_SQLITE = frozenset({"synchronous", "busy_timeout", "max_batch"})
_ONLY_POSTGRES = frozenset({"schema", "min_size", "max_size", "connect_timeout", "group_commit",
                            "commit_window"})


def open_store(url: str, **opts: Any) -> Store:
    """Build the store named by `url`; `opts` go to its constructor.

    Common: dedup_window (timedelta). SQLite only: synchronous ("FULL"/"NORMAL"), busy_timeout
    (seconds), max_batch. PostgreSQL only: schema, min_size, max_size, connect_timeout, ...
    An option of the other backend is left out, so callers can pass one set for both.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from adapter.store.sqlite import SQLiteStore

        opts = {k: v for k, v in opts.items() if k not in _ONLY_POSTGRES}
        path, query = _sqlite_path(url)
        for key, value in query.items():
            if key not in _SQLITE_OPTIONS:
                raise ConfigError("store.url", url, f"unknown SQLite option {key!r}; known: "
                                  f"{', '.join(sorted(_SQLITE_OPTIONS))}")
            opts.setdefault(key, float(value) if key == "busy_timeout" else value.upper())
        return SQLiteStore(path, **opts)
    if scheme in ("postgresql", "postgres"):
        from adapter.store.postgres import PostgresStore  # psycopg is only imported when used

        store: Store = PostgresStore(url, **{k: v for k, v in opts.items() if k not in _ONLY_SQLITE})
        return store
    raise ConfigError("store.url", url, "a URL starting with sqlite:/// (a file) or postgresql:// "
                      "(a database), e.g. sqlite:///var/oncall-adapter.db")


def _sqlite_path(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if not url.lower().startswith("sqlite:///") or parts.netloc:
        raise ConfigError("store.url", url, "sqlite:///relative/path.db or sqlite:////absolute/path.db "
                          "(three slashes, then the path)")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ConfigError("store.url", url, "a file path: the store must survive a restart, so "
                          "in-memory SQLite is not accepted")
    return path, dict(parse_qsl(parts.query))
