"""Reading subscription notification Bundles (R4 backport, R4B, R5) and spotting event gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import FHIRInputError
from adapter.fhir.notifications import Notification, is_gap, parse_notification, split_reference

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir"


def _load(rel: str) -> dict:
    return json.loads((SAMPLES / rel).read_text(encoding="utf-8"))


APPT_5001 = [("Appointment", "appt-5001")]
APPT_6001 = [("Appointment", "appt-6001")]


@pytest.mark.parametrize(("rel", "version", "ntype", "count", "numbers", "n_resources", "references",
                          "empty"), [
    ("r4/notification-handshake.json", "R4", "handshake", 0, [], 0, [], False),
    ("r4/notification-heartbeat.json", "R4", "heartbeat", 2, [], 0, [], False),
    ("r4/notification-full-resource.json", "R4", "event-notification", 2, [1, 2], 2, [], False),
    ("r4/notification-id-only.json", "R4", "event-notification", 3, [3], 0, APPT_5001, False),
    ("r4/notification-empty.json", "R4", "event-notification", 4, [4], 0, [], True),
    ("r4b/notification-full-resource.json", "R4B", "event-notification", 1, [1], 1, [], False),
    ("r4b/notification-heartbeat.json", "R4B", "heartbeat", 1, [], 0, [], False),
    ("r5/notification-handshake.json", "R5", "handshake", 0, [], 0, [], False),
    ("r5/notification-heartbeat.json", "R5", "heartbeat", 2, [], 0, [], False),
    ("r5/notification-full-resource.json", "R5", "event-notification", 1, [1], 2, [], False),
    ("r5/notification-id-only.json", "R5", "event-notification", 2, [2], 0, APPT_6001, False),
    ("r5/notification-empty.json", "R5", "event-notification", 3, [3], 0, [], True),
])
def test_samples(rel: str, version: str, ntype: str, count: int, numbers: list[int], n_resources: int,
                 references: list[tuple[str, str]], empty: bool) -> None:
    """Each sample notification reads to its version, type, counter, events and content."""
    note = parse_notification(_load(rel))
    assert (note.version, note.type, note.events_since_start) == (version, ntype, count)
    assert note.event_numbers == numbers
    assert len(note.resources) == n_resources
    assert note.references == references
    assert note.empty is empty
    assert note.subscription == "https://emr.example.org/fhir/Subscription/oncall-appointments"


def test_full_resource_entries_keep_their_path() -> None:
    """Full-resource entries say where they sit, for error expressions."""
    note = parse_notification(_load("r4/notification-full-resource.json"))
    assert [r.where for r in note.resources] == ["Bundle.entry[1].resource", "Bundle.entry[2].resource"]


def test_focus_without_entry_is_id_only() -> None:
    """A focus whose resource is not in the Bundle is read by reference."""
    bundle = _load("r5/notification-id-only.json")
    bundle["entry"] = bundle["entry"][:1]
    assert parse_notification(bundle).references == [("Appointment", "appt-6001")]


@pytest.mark.parametrize(("mutate", "expression"), [
    (lambda b: b.update(type="searchset"), "Bundle.type"),
    (lambda b: b.update(entry=[]), "Bundle.entry"),
    (lambda b: b.update(resourceType="Patient"), "resourceType"),
    (lambda b: b["entry"][0]["resource"].update(type="party"), "Bundle.entry[0].resource.type"),
    (lambda b: b["entry"][0]["resource"].update(eventsSinceSubscriptionStart="many"),
     "Bundle.entry[0].resource.eventsSinceSubscriptionStart"),
])
def test_not_a_notification(mutate, expression: str) -> None:  # type: ignore[no-untyped-def]
    """Bundles that are not notifications are 400s naming the place."""
    bundle = _load("r5/notification-heartbeat.json")
    mutate(bundle)
    with pytest.raises(FHIRInputError) as info:
        parse_notification(bundle)
    assert info.value.status == 400
    assert info.value.expression == expression


@pytest.mark.parametrize(("ref", "expected"), [
    ("Patient/1", ("Patient", "1")),
    ("https://emr.example.org/fhir/Appointment/a-9", ("Appointment", "a-9")),
    ("https://emr.example.org/fhir/Patient/7/_history/3", ("Patient", "7")),
    ("urn:uuid:9e1f0000-0000-4000-8000-000000000001", None),
    ("#contained", None),
    ("", None),
])
def test_split_reference(ref: str, expected: tuple[str, str] | None) -> None:
    """Literal references split into (type, id); urn and contained references name no server resource."""
    assert split_reference(ref) == expected


@given(st.from_regex(r"[A-Z][a-zA-Z]{1,12}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
       st.sampled_from(["", "https://emr.example.org/fhir/", "http://h:8080/base/"]))
def test_split_reference_roundtrip(rtype: str, rid: str, prefix: str) -> None:
    """Whatever the base, Type/id comes back as it went in."""
    assert split_reference(f"{prefix}{rtype}/{rid}") == (rtype, rid)


def _note(ntype: str, count: int | None, numbers: list[int]) -> Notification:
    return Notification(version="R5", type=ntype, subscription="Subscription/s", topic=None,
                        events_since_start=count, event_numbers=numbers)


@pytest.mark.parametrize(("ntype", "count", "numbers", "last", "gap"), [
    ("event-notification", 5, [5], 4, False),      # the next one
    ("event-notification", 7, [7], 4, True),       # 5 and 6 never came
    ("event-notification", 6, [5, 6], 4, False),   # two at once
    ("event-notification", 4, [3], 4, False),      # a late or repeated delivery
    ("event-notification", 9, [9], None, False),   # nothing known yet
    ("heartbeat", 4, [], 4, False),
    ("heartbeat", 6, [], 4, True),                 # events happened that we never received
    ("handshake", 0, [], 12, False),               # the subscription starts over
    ("event-notification", 6, [], 4, True),        # no event numbers: the counter alone tells
])
def test_is_gap(ntype: str, count: int, numbers: list[int], last: int | None, gap: bool) -> None:
    """A gap is an event number (or counter) beyond what the last notification brought."""
    assert is_gap(_note(ntype, count, numbers), last) is gap


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=50))
def test_consecutive_events_never_gap(last: int, k: int) -> None:
    """A notification carrying the next k events after `last` is never a gap."""
    numbers = list(range(last + 1, last + 1 + k))
    assert not is_gap(_note("event-notification", numbers[-1], numbers), last)
