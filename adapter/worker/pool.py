"""The worker pool: claim envelopes, map them, execute their operations, complete or schedule a retry.

Concurrency: `workers` tasks each claim up to `batch` envelopes (the store hands out at most one per
ordering key, so one patient's envelopes are applied in order while different patients run in
parallel) and process their batch concurrently; the OnCall client's own `max_in_flight` bounds the
requests actually sent. A keeper task per batch extends the leases while operations run, and
cancels an envelope whose lease was lost (another process took it over: its result would be
dropped anyway, and two workers must not apply one envelope at the same time).

Stopping: `stop()` lets the workers finish what they hold and exit; cancelling `run()` releases the
claims in progress (store.release) so another process picks them up at once. A create interrupted
that way leaves its intent row, so the next attempt searches before creating again.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from adapter import metrics
from adapter.envelope import Envelope, Source, utcnow
from adapter.errors import PermanentError
from adapter.retry import DeadLetter, LeaveClaim, RetryAt, RetryPolicy, describe_error
from adapter.store.base import Store
from adapter.worker.executor import Executor, OperationFailed

__all__ = ["REVERSE_SOURCES", "MappingProvider", "ReversePath", "WorkerPool", "build_worker_pool",
           "default_owner_id"]

logger = structlog.get_logger(__name__)


# Envelopes from OnCall (webhooks, the contacts scrape) go to the reverse path, towards the EMR.
REVERSE_SOURCES = frozenset({Source.ONCALL_WEBHOOK, Source.CONTACTS_SCRAPE})


class ReversePath(Protocol):
    """adapter.reverse.executor.ReverseExecutor: applies one OnCall -> EMR envelope, audits it, and
    returns an outcome with `mapping_version` and `audit()`."""

    async def process(self, envelope: Envelope) -> Any: ...


MappingProvider = Callable[[], Any]
"""Returns the current MappingSet (called per envelope, so a SIGHUP reload is picked up)."""


def default_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.SystemRandom().getrandbits(32):08x}"


@dataclass
class _Held:
    envelope: Envelope
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    confirmed: float = field(default_factory=time.monotonic)   # when the lease was last known held
    lost: bool = False
    finished: bool = False      # completed, retried or dead-lettered: nothing to give back


class WorkerPool:
    def __init__(self, store: Store, mapping_provider: MappingProvider, client: Any, *,
                 workers: int = 4, batch: int = 8, lease: timedelta = timedelta(seconds=60),
                 poll_seconds: float = 0.2, retry_policy: RetryPolicy | None = None,
                 emr_id_label: str = "EMR id", owner_id: str | None = None,
                 retention: timedelta = timedelta(days=30), prune_every: timedelta = timedelta(hours=1),
                 seed: int | None = None, executor: Executor | None = None,
                 reverse: ReversePath | None = None) -> None:
        if workers < 0 or batch < 1:
            raise ValueError(f"worker pool needs workers >= 0 and batch >= 1, got {workers}, {batch}")
        self.store = store
        self.mapping_provider = mapping_provider
        self.workers = workers
        self.batch = batch
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.retry_policy = retry_policy or RetryPolicy()
        self.owner_id = owner_id or default_owner_id()
        self.retention = retention
        self.prune_every = prune_every
        self.executor = executor or Executor(store, client, emr_id_label=emr_id_label)
        self.reverse = reverse
        self._rng = random.Random(seed)
        self._wake = anyio.Event()
        self._stopping = False
        self._held: dict[int, _Held] = {}
        self._claims = itertools.count(1)

    # -- control ------------------------------------------------------------------------------
    def wake(self) -> None:
        """Claim now rather than at the next poll (a listener calls this after storing an envelope)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the envelopes held, claim no more, and let `run()` return."""
        self._stopping = True
        self._wake.set()

    @property
    def in_progress(self) -> int:
        return len(self._held)

    # -- main loop ----------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Process until `stop()` (returns once the held envelopes are finished) or cancellation
        (releases the held claims)."""
        logger.info("worker_pool_started", workers=self.workers, batch=self.batch, owner=self.owner_id)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pruner)
                async with anyio.create_task_group() as workers:
                    for index in range(self.workers):
                        workers.start_soon(self._worker, index)
                    task_status.started()
                tg.cancel_scope.cancel()   # the workers returned after stop(): end the pruner too
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_all()
            logger.info("worker_pool_stopped", owner=self.owner_id)

    async def _wait_wake(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        if self._wake.is_set() and not self._stopping:
            self._wake = anyio.Event()

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            claimed = await self._claim()
            if not claimed:
                await self._wait_wake(self.poll_seconds)
                continue
            await self._run_batch(claimed)

    def _owner(self, envelope: Envelope) -> str:
        """The lease owner of this claim (its token), or the pool's id for an envelope claimed by
        hand with it."""
        return envelope.lease_owner or self.owner_id

    async def _claim(self) -> list[Envelope]:
        # Each claim gets its own owner token: the store can then tell two claims of this very pool
        # apart, so a worker whose lease lapsed and was re-claimed by a sibling worker cannot extend,
        # complete or release the sibling's claim (one owner per process could).
        owner = f"{self.owner_id}/{next(self._claims)}"
        try:
            claimed = await self.store.claim(owner, limit=self.batch, lease=self.lease)
        except Exception as exc:   # StoreError: the store is down; keep polling, readiness reports it
            logger.warning("claim_failed", error_type=type(exc).__name__, owner=self.owner_id)
            await anyio.sleep(max(self.poll_seconds, 1.0))   # backoff while the store is unreachable
            return []
        for envelope in claimed:
            logger.info("envelope_claimed", envelope_id=envelope.id, kind=envelope.kind,
                        source=str(envelope.source), attempt=envelope.attempts + 1)
        return claimed

    async def _run_batch(self, claimed: list[Envelope]) -> None:
        held = [_Held(envelope) for envelope in claimed]
        for item in held:
            self._held[item.envelope.id] = item
        try:
            async with anyio.create_task_group() as tg:
                keeper = anyio.CancelScope()
                tg.start_soon(self._keep_leases, held, keeper)
                async with anyio.create_task_group() as work:
                    for item in held:
                        work.start_soon(self._process_held, item)
                keeper.cancel()
        finally:
            # Shutdown (or a lost lease) interrupted some: give them back so another worker or
            # process takes them at once rather than after the lease.
            with anyio.CancelScope(shield=True):
                for item in held:
                    self._held.pop(item.envelope.id, None)
                    if not item.finished and not item.lost:
                        await self._release(item.envelope)

    async def _keep_leases(self, held: list[_Held], scope: anyio.CancelScope) -> None:
        with scope:
            interval = max(self.lease.total_seconds() / 3, 0.05)
            while True:
                await anyio.sleep(interval)   # a timer, not synchronisation: leases are renewed periodically
                for item in held:
                    if item.envelope.id not in self._held or item.lost or item.finished:
                        continue
                    asked = time.monotonic()
                    try:
                        kept = await self.store.extend_lease(item.envelope.id, self._owner(item.envelope),
                                                             self.lease)
                    except Exception as exc:
                        logger.warning("lease_extend_failed", envelope_id=item.envelope.id,
                                       error_type=type(exc).__name__)
                        # Unconfirmed until the next try would be past the lease: another process
                        # may take the envelope over then, so stop applying it now.
                        if time.monotonic() + interval >= item.confirmed + self.lease.total_seconds():
                            item.lost = True
                            item.scope.cancel()
                            logger.warning("lease_unconfirmed", envelope_id=item.envelope.id,
                                           owner=self._owner(item.envelope))
                        continue
                    if kept:
                        item.confirmed = asked
                    if not kept:
                        item.lost = True
                        item.scope.cancel()
                        logger.warning("lease_lost", envelope_id=item.envelope.id, owner=self.owner_id)

    async def _process_held(self, item: _Held) -> None:
        with item.scope:
            await self.process(item.envelope)
            item.finished = True

    # -- one envelope -------------------------------------------------------------------------
    async def process(self, envelope: Envelope) -> None:
        """Map and apply one claimed envelope, then complete it, schedule its retry or dead-letter it."""
        started = time.perf_counter()
        source = str(envelope.source)
        try:
            if envelope.source in REVERSE_SOURCES:
                mapping_version, detail = await self._reverse(envelope)
            else:
                mapping_version, detail = await self._forward(envelope)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            await self._failed(envelope, exc)
            return
        elapsed = time.perf_counter() - started
        done = await self._store_call(self.store.complete(
            envelope.id, self._owner(envelope), mapping_version=mapping_version,
            detail={**detail, "ms": round(elapsed * 1000, 1)}))
        if done:
            metrics.COMPLETED.labels(source=source, kind=envelope.kind).inc()
            metrics.PROCESSING_SECONDS.labels(source=source).observe(elapsed)
            logger.info("envelope_completed", envelope_id=envelope.id, kind=envelope.kind,
                        mapping_version=mapping_version, elapsed_ms=round(elapsed * 1000, 1))
        elif done is False:
            logger.warning("lease_lost", envelope_id=envelope.id, owner=self._owner(envelope))

    async def _forward(self, envelope: Envelope) -> tuple[str | None, dict[str, Any]]:
        """EMR -> OnCall: map, then apply the operations in order."""
        if envelope.payload is None:
            raise PermanentError(
                f"envelope {envelope.id} has no payload (purged by retention)",
                hint="resend the message from the EMR; `queue drop ID --reason ...` to unblock")
        mapping_set = self.mapping_provider()
        # Raw bytes: the engine decodes them by the message's own charset (MSH-18).
        result = mapping_set.map(envelope.kind, envelope.payload, source=str(envelope.source))
        applied = await self.executor.execute(envelope, result)
        return result.mapping_version, {"ops": applied, "route": str(result.route or "")}

    async def _reverse(self, envelope: Envelope) -> tuple[str | None, dict[str, Any]]:
        """OnCall -> EMR, through the reverse executor (which audits what it did)."""
        if self.reverse is None:
            raise PermanentError(
                f"envelope {envelope.id} from {envelope.source} is for the EMR, and no EMR target is set",
                hint="set [emr] target (fhir, outbox or mllp), restart, then "
                     "`oncall-adapter queue retry --all`")
        outcome = await self.reverse.process(envelope)
        return getattr(outcome, "mapping_version", None), {"action": getattr(outcome, "action", "")}

    async def _failed(self, envelope: Envelope, exc: Exception) -> None:
        error = exc.error if isinstance(exc, OperationFailed) else exc
        attempt = envelope.attempts + 1
        now = utcnow()
        decision = self.retry_policy.decide(attempt, error, now, self._rng, since=envelope.received_at)
        reason = str(exc) if isinstance(exc, OperationFailed) else decision.reason
        source = str(envelope.source)
        fields: dict[str, Any] = {"envelope_id": envelope.id, "kind": envelope.kind, "attempt": attempt,
                                  "error_type": type(error).__name__,
                                  "status": getattr(error, "status", None)}
        if isinstance(exc, OperationFailed):
            fields.update(op=exc.index, op_kind=exc.op_kind)
        if isinstance(decision, RetryAt):
            retried = self.store.retry_at(envelope.id, self._owner(envelope), decision.at, reason)
            if await self._store_call(retried):
                metrics.RETRIED.labels(source=source, kind=envelope.kind).inc()
                logger.info("retry_scheduled", retry_in=round(decision.delay, 3), **fields)
        elif isinstance(decision, DeadLetter):
            if isinstance(exc, OperationFailed) and decision.reason not in reason:
                reason = f"{reason}; {decision.reason}"
            if await self._store_call(self.store.dead_letter(envelope.id, self._owner(envelope), reason)):
                metrics.DEAD_LETTERED.labels(source=source, kind=envelope.kind).inc()
                logger.warning("dead_lettered", **fields)
        elif isinstance(decision, LeaveClaim):
            logger.warning("claim_left_to_expire", **fields)

    async def _store_call(self, call: Any) -> bool | None:
        """A store write after processing; None when the store failed (the lease then expires)."""
        try:
            return bool(await call)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            logger.warning("store_write_failed", error_type=type(exc).__name__, error=describe_error(exc))
            return None

    async def _release_all(self) -> None:
        for item in list(self._held.values()):
            if not item.finished and not item.lost:
                await self._release(item.envelope)
        self._held.clear()

    async def _release(self, envelope: Envelope) -> None:
        try:
            if await self.store.release(envelope.id, self._owner(envelope)):
                logger.info("claim_released", envelope_id=envelope.id, owner=self._owner(envelope))
        except Exception as exc:
            logger.warning("release_failed", envelope_id=envelope.id, error_type=type(exc).__name__)

    # -- retention ----------------------------------------------------------------------------
    async def _pruner(self) -> None:
        while True:
            await self.prune_once()
            await anyio.sleep(self.prune_every.total_seconds())   # a schedule, not synchronisation

    async def prune_once(self, now: datetime | None = None) -> int:
        try:
            purged = await self.store.prune(older_than=(now or utcnow()) - self.retention)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            logger.warning("prune_failed", error_type=type(exc).__name__)
            return 0
        return purged   # the store logs `payloads_purged` with the count


def build_worker_pool(runtime: Any, client: Any, *, reverse: ReversePath | None = None) -> WorkerPool:
    """The pool as `oncall-adapter serve` runs it, from the runtime's config (composition root helper).
    `reverse`: the ReverseExecutor when [emr] target is set (webhook and scrape envelopes go to it)."""
    from adapter.reconcile.apply import ReconcileExecutor, with_reconcile

    config = runtime.config
    label = config.oncall.emr_id_field_label
    return WorkerPool(
        # Reconcile envelopes carry their operations already: the wrapped mapping set passes them
        # through, and the reconcile executor adds their compare-and-set kinds to the forward ones.
        runtime.store, with_reconcile(runtime.mappings.get), client,
        executor=ReconcileExecutor(runtime.store, client, emr_id_label=label),
        workers=config.workers.count, batch=config.workers.batch,
        lease=timedelta(seconds=config.store.lease_seconds), poll_seconds=config.workers.poll_seconds,
        retry_policy=RetryPolicy(base=config.retry.base_seconds, cap=config.retry.cap_seconds,
                                 max_attempts=config.retry.max_attempts),
        emr_id_label=label, owner_id=runtime.owner_id,
        retention=timedelta(days=config.retention.completed_days), reverse=reverse)
