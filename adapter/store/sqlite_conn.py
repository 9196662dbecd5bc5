"""SQLite connections for the store: one writer thread doing group commit, a pool of readers.

Why group commit: the MLLP listener acknowledges only after `append` returned, so an append's
latency is the sender's ACK latency, and with `synchronous=FULL` each commit costs an fsync. One
dedicated thread owns the only write connection; callers put work on its queue; the thread takes
everything pending, runs it in ONE transaction, commits once, then resolves every caller's future.
Under load the fsync is shared by the whole batch.

The batch runs without savepoints (they cost two statements per request on the ACK path). If a
request raises, the whole transaction is rolled back and the batch runs again with one savepoint
per request, so the failing request fails alone and the others commit. Results go back to each
event loop with one `call_soon_threadsafe` per batch, not one wake-up per request.

Readers use their own connections (WAL lets them read while the writer writes), in worker
threads, so the event loop never blocks on SQLite.

Every sqlite3 exception is translated here, in `translate`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from adapter.errors import StoreError

__all__ = ["Reader", "Writer", "connect", "translate"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
_STOP = object()


def translate(exc: BaseException, path: Path) -> BaseException:
    """The one choke point turning sqlite3 errors into StoreError with what to do."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        text = (f"database is locked: another process holds the write lock on {path} longer than the "
                "busy timeout")
        hint = ("stop the other oncall-adapter process using this file, or use PostgreSQL "
                "(store.url = postgresql://...) to run several processes")
    elif "unable to open" in low:
        text = f"cannot open the SQLite store {path}: {msg}"
        hint = "check that the directory exists and is writable by this user"
    elif "not a database" in low or "malformed" in low or "corrupt" in low:
        text = f"{path} is not a usable SQLite database: {msg}"
        hint = "point store.url at another file, or restore this one from a backup"
    elif "disk is full" in low or "disk i/o" in low or "readonly" in low or "read-only" in low:
        text = f"cannot write the SQLite store {path}: {msg}"
        hint = "free disk space or fix the file's permissions; nothing was acknowledged meanwhile"
    elif isinstance(exc, sqlite3.IntegrityError):
        text = f"the SQLite store {path} refused a change: {msg}"
        hint = "this is a bug in the adapter or a hand-edited database: report it with the log"
    else:
        text = f"SQLite error on {path}: {msg}"
        hint = None
    err = StoreError(text, hint=hint)
    err.__cause__ = exc
    return err


