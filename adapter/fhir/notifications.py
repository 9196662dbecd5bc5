"""Topic-based subscription notifications, read into one shape whatever the FHIR version.

Three wire forms carry the same thing:
- R5: a Bundle of type ``subscription-notification`` whose first entry is a ``SubscriptionStatus``;
- R4B: a ``history`` Bundle whose first entry is a ``SubscriptionStatus`` (R4B's own resource);
- R4 (the Subscriptions R5 Backport IG): a ``history`` Bundle whose first entry is a ``Parameters``
  with the backport's status parameters (``events-since-subscription-start``, ``notification-event``...).

An event's content is full-resource (the resource is in the Bundle), id-only (only its reference is
there: read it from the EMR server) or empty (nothing: ask the EMR server what changed).
`parse_notification` does no I/O; what to fetch is returned as references.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapter.errors import FHIRInputError
from adapter.fhir.validate import FHIRVersion, validate_resource

__all__ = ["BundledResource", "Notification", "is_gap", "parse_notification", "split_reference"]

NOTIFICATION_TYPES = frozenset({"handshake", "heartbeat", "event-notification", "query-status",
                                "query-event"})


@dataclass(frozen=True, slots=True)
class BundledResource:
    """A resource carried in the notification: where it sits (for error paths) and its JSON."""

    where: str                       # e.g. "Bundle.entry[1].resource"
    data: dict[str, Any]
    full_url: str | None


@dataclass(frozen=True, slots=True)
class Notification:
    version: FHIRVersion             # "R4" (backport Parameters), "R4B" or "R5"
    type: str                        # handshake | heartbeat | event-notification | query-status | query-event
    subscription: str | None         # the Subscription's reference, e.g. "Subscription/abc"
    topic: str | None
    events_since_start: int | None
    event_numbers: list[int] = field(default_factory=list)
    resources: list[BundledResource] = field(default_factory=list)     # full-resource content
    references: list[tuple[str, str]] = field(default_factory=list)    # id-only content: (type, id)

    @property
    def carries_events(self) -> bool:
        return self.type in ("event-notification", "query-event")

    @property
    def empty(self) -> bool:
        """An event notification with no content at all: the receiver must ask what changed."""
        return self.carries_events and not self.resources and not self.references


def split_reference(ref: str) -> tuple[str, str] | None:
    """(type, id) of a literal reference: ``Patient/1``, ``https://x/fhir/Patient/1/_history/3``.
    None for what names no resource on a server (``urn:uuid:...``, ``#contained``)."""
    if not ref or ref.startswith(("urn:", "#")):
        return None
    parts = [p for p in ref.split("?")[0].split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FHIRInputError("expected an integer, got a boolean", expression=where, status=400)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FHIRInputError("expected an integer (integer64 may be a JSON string)", expression=where,
                             status=400, hint="send the event count as digits") from None


def _ref(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _status_from_parameters(params: dict[str, Any], where: str) -> dict[str, Any]:
    """The backport's Parameters as the fields of an R4B/R5 SubscriptionStatus."""
    out: dict[str, Any] = {"notificationEvent": []}
    for i, p in enumerate(params.get("parameter") or []):
        name = p.get("name")
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        here = f"{where}.parameter[{i}]"
        if name == "subscription":
            out["subscription"] = value
        elif name == "topic":
            out["topic"] = value
        elif name == "status":
            out["status"] = value
        elif name == "type":
            out["type"] = value
        elif name == "events-since-subscription-start":
            out["eventsSinceSubscriptionStart"] = _int(value, f"{here}.value")
        elif name == "notification-event":
            event: dict[str, Any] = {}
            for j, part in enumerate(p.get("part") or []):
                pvalue = next((v for k, v in part.items() if k.startswith("value")), None)
                if part.get("name") == "event-number":
                    event["eventNumber"] = _int(pvalue, f"{here}.part[{j}].value")
                elif part.get("name") == "focus":
                    event["focus"] = pvalue
            out["notificationEvent"].append(event)
    return out


def parse_notification(bundle: dict[str, Any]) -> Notification:
    """Read a notification Bundle; FHIRInputError (400) with a path when it is not one."""
    if bundle.get("resourceType") != "Bundle":
        raise FHIRInputError("expected a notification Bundle", expression="resourceType", status=400,
                             hint="POST a subscription-notification (R5) or history (R4/R4B backport) Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise FHIRInputError("a notification Bundle starts with its status entry", expression="Bundle.entry",
                             status=400)
    status = entries[0].get("resource")
    status_type = status.get("resourceType") if isinstance(status, dict) else None
    btype = bundle.get("type")
    where = "Bundle.entry[0].resource"
    version: FHIRVersion
    if btype == "subscription-notification" and status_type == "SubscriptionStatus":
        version = "R5"
    elif btype == "history" and status_type == "SubscriptionStatus":
        version = "R4B"
    elif btype == "history" and status_type == "Parameters":
        version = "R4"
    else:
        raise FHIRInputError(f"Bundle.type {btype!r} with a first entry of type {status_type!r} is not a "
                             "subscription notification", expression="Bundle.type", status=400,
                             hint="expected subscription-notification + SubscriptionStatus (R5), "
                                  "history + SubscriptionStatus (R4B) or history + Parameters (R4 backport)")
    assert isinstance(status, dict)
    # Structure of the status resource itself (R4 backport Parameters read with R4B's model).
    validate_resource(status, version="R4B" if version == "R4" else version, where=where)
    fields = _status_from_parameters(status, where) if version == "R4" else status
    ntype = fields.get("type")
    if ntype not in NOTIFICATION_TYPES:
        raise FHIRInputError(f"notification type {ntype!r} is unknown (allowed: "
                             f"{', '.join(sorted(NOTIFICATION_TYPES))})", expression=f"{where}.type",
                             status=400)
    numbers: list[int] = []
    focus_refs: list[tuple[str, str]] = []
    for i, event in enumerate(fields.get("notificationEvent") or []):
        number = _int(event.get("eventNumber"), f"{where}.notificationEvent[{i}].eventNumber")
        if number is not None:
            numbers.append(number)
        focus = split_reference(_ref(event.get("focus")) or "")
        if focus:
            focus_refs.append(focus)
    resources: list[BundledResource] = []
    references: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, entry in enumerate(entries[1:], start=1):
        if not isinstance(entry, dict):
            raise FHIRInputError("a Bundle entry is not an object", expression=f"Bundle.entry[{i}]",
                                 status=400)
        resource = entry.get("resource")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        if isinstance(resource, dict):
            resources.append(BundledResource(f"Bundle.entry[{i}].resource", resource, full_url))
            rid = resource.get("id")
            if isinstance(rid, str):
                seen.add((str(resource.get("resourceType")), rid))
            elif full_url and (ref := split_reference(full_url)):
                seen.add(ref)
        elif full_url and (ref := split_reference(full_url)) and ref not in seen:
            references.append(ref)
            seen.add(ref)
    references.extend(ref for ref in dict.fromkeys(focus_refs) if ref not in seen)
    return Notification(version=version, type=ntype, subscription=_ref(fields.get("subscription")),
                        topic=fields.get("topic") if isinstance(fields.get("topic"), str) else None,
                        events_since_start=_int(fields.get("eventsSinceSubscriptionStart"),
                                                f"{where}.eventsSinceSubscriptionStart"),
                        event_numbers=numbers, resources=resources, references=references)


def is_gap(note: Notification, last: int | None) -> bool:
    """True when events were generated that no notification brought us (R5 / backport counter)."""
    if last is None or note.type == "handshake":
        return False           # nothing known yet: the first delivery sets the counter
    if note.carries_events:
        if note.event_numbers:
            return min(note.event_numbers) > last + 1
        if note.events_since_start is not None:
            return note.events_since_start > last + max(1, len(note.resources) + len(note.references))
        return False
    return note.events_since_start is not None and note.events_since_start > last
