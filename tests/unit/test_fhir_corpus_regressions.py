"""Regressions found by running real-world FHIR resources (spec examples, Cerner, Synthea, the
Subscriptions Backport IG) through the adapter (issue 7). Each test uses a small synthetic resource of
the shape that broke, not the third-party file."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.fhir.notifications import parse_notification
from adapter.fhir.validate import FHIRValidationError, validate_resource
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import load_mapping_set

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIVISION = "http://127.0.0.1:8900/divisions/1/"
DEFAULT_PROVIDER = "http://127.0.0.1:8900/providers/1/"


@functools.cache
def _shipped() -> MappingSet:
    return load_mapping_set([ROOT / "mappings"])


@pytest.fixture(scope="module")
def mapping_set() -> MappingSet:
    return _shipped()


def run(ms: MappingSet, data: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    result = ms.map(data["resourceType"], json.dumps(data).encode(), source="fhir")
    return result.route, [op.to_json() for op in result.operations]


def appointment(*participants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": "ap-1", "status": "booked",
            "start": "2030-03-04T15:00:00Z", "end": "2030-03-04T15:20:00Z",
            "participant": list(participants), **extra}


def actor(reference: str | None = None, display: str | None = None,
          status: str = "accepted") -> dict[str, Any]:
    ref = {k: v for k, v in (("reference", reference), ("display", display)) if v is not None}
    return {"actor": ref, "status": status}


def test_two_practitioners_and_a_display_only_actor_map(mapping_set: MappingSet) -> None:
    """An Appointment with two Practitioners, two Locations and an actor with only a display (the
    spec's appointment-example2doctors shape) maps; it was dead-lettered with a bare FHIRPath
    'Exception' because replace() met two strings."""
    data = appointment(actor("Patient/p-9", "Lee, Ann"), actor("Practitioner/dr-1", "Dr One"),
                       actor("Practitioner/dr-2", "Dr Two"), actor("Location/l-1"), actor("Location/l-2"),
                       actor(display="Phone Call"))
    route, ops = run(mapping_set, data)
    assert route == "Appointment"
    (op,) = ops
    assert op["participants"] == [{"emr_patient_id": "p-9", "name": "Lee, Ann"}]
    assert op["duration"] == 20 and op["datetime"] == "2030-03-04T15:00:00Z"
    assert op["division"] == DEFAULT_DIVISION and op["provider"] == DEFAULT_PROVIDER


def test_patient_with_several_general_practitioners_maps(mapping_set: MappingSet) -> None:
    """A Patient naming two general practitioners (an Organization and two Practitioners) maps to one
    contact_upsert instead of failing on replace() over a collection."""
    data = {"resourceType": "Patient", "id": "p-2", "name": [{"family": "Roy", "given": ["Lou"]}],
            "generalPractitioner": [{"reference": "Organization/o-1"}, {"reference": "Practitioner/a"},
                                    {"reference": "Practitioner/b"}],
            "managingOrganization": {"reference": "https://emr.example.org/fhir/Organization/o-1"}}
    route, ops = run(mapping_set, data)
    assert route == "Patient"
    assert ops[0]["provider"] == DEFAULT_PROVIDER and ops[0]["division"] == DEFAULT_DIVISION


@pytest.mark.parametrize("reference", [
    "Patient/p-7", "https://emr.example.org/fhir/Patient/p-7",
    "https://emr.example.org/fhir/Patient/p-7/_history/3", "http://h/base/R4/Patient/p-7"])
def test_patient_participant_reference_forms(mapping_set: MappingSet, reference: str) -> None:
    """Relative, absolute and versioned Patient references all give the FHIR id as crosswalk key;
    absolute ones used to leave the appointment without its patient."""
    _, ops = run(mapping_set, appointment(actor(reference, "Kim Park"), actor("RelatedPerson/r-1", "Mum")))
    assert ops[0]["participants"] == [{"emr_patient_id": "p-7", "name": "Kim Park"}]


def test_contained_actor_references_are_not_patients(mapping_set: MappingSet) -> None:
    """Cerner's video visits name contained HealthcareServices (`#607`) as actors: not participants."""
    data = appointment(actor("Patient/p-1", "Smart, B"), actor("#607"), actor("#610"),
                       contained=[{"resourceType": "HealthcareService", "id": "607"},
                                  {"resourceType": "HealthcareService", "id": "610"}])
    _, ops = run(mapping_set, data)
    assert [p["emr_patient_id"] for p in ops[0]["participants"]] == ["p-1"]


@given(st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
       st.sampled_from(["", "https://emr.example.org/fhir/", "http://x/y/"]),
       st.sampled_from(["", "/_history/1", "/_history/42"]))
def test_any_fhir_id_is_extracted_from_a_reference(ident: str, base: str, history: str) -> None:
    """Property: whatever the id (FHIR id charset), base URL and version suffix, the participant's
    crosswalk key is exactly the id."""
    _, ops = run(_shipped(), appointment(actor(f"{base}Patient/{ident}{history}", "A B")))
    assert ops[0]["participants"][0]["emr_patient_id"] == ident


def test_r5_resource_sent_as_r4_gets_a_hint() -> None:
    """An R5 Appointment (participant.required a boolean) refused by the R4 endpoint says it is valid
    R5 and how to declare the version, instead of only 'Input should be a valid string'."""
    data = appointment(actor("Patient/p-1", "A B") | {"required": True})
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(data, version="R4")
    assert info.value.issues[0].expression == "Appointment.participant[0].required"
    assert info.value.hint is not None and "fhirVersion=5.0" in info.value.hint
    validate_resource(data, version="R5")


def test_invalid_r4_resource_gets_no_r5_hint() -> None:
    """A resource invalid in every version keeps the plain hint (no misleading R5 advice)."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource({"resourceType": "Patient", "id": "p", "address": {"city": "X"}}, version="R4")
    assert info.value.hint == "the resource does not conform to FHIR R4"


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("start", "2030-03-04T15:00:00", "not a FHIR instant"),
    ("birthDate", "1974-12-25T00:00:00", "not a FHIR date"),
])
def test_format_errors_say_the_expected_format(field: str, value: str, expected: str) -> None:
    """A local time without zone, or a birth date with a time, is refused with the expected format
    and an example, never with the library's 'does not match spec regex' nor the value itself."""
    data = (appointment(actor("Patient/p-1", "A B"), start=value, end=value) if field == "start"
            else {"resourceType": "Patient", "id": "p", field: value})
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(data, version="R4")
    issue = next(i for i in info.value.issues if i.expression and i.expression.endswith(field))
    assert issue.message.startswith(expected) and value not in issue.message


def test_backport_ig_timestamps_with_seven_fraction_digits_parse() -> None:
    """The Backport IG's examples carry instants with 7 fraction digits (.1882432-05:00) and
    integer64 counters as strings: the notification is read, not refused."""
    bundle = {"resourceType": "Bundle", "type": "history",
              "timestamp": "2020-05-29T11:44:13.1882432-05:00",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Parameters", "parameter": [
                  {"name": "subscription",
                   "valueReference": {"reference": "https://e.org/fhir/Subscription/s"}},
                  {"name": "status", "valueCode": "active"},
                  {"name": "type", "valueCode": "event-notification"},
                  {"name": "events-since-subscription-start", "valueString": "2"},
                  {"name": "notification-event", "part": [
                      {"name": "event-number", "valueString": "2"},
                      {"name": "timestamp", "valueInstant": "2020-05-29T11:44:13.1882432-05:00"},
                      {"name": "focus",
                       "valueReference": {"reference": "https://e.org/fhir/Encounter/e-1"}}]}]}}]}
    note = parse_notification(bundle)
    assert (note.version, note.type, note.event_numbers, note.references) == (
        "R4", "event-notification", [2], [("Encounter", "e-1")])


def test_two_practitioners_sample(mapping_set: MappingSet) -> None:
    """samples/fhir/r4/Appointment-two-practitioners.json maps as its README row says."""
    path = ROOT / "samples/fhir/r4/Appointment-two-practitioners.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    _, (op,) = run(mapping_set, data)
    assert op["participants"] == [{"emr_patient_id": "pat-1001", "name": "Amélie Tremblay"}]
    assert (op["duration"], op["datetime"]) == (40, "2030-02-12T15:00:00-05:00")


@pytest.mark.parametrize(("rel", "expression"),
                         [("r4/invalid/Appointment-local-time.json", "Appointment.start")])
def test_invalid_samples_name_the_path(rel: str, expression: str) -> None:
    """The invalid samples are refused with an issue at the path their README row names."""
    data = json.loads((ROOT / "samples/fhir" / rel).read_text(encoding="utf-8"))
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(data, version="R4")
    assert expression in [i.expression for i in info.value.issues]
