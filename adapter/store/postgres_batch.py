"""Group commit for single appends: concurrent `append()` calls share one transaction.

A commit costs a WAL flush; eight listeners appending at once need not pay eight. The first
append of a batch leads it: it lets appends already scheduled join (one event-loop turn) and,
when another batch is being committed, waits up to `window` for more to arrive (the same idea as
PostgreSQL's commit_delay/commit_siblings: delay only when there is company). Then it commits the
batch and hands each follower its own outcome. A lone appender never waits.

If a batch fails, its envelopes are retried one by one, so one bad envelope fails only its own
append (an unreachable database fails the whole batch at once). The flush is shielded from
cancellation: followers depend on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import psycopg
import structlog

from adapter.envelope import Appended, NewEnvelope
from adapter.errors import StoreError

__all__ = ["GroupCommit"]

log = structlog.get_logger(__name__)

_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)

Flush = Callable[[Sequence[NewEnvelope]], Awaitable[list[Appended]]]


@dataclass(eq=False)
class _Batch:
    items: list[NewEnvelope]
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    results: list[Appended | StoreError] = field(default_factory=list)


class GroupCommit:
    """Collects concurrent appends into one `flush` (a transaction) each."""

    def __init__(self, flush: Flush, *, window: float = 0.001, max_batch: int = 64) -> None:
        self._flush = flush
        self._window = window
        self._max_batch = max_batch
        self._open: _Batch | None = None      # the batch still accepting appends
        self._inflight = 0                    # batches being committed right now
        self.batches = 0                      # counters for benchmarks and metrics
        self.appends = 0

    async def append(self, new: NewEnvelope) -> Appended:
        batch = self._open
        if batch is not None:
            index = len(batch.items)
            batch.items.append(new)
            if len(batch.items) >= self._max_batch:
                self._open = None
                batch.full.set()
            await batch.done.wait()
        else:
            index = 0
            batch = self._open = _Batch([new])
            with anyio.CancelScope(shield=True):
                await self._lead(batch)
        result = batch.results[index]
        if isinstance(result, StoreError):
            raise result
        return result

    async def _lead(self, batch: _Batch) -> None:
        try:
            await anyio.lowlevel.checkpoint()   # appends scheduled in this loop turn join
            if self._inflight and self._open is batch:
                with anyio.move_on_after(self._window):
                    await batch.full.wait()
            if self._open is batch:
                self._open = None
            self._inflight += 1
            try:
                batch.results = await self._commit(batch.items)
            finally:
                self._inflight -= 1
            self.batches += 1
            self.appends += len(batch.items)
        finally:
            if not batch.results:   # an unexpected error escaped: followers must not hang or guess
                failed = StoreError("append failed: the batch it joined could not be committed",
                                    hint="see the previous error in the log")
                batch.results = [failed] * len(batch.items)
            batch.done.set()

    async def _commit(self, items: list[NewEnvelope]) -> list[Appended | StoreError]:
        try:
            return list(await self._flush(items))
        except StoreError as exc:
            # Only an error about the data can be one envelope's fault; an unreachable database
            # fails every envelope alike, and retrying them one by one would only take longer.
            if len(items) == 1 or not isinstance(exc.__cause__, _DATA_ERRORS):
                return [exc] * len(items)
        log.warning("store_batch_split", store="postgres", size=len(items))
        results: list[Appended | StoreError] = []
        for item in items:
            try:
                results.extend(await self._flush([item]))
            except StoreError as exc:
                results.append(exc)
        return results
