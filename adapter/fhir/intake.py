"""What the FHIR listener does with what arrives, without HTTP: validate, envelope, store, catch up.

- `accept_resource`: one resource delivered alone (R4 rest-hook with payload).
- `accept_notification`: a topic-based notification Bundle: full-resource entries are stored,
  id-only references are read from the EMR server, an empty event or a gap in the
  events-since-start counter triggers a catch-up.
- `catch_up`: asks the EMR server what changed since the last check (``_lastUpdated``) for each
  configured criteria (R4 rest-hook without payload, empty events, gaps).

Durable state lives in the store's kv: ``fhir:cursor:<criteria>`` (the newest meta.lastUpdated
seen) and ``fhir:events:<subscription>`` (the events-since-start counter). Both move only after
the envelopes they cover are committed, so a failure means the next delivery asks again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import anyio
import structlog

from adapter import metrics
from adapter.envelope import Appended, AppendOutcome, NewEnvelope, State, utcnow
from adapter.errors import ConfigError, FHIRInputError, PermanentError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.fhir.envelopes import OrderingKeys, new_envelope, rejected_envelope
from adapter.fhir.notifications import Notification, is_gap, parse_notification
from adapter.fhir.validate import FHIRVersion, Issue, Resource, canonical_bytes, validate_resource
from adapter.reverse.loop import is_reverse_write
from adapter.store.base import Store

__all__ = ["DEFAULT_TYPES", "FHIRIntake", "IntakeResult"]

log = structlog.get_logger(__name__)
DEFAULT_TYPES = ("Patient", "Appointment")


@dataclass(slots=True)
class IntakeResult:
    """What one delivery led to: the store's answers, and the problems of refused resources."""

    appended: list[Appended] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    refused_status: int = 422
    caught_up: int = 0               # resources fetched by a catch-up
    gap: bool = False

    @property
    def stored(self) -> int:
        return sum(a.outcome is AppendOutcome.STORED for a in self.appended)

    @property
    def duplicates(self) -> int:
        return sum(a.outcome is AppendOutcome.DUPLICATE for a in self.appended)


