"""Prometheus metrics: the one place they are defined.

Counters and the latency histogram are updated where things happen (listeners, workers); the
queue gauges are read from the store when `/metrics` is scraped, so they are never stale and
several processes sharing one PostgreSQL report the same queue.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from adapter.envelope import Appended, AppendOutcome, State, utcnow
from adapter.store.base import QueueStats

__all__ = [
    "COMPLETED", "DEAD_LETTERED", "DUPLICATES", "PROCESSING_SECONDS", "RECEIVED", "REGISTRY", "REJECTED",
    "RETRIED", "count_appended", "render", "update_queue_gauges",
]

REGISTRY = CollectorRegistry(auto_describe=True)

RECEIVED = Counter("oncall_adapter_envelopes_received", "Envelopes stored (new, not duplicates)",
                   ["source", "kind"], registry=REGISTRY)
REJECTED = Counter("oncall_adapter_envelopes_rejected", "Envelopes refused at the edge (stored with reason)",
                   ["source", "kind"], registry=REGISTRY)
DUPLICATES = Counter("oncall_adapter_envelopes_duplicate", "Deliveries recognised as duplicates",
                     ["source"], registry=REGISTRY)
COMPLETED = Counter("oncall_adapter_envelopes_completed", "Envelopes applied", ["source", "kind"],
                    registry=REGISTRY)
RETRIED = Counter("oncall_adapter_envelopes_retried", "Retries scheduled", ["source", "kind"],
                  registry=REGISTRY)
DEAD_LETTERED = Counter("oncall_adapter_envelopes_dead_lettered", "Envelopes sent to the dead letter",
                        ["source", "kind"], registry=REGISTRY)
PROCESSING_SECONDS = Histogram(
    "oncall_adapter_processing_seconds", "From claim to completion of one envelope",
    ["source"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

_QUEUE_DEPTH = Gauge("oncall_adapter_queue_depth", "Envelopes by state", ["state"], registry=REGISTRY)
_OLDEST = Gauge("oncall_adapter_oldest_waiting_seconds", "Age of the oldest waiting envelope",
                registry=REGISTRY)
_DEAD = Gauge("oncall_adapter_dead_letter_depth", "Envelopes in the dead letter", registry=REGISTRY)
_BLOCKED = Gauge("oncall_adapter_blocked_keys", "Ordering keys waiting behind a dead letter",
                 registry=REGISTRY)
_SIZE = Gauge("oncall_adapter_store_size_bytes", "Size of the store", registry=REGISTRY)


def count_appended(appended: Appended) -> None:
    """Count one append at the edge that made it: received, rejected (kept with its reason) or duplicate."""
    env = appended.envelope
    source = str(env.source)
    if appended.outcome is AppendOutcome.DUPLICATE:
        DUPLICATES.labels(source=source).inc()
    elif env.state in (State.REJECTED, State.QUARANTINED):
        REJECTED.labels(source=source, kind=env.kind).inc()
    else:
        RECEIVED.labels(source=source, kind=env.kind).inc()


def update_queue_gauges(stats: QueueStats, now: datetime | None = None) -> None:
    now = now or utcnow()
    for state in State:
        _QUEUE_DEPTH.labels(state=state.value).set(stats.by_state.get(state.value, 0))
    _OLDEST.set((now - stats.oldest_waiting).total_seconds() if stats.oldest_waiting else 0)
    _DEAD.set(stats.by_state.get(State.DEAD.value, 0))
    _BLOCKED.set(stats.blocked_keys)
    _SIZE.set(stats.size_bytes)


def render() -> bytes:
    return generate_latest(REGISTRY)
