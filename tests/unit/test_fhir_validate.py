"""Validation of FHIR resources: structure by fhir.resources, value sets and invariants by the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import FHIRInputError
from adapter.fhir.outcome import operation_outcome
from adapter.fhir.validate import (
    APPOINTMENT_STATUS,
    CONTACT_POINT_SYSTEM,
    GENDER,
    FHIRValidationError,
    canonical_bytes,
    check_codes,
    loc_to_expression,
    parse_json,
    validate_resource,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir"


def _load(rel: str) -> dict:
    return json.loads((SAMPLES / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize("rel", ["r4/Patient.json", "r4/Patient-no-version.json", "r4/Appointment.json",
                                 "r4/Appointment-cancelled.json"])
def test_r4_samples_are_accepted(rel: str) -> None:
    """Every shipped valid R4 sample passes validation and yields its type, id and version."""
    data = _load(rel)
    resource = validate_resource(data, version="R4")
    assert resource.resource_type == data["resourceType"]
    assert resource.id == data["id"]
    assert resource.version_id == data.get("meta", {}).get("versionId")


@pytest.mark.parametrize("rel", ["r5/Patient.json", "r5/Appointment.json"])
def test_r5_samples_are_accepted_as_r5(rel: str) -> None:
    """R5 samples pass with the R5 models."""
    assert validate_resource(_load(rel), version="R5").id


def test_r5_appointment_is_refused_as_r4() -> None:
    """An R5 Appointment (boolean participant.required, class as a list) does not pass as R4."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(_load("r5/Appointment.json"), version="R4")
    assert info.value.status == 400
    assert any(i.expression and i.expression.startswith("Appointment.") for i in info.value.issues)


@pytest.mark.parametrize(("rel", "status", "expressions"), [
    ("r4/invalid/Patient-gender-x.json", 422, ["Patient.gender", "Patient.telecom[0].system"]),
    ("r4/invalid/Appointment-participant-no-actor.json", 422, ["Appointment.participant[0].actor"]),
    ("r4/invalid/Appointment-bad-date.json", 400, ["Appointment.start"]),
])
def test_invalid_samples_are_refused_with_paths(rel: str, status: int, expressions: list[str]) -> None:
    """Invalid samples are refused with the status and the FHIRPath-like expression of each problem."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(_load(rel), version="R4")
    assert info.value.status == status
    assert [i.expression for i in info.value.issues] == expressions
    assert info.value.expression == expressions[0]


def test_pydantic_loc_becomes_expression() -> None:
    """A wrong type deep in a participant is reported at Appointment.participant[0].actor.reference."""
    data = {"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": {"reference": 5}, "status": "accepted"}]}
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(data)
    assert info.value.issues[0].expression == "Appointment.participant[0].actor.reference"


def test_unknown_element_is_a_structure_issue() -> None:
    """An element the spec does not define is refused as a structure issue at its path."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource({"resourceType": "Patient", "id": "1", "favouriteColour": "blue"})
    assert info.value.issues[0].expression == "Patient.favouriteColour"
    assert info.value.issues[0].code == "structure"


def test_wrong_resource_type_for_url() -> None:
    """A Patient sent where an Appointment is expected is a 400 naming resourceType."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource({"resourceType": "Patient", "id": "1"}, expected_type="Appointment")
    assert info.value.status == 400
    assert info.value.expression == "resourceType"


def test_unknown_resource_type() -> None:
    """A resourceType FHIR does not define is a 400."""
    with pytest.raises(FHIRInputError) as info:
        validate_resource({"resourceType": "Patientt"})
    assert info.value.status == 400


@given(st.text(min_size=1, max_size=20))
def test_gender_value_set(code: str) -> None:
    """Patient.gender is refused exactly when it is outside administrative-gender."""
    issues = check_codes({"resourceType": "Patient", "gender": code})
    assert bool(issues) == (code not in GENDER)


@given(st.lists(st.sampled_from(sorted(CONTACT_POINT_SYSTEM)) | st.text(max_size=8), max_size=5))
def test_contact_point_system_each_index_named(systems: list[str]) -> None:
    """Every telecom entry's system is checked and a bad one is named by its index."""
    data = {"resourceType": "Patient", "telecom": [{"system": s} for s in systems]}
    expressions = [i.expression for i in check_codes(data)]
    assert expressions == [f"Patient.telecom[{n}].system" for n, s in enumerate(systems)
                           if s not in CONTACT_POINT_SYSTEM]


@given(st.sampled_from(sorted(APPOINTMENT_STATUS)))
def test_every_appointment_status_passes(status: str) -> None:
    """Each code of appointmentstatus is accepted."""
    assert check_codes({"resourceType": "Appointment", "status": status}) == []


def test_r5_participant_required_is_boolean() -> None:
    """participant.required is a code in R4 but a boolean in R5; neither version flags its own form."""
    r4 = {"resourceType": "Appointment", "participant": [{"required": "optional"}]}
    r5 = {"resourceType": "Appointment", "participant": [{"required": True}]}
    assert check_codes(r4, version="R4") == []
    assert check_codes(r5, version="R5") == []
    assert check_codes({"resourceType": "Appointment", "participant": [{"required": "yes"}]}, version="R4")


@given(st.lists(st.one_of(st.integers(min_value=0, max_value=99),
                          st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True)), max_size=6))
def test_loc_to_expression_shape(loc: list[int | str]) -> None:
    """Indexes become [n] and names .name, in order, after the root."""
    expr = loc_to_expression("Patient", loc)
    expected = "Patient" + "".join(f"[{p}]" if isinstance(p, int) else
                                   (".resourceType" if p in ("resource_type", "resourceType") else f".{p}")
                                   for p in loc)
    assert expr == expected


@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "empty"), (b"<Patient/>", "not JSON"), (b"[1]", "not an object"), (b"\xff\xfe{", "UTF-8"),
])
def test_parse_json_refusals(body: bytes, fragment: str) -> None:
    """Unusable bodies are 400s that say why."""
    with pytest.raises(FHIRInputError) as info:
        parse_json(body)
    assert info.value.status == 400
    assert fragment in str(info.value)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_canonical_bytes_is_order_independent(d: dict) -> None:
    """Canonical serialization does not depend on key order, and reads back to the same object."""
    reordered = dict(reversed(list(d.items())))
    assert canonical_bytes(d) == canonical_bytes(reordered)
    assert json.loads(canonical_bytes(d)) == d


def test_operation_outcome_carries_expression() -> None:
    """An OperationOutcome built from a refusal names the path in issue.expression."""
    with pytest.raises(FHIRValidationError) as info:
        validate_resource(_load("r4/invalid/Appointment-participant-no-actor.json"))
    outcome = operation_outcome(info.value.issues, hint=info.value.hint)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Appointment.participant[0].actor"]
    assert outcome["issue"][0]["severity"] == "error"
