"""How the worker applies RECONCILE envelopes, with no change to the pool's loop.

Two pieces, both passed to `WorkerPool` by the composition root:

- `with_reconcile(mapping_provider)`: a mapping provider whose set maps a RECONCILE envelope by
  reading its payload (the operations themselves; no mapping file involved) and hands every other
  envelope to the configured mapping set.
- `ReconcileExecutor`: the executor, plus the compare-and-set kinds of `adapter.reconcile.ops`.

    WorkerPool(store, with_reconcile(runtime.mappings.get), client,
               executor=ReconcileExecutor(store, client, emr_id_label=label), ...)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from adapter.envelope import Source
from adapter.mapping.engine import MappingResult
from adapter.oncall.models import Appointment, Contact
from adapter.oncall.urls import object_id
from adapter.reconcile.fields import appointment_field, contact_field, same
from adapter.reconcile.ops import parse_operations
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.executor import Executor
from adapter.worker.upserts import Applied

__all__ = ["RECONCILE_MAPPING_VERSION", "ReconcileExecutor", "ReconcileMappings", "with_reconcile"]

logger = structlog.get_logger(__name__)
RECONCILE_MAPPING_VERSION = "reconcile-1"


class ReconcileMappings:
    """A mapping set view: RECONCILE payloads are parsed as operations, the rest goes to `inner`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def map(self, kind: str, payload: str | bytes, *, source: str) -> Any:
        if str(source) == Source.RECONCILE.value:
            return MappingResult("reconcile", parse_operations(payload), RECONCILE_MAPPING_VERSION)
        return self.inner.map(kind, payload, source=source)

    def __getattr__(self, name: str) -> Any:   # version, has_route ... of the wrapped set
        return getattr(self.inner, name)


def with_reconcile(provider: Callable[[], Any]) -> Callable[[], ReconcileMappings]:
    """Wrap a mapping provider (called per envelope, so a reload is still picked up)."""
    return lambda: ReconcileMappings(provider())


class ReconcileExecutor(Executor):
    def __init__(self, store: Store, client: Any, *, emr_id_label: str = "EMR id") -> None:
        super().__init__(store, client, emr_id_label=emr_id_label)
        self.emr_id_label = emr_id_label

    async def apply(self, op: Any, envelope_id: int) -> Applied:
        kind = op.kind
        if kind == "contact_set_emr_id":
            return await self._set_emr_id(op)
        if kind == "contact_patch":
            return await self._contact_patch(op)
        if kind == "appointment_patch":
            return await self._appointment_patch(op)
        if kind == "xref_link":
            return await self._link(op)
        if kind == "xref_unlink":
            return await self._unlink(op)
        return await super().apply(op, envelope_id)

    async def _set_emr_id(self, op: Any) -> Applied:
        contact: Contact = await self.client.get_contact(op.contact_url)
        current = contact.custom_value(self.emr_id_label)
        if current not in (None, "", False):
            action = "unchanged" if str(current) == op.emr_patient_id else "skipped_changed_since_report"
            return Applied(op.kind, action, "contacts", contact.id)
        field_id = await self.client.custom_field_id(self.emr_id_label)
        await self.client.patch_contact(contact.url, {"custom_field_values": {field_id: op.emr_patient_id}})
        known = await self.store.xref_get(xref.PATIENT, op.emr_patient_id)
        if known is not None and known.target == contact.url and known.detail.get("emr_id") is False:
            detail = {k: v for k, v in known.detail.items() if k != "emr_id"}
            await self.store.xref_put(xref.PATIENT, op.emr_patient_id, contact.url, detail)
        return Applied(op.kind, "patched", "contacts", contact.id)

    async def _contact_patch(self, op: Any) -> Applied:
        contact: Contact = await self.client.get_contact(op.contact_url)
        changes = _still_drifted(op, lambda name: contact_field(contact, name))
        if changes:
            await self.client.patch_contact(contact.url, changes)
            await self._rehash(xref.PATIENT, op.emr_patient_id, contact.url, changes)
        return Applied(op.kind, _action(op, changes), "contacts", contact.id, len(changes))

    async def _appointment_patch(self, op: Any) -> Applied:
        appointment: Appointment = await self.client.get_appointment(op.appointment_url)
        if appointment.cancelled:
            return Applied(op.kind, "skipped_cancelled", "appointments", appointment.id)
        changes = _still_drifted(op, lambda name: appointment_field(appointment, name))
        if changes:
            await self.client.patch_appointment(appointment.url, changes)
            extra = {"start": changes["datetime"]} if "datetime" in changes else {}
            await self._rehash(xref.APPOINTMENT, op.emr_appointment_id, appointment.url, changes, extra)
        return Applied(op.kind, _action(op, changes), "appointments", appointment.id, len(changes))

    async def _rehash(self, namespace: str, source_id: str, url: str, changes: dict[str, Any],
                      extra: dict[str, Any] | None = None) -> None:
        """Record the values sent, so the feed's next "send only what changed" compares with them."""
        known = await self.store.xref_get(namespace, source_id)
        if known is None or known.target != url:
            return
        hashes = {**known.detail.get("h", {}), **xref.field_hashes(changes)}
        await self.store.xref_put(namespace, source_id, url, {**known.detail, **(extra or {}), "h": hashes})

    async def _link(self, op: Any) -> Applied:
        known = await self.store.xref_get(op.namespace, op.source_id)
        current = known.target if known is not None else None
        if current == op.target:
            return Applied(op.kind, "unchanged", _collection(op.target), _id(op.target))
        if current != op.replaces:
            return Applied(op.kind, "skipped_changed_since_report", _collection(op.target), _id(op.target))
        # No hashes for the new target: the feed's next update then sends every field once.
        await self.store.xref_put(op.namespace, op.source_id, op.target, {})
        logger.info("xref_relinked", namespace=op.namespace, object_id=_id(op.target))
        return Applied(op.kind, "linked", _collection(op.target), _id(op.target), 1)

    async def _unlink(self, op: Any) -> Applied:
        known = await self.store.xref_get(op.namespace, op.source_id)
        if known is None:
            return Applied(op.kind, "unchanged")
        if known.target != op.target:
            return Applied(op.kind, "skipped_changed_since_report")
        await self.store.xref_delete(op.namespace, op.source_id)
        return Applied(op.kind, "unlinked", _collection(op.target), _id(op.target), 1)


def _still_drifted(op: Any, current: Callable[[str], Any]) -> dict[str, Any]:
    """The fields to send: those still holding the value the report saw (and not already right)."""
    changes: dict[str, Any] = {}
    for name, value in op.set.items():
        now = current(name)
        if same(name, now, value):
            continue
        if name in op.expect and not same(name, now, op.expect[name]):
            continue   # changed since the report: the newer value wins
        changes[name] = value
    return changes


def _action(op: Any, changes: dict[str, Any]) -> str:
    if changes:
        return "patched" if len(changes) == len(op.set) else "patched_partly"
    return "unchanged"


def _collection(url: str) -> str | None:
    parts = [p for p in url.split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


def _id(url: str) -> int | None:
    try:
        return object_id(url)
    except Exception:   # a target that is not an OnCall URL ("intent") has no id to log
        return None