class FHIRIntake:
    def __init__(self, store: Store, *, emr: EMRFHIRClient | None = None, version: FHIRVersion = "R4",
                 criteria: Sequence[str] = DEFAULT_TYPES, types: Sequence[str] = DEFAULT_TYPES,
                 patient_identifier_system: str | None = None,
                 catchup_lookback: timedelta = timedelta(hours=24),
                 oncall_base_url: str | None = None) -> None:
        self.store = store
        self.oncall_base_url = oncall_base_url   # recognises what the reverse path wrote to the EMR
        self.emr = emr
        self.version = version
        self.criteria = list(criteria)
        self.types = frozenset(types)
        self.keys = OrderingKeys(store, mrn_system=patient_identifier_system)
        self.catchup_lookback = catchup_lookback
        self._catchup_lock = anyio.Lock()

    # -- one resource ---------------------------------------------------------------------------
    async def accept_resource(self, body: bytes, data: dict[str, object], *, resource_type: str,
                              url_id: str, version: FHIRVersion | None = None) -> Appended:
        """Validate and store a resource PUT/POSTed to ``Type/id``; refusals are stored REJECTED
        and raised (FHIRInputError) for the 4xx answer."""
        version = version or self.version
        try:
            resource = validate_resource(data, version=version, expected_type=resource_type)
            if resource.id is not None and resource.id != url_id:
                raise FHIRInputError(f"the body's id {resource.id!r} differs from the URL's {url_id!r}",
                                     expression=f"{resource_type}.id", status=400,
                                     hint="an update carries the id of the URL it is sent to")
        except FHIRInputError as exc:
            await self._append_one(rejected_envelope(body, str(exc), kind=resource_type,
                                                     delivery="rest-hook", extra={"resource_id": url_id}))
            raise
        if resource.id is None:
            resource = Resource(resource.resource_type, url_id, resource.version_id, resource.data, version)
        # Canonical bytes, as for Bundle entries and reads: the same version delivered by two routes
        # (rest-hook, then a catch-up read) is then a duplicate, not a content conflict.
        envelope = await self._envelope(resource, canonical_bytes(data), delivery="rest-hook")
        return await self._append_one(envelope)

    # -- notification Bundles -----------------------------------------------------------------
    async def accept_notification(self, bundle: dict[str, object]) -> tuple[Notification, IntakeResult]:
        note = parse_notification(bundle)
        result = IntakeResult()
        extra = {"subscription": note.subscription or "", "notification": note.type}
        news: list[NewEnvelope] = []
        bundled = {(str(r.data.get("resourceType")), str(r.data.get("id"))): r.data for r in note.resources}
        for item in note.resources:
            kind = str(item.data.get("resourceType"))
            if kind not in self.types:
                continue
            payload = canonical_bytes(item.data)
            try:
                resource = validate_resource(item.data, version=note.version, where=item.where)
                if resource.id is None:
                    raise FHIRInputError("the resource has no id", expression=f"{item.where}.id",
                                         hint="a notification names each resource by its id")
            except FHIRInputError as exc:
                result.issues.extend(_issues(exc))
                result.refused_status = min(result.refused_status, exc.status)
                news.append(rejected_envelope(payload, str(exc), kind=kind, delivery="notification",
                                              extra=extra))
                continue
            news.append(await self._envelope(resource, payload, delivery="notification", extra=extra,
                                             bundled=bundled))
        if note.references:
            news.extend(await self._read_each(note, extra))
        result.appended = await self._append(news)
        last = await self._counter(note.subscription)
        result.gap = is_gap(note, last)
        if result.gap:
            log.warning("fhir_event_gap", count=len(note.event_numbers),
                        events_since_start=note.events_since_start, last_seen=last)
        if (note.empty or result.gap) and (self.emr is not None or note.empty):
            caught = await self.catch_up(reason="gap" if result.gap else "empty_notification")
            result.caught_up = len(caught.appended)
            result.issues.extend(caught.issues)
        await self._advance_counter(note, last)
        return note, result

    async def _read_each(self, note: Notification, extra: dict[str, str]) -> list[NewEnvelope]:
        """Id-only content: read each referenced resource of an accepted type from the EMR server.
        References to other types (an Encounter focus, say) need no read, hence no EMR server."""
        wanted = [(rtype, rid) for rtype, rid in note.references if rtype in self.types]
        if not wanted:
            return []
        emr = self.require_emr("id-only notifications")
        news: list[NewEnvelope] = []
        for rtype, rid in wanted:
            try:
                data = await emr.read(rtype, rid)
            except PermanentError as exc:
                if exc.status in (404, 410):      # deleted since: nothing left to sync
                    log.info("fhir_resource_gone", resource_type=rtype, status=exc.status)
                    continue
                raise
            news.append(await self._fetched(data, delivery="id-only", extra=extra))
        return news

    # -- catch-up -------------------------------------------------------------------------------
    async def catch_up(self, *, reason: str) -> IntakeResult:
        """Store whatever changed on the EMR server since the last check, for every criteria."""
        emr = self.require_emr("notifications without payload")
        result = IntakeResult()
        async with self._catchup_lock:   # one catch-up at a time: cursors move forward only
            for criteria in self.criteria:
                rtype, _, query = criteria.partition("?")
                cursor_key = f"fhir:cursor:{criteria}"
                cursor = await self.store.kv_get(cursor_key)
                since = datetime.fromisoformat(cursor.replace("Z", "+00:00")) if cursor \
                    else utcnow() - self.catchup_lookback
                params = [tuple(p.split("=", 1)) for p in query.split("&") if "=" in p]
                news: list[NewEnvelope] = []
                newest = cursor
                async for data in emr.search(rtype, params, since=since):   # type: ignore[arg-type]
                    news.append(await self._fetched(data, delivery="catch-up", extra={"reason": reason}))
                    updated = (data.get("meta") or {}).get("lastUpdated")
                    if isinstance(updated, str) and (newest is None or _instant(updated) > _instant(newest)):
                        newest = updated
                appended = await self._append(news)
                result.appended.extend(appended)
                if newest and newest != cursor:
                    await self.store.kv_put(cursor_key, newest)
                log.info("fhir_catch_up", route=criteria, reason_code=reason, count=len(news),
                         duplicate=sum(a.outcome is AppendOutcome.DUPLICATE for a in appended))
        result.caught_up = len(result.appended)
        return result

    # -- helpers --------------------------------------------------------------------------------
    def require_emr(self, what: str) -> EMRFHIRClient:
        if self.emr is None:
            raise ConfigError("fhir.emr_base_url", None,
                              f"set the EMR's FHIR server (and its credentials) to accept {what}")
        return self.emr

    async def _fetched(self, data: dict[str, object], *, delivery: str, extra: dict[str, str]) -> NewEnvelope:
        payload = canonical_bytes(data)
        kind = str(data.get("resourceType"))
        try:
            resource = validate_resource(data, version=self.version)
        except FHIRInputError as exc:
            log.warning("fhir_fetched_invalid", resource_type=kind, location=exc.expression)
            return rejected_envelope(payload, str(exc), kind=kind, delivery=delivery, extra=extra)
        return await self._envelope(resource, payload, delivery=delivery, extra=extra)

    async def _envelope(self, resource: Resource, payload: bytes, *, delivery: str,
                        extra: dict[str, str] | None = None,
                        bundled: dict[tuple[str, str], dict[str, object]] | None = None) -> NewEnvelope:
        key = await self.keys.key_for(resource, bundled=bundled)
        if resource.resource_type == "Patient" and resource.id:
            await self.keys.remember(resource.id, key)
        new = new_envelope(resource, payload, ordering_key=key, delivery=delivery, extra=extra)
        if self.oncall_base_url and is_reverse_write(resource.data, self.oncall_base_url):
            # Loop prevention, the forward half: a resource the reverse path wrote (it carries an
            # identifier of an OnCall collection) came back through the EMR's subscription.
            return replace(new, state=State.REJECTED,
                           reason="written to the EMR by this adapter from OnCall (identifier system "
                                  f"{self.oncall_base_url}/...): not sent back to OnCall")
        return new

    async def _append_one(self, new: NewEnvelope) -> Appended:
        return (await self._append([new]))[0]

    async def _append(self, news: list[NewEnvelope]) -> list[Appended]:
        if not news:
            return []
        appended = await self.store.append_many(news)
        for a in appended:
            env = a.envelope
            metrics.count_appended(a)
            log.info("envelope_stored", envelope_id=env.id, source="fhir", kind=env.kind,
                     outcome=a.outcome.value, state=env.state.value, content_hash=env.content_hash[:16])
        return appended

    async def _counter(self, subscription: str | None) -> int | None:
        value = await self.store.kv_get(f"fhir:events:{subscription}") if subscription else None
        return int(value) if value else None

    async def _advance_counter(self, note: Notification, last: int | None) -> None:
        if not note.subscription:
            return
        seen = [n for n in (note.events_since_start, *note.event_numbers) if n is not None]
        if note.type == "handshake" and note.events_since_start is not None:
            new = note.events_since_start          # a (re)created subscription starts over
        elif seen:
            new = max(seen + ([last] if last is not None else []))
        else:
            return
        if new != last:
            await self.store.kv_put(f"fhir:events:{note.subscription}", str(new))


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _issues(exc: FHIRInputError) -> list[Issue]:
    issues = getattr(exc, "issues", None)
    return list(issues) if issues else [Issue(exc.expression, exc.message)]