def connect(path: Path, *, busy_timeout: float, readonly: bool = False) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (the writer batches several requests).
    conn = sqlite3.connect(os.fspath(path), timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


async def _await(fut: concurrent.futures.Future[T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio under anyio): wait in a worker thread
        return await anyio.to_thread.run_sync(fut.result)
    return await asyncio.wrap_future(fut)


class _Request:
    """One caller's work. On asyncio: an asyncio future of the caller's loop, settled by the writer
    through `call_soon_threadsafe`; elsewhere (trio): a concurrent future waited on in a thread."""

    __slots__ = ("cancelled", "future", "loop", "op")

    def __init__(self, op: Op, loop: asyncio.AbstractEventLoop | None,
                 future: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
        self.op = op
        self.loop = loop
        self.future = future
        self.cancelled = False     # set by the caller; the writer skips a request not yet started

    def start(self) -> bool:
        if self.loop is None:
            assert isinstance(self.future, concurrent.futures.Future)
            return self.future.set_running_or_notify_cancel()
        return not self.cancelled


Outcome = tuple[_Request, Any, BaseException | None]


def _settle(outcomes: list[Outcome]) -> None:
    """Runs on the caller's event loop: hand each result to its future (a cancelled one is done)."""
    for req, result, exc in outcomes:
        fut = req.future
        if fut.done():
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


class Writer:
    """The thread owning the write connection. `setup` runs first (pragmas, migrations)."""

    def __init__(self, path: Path, *, busy_timeout: float, setup: Op, max_batch: int = 512) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.max_batch = max_batch
        self.commit_count = 0          # transactions committed (appends / commits = batching factor)
        self.request_count = 0         # requests run
        self.replay_count = 0          # batches run again with savepoints because a request failed
        self._setup = setup
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closing = False

    async def start(self) -> None:
        if self._thread is not None:
            raise StoreError(f"the SQLite store {self.path} is already open (or was closed: make a new one)")
        self._thread = threading.Thread(target=self._main, name=f"sqlite-writer:{self.path.name}",
                                        daemon=True)
        self._thread.start()
        await _await(self._ready)

    async def stop(self) -> None:
        """Run everything already queued, then stop the thread and close the connection."""
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._queue.put(_STOP)
        await _await(self._stopped)
        self._thread.join()

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._closing or self._thread is None:
            raise StoreError(f"the SQLite store {self.path} is closed",
                             hint="open() it first; this is a shutdown-order bug if seen in serve")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio under anyio): wait in a worker thread
            cfut: concurrent.futures.Future[T] = concurrent.futures.Future()
            self._queue.put(_Request(op, None, cfut))
            return await anyio.to_thread.run_sync(cfut.result)
        fut: asyncio.Future[T] = loop.create_future()
        req = _Request(op, loop, fut)
        self._queue.put(req)
        try:
            return await fut
        except asyncio.CancelledError:
            req.cancelled = True   # not started yet: the writer skips it; started: it commits anyway
            raise

    # -- the thread ---------------------------------------------------------------------------
    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path, busy_timeout=self.busy_timeout)
            self._setup(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            self._ready.set_exception(translate(exc, self.path))
            self._stopped.set_result(None)
            return
        self._ready.set_result(None)
        try:
            self._loop(conn)
        finally:
            try:
                conn.execute("PRAGMA optimize")
            except sqlite3.Error as exc:
                log.warning("store_optimize_failed", error_type=type(exc).__name__, path=str(self.path))
            conn.close()
            self._stopped.set_result(None)

    def _loop(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Request] = [first]
            # Everything that arrived while the previous commit was syncing joins this batch.
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            running = [req for req in batch if req.start()]
            if running:
                self._deliver(self._commit(conn, running))

    def _commit(self, conn: sqlite3.Connection, running: list[_Request]) -> list[Outcome]:
        """Run the batch in one transaction; each request's outcome (the commit's error if it failed)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes: list[Outcome] = [(req, req.op(conn), None) for req in running]
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if len(running) == 1:   # nothing else to keep: no replay needed
                    return [(running[0], None, translate(exc, self.path))]
                self.replay_count += 1
                conn.execute("BEGIN IMMEDIATE")
                outcomes = [self._in_savepoint(conn, req) for req in running]
            conn.execute("COMMIT")
        except BaseException as exc:
            err = translate(exc, self.path)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(req, None, err) for req in running]
        self.commit_count += 1
        self.request_count += len(outcomes)
        return outcomes

    def _in_savepoint(self, conn: sqlite3.Connection, req: _Request) -> Outcome:
        conn.execute("SAVEPOINT op")
        try:
            result = req.op(conn)
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            except sqlite3.Error:
                pass  # the COMMIT after the batch reports a transaction that cannot go on
            return (req, None, translate(exc, self.path))
        conn.execute("RELEASE op")
        return (req, result, None)

    def _deliver(self, outcomes: list[Outcome]) -> None:
        """Wake each waiting event loop once for the whole batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            req, result, exc = outcome
            if req.loop is not None:
                by_loop.setdefault(req.loop, []).append(outcome)
            elif exc is None:
                req.future.set_result(result)
            else:
                req.future.set_exception(exc)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):   # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, items)


class Reader:
    """A pool of read-only connections used from worker threads."""

    def __init__(self, path: Path, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"the SQLite store {self.path} is closed",
                             hint="open() it first; this is a shutdown-order bug if seen in serve")
        return await anyio.to_thread.run_sync(self._run, op)

    def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = connect(self.path, busy_timeout=self.busy_timeout, readonly=True)
                with self._lock:
                    self._all.append(conn)
            try:
                # One read transaction: a multi-statement read sees one snapshot.
                conn.execute("BEGIN")
                try:
                    return op(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                with self._lock:
                    self._idle.append(conn)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._idle.clear()
