"""The shipped FHIR mapping files (mappings/fhir/): each sample maps to the expected operations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapter.errors import MappingError
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import load_mapping_set

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "fhir"
DIVISION = "http://127.0.0.1:8900/divisions/1/"
PROVIDER = "http://127.0.0.1:8900/providers/1/"


@pytest.fixture(scope="module")
def mapping_set() -> MappingSet:
    return load_mapping_set([ROOT / "mappings"])


def run(ms: MappingSet, data: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    result = ms.map(data["resourceType"], json.dumps(data).encode(), source="fhir")
    return result.route, [op.to_json() for op in result.operations]


def sample(rel: str) -> dict[str, Any]:
    return json.loads((SAMPLES / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize("rel", ["r4/Patient.json", "r5/Patient.json"])
def test_patient_maps_to_contact_upsert(mapping_set: MappingSet, rel: str) -> None:
    """A Patient becomes one contact_upsert keyed by its FHIR id, official name, e-mail, mobile digits,
    sex from administrative-gender, birth date, site defaults, and updates future participants."""
    data = sample(rel)
    route, ops = run(mapping_set, data)
    assert route == "Patient"
    assert ops == [{
        "kind": "contact_upsert", "emr_patient_id": data["id"], "first_name": "Amélie",
        "last_name": "Tremblay", "email": "amelie.tremblay@example.org", "phone": "14165550142",
        "sex": "female", "date_of_birth": "1984-09-17", "division": DIVISION, "provider": PROVIDER,
        "update_participants": True,
    }]


@pytest.mark.parametrize(("gender", "sex"), [("male", "male"), ("female", "female"), ("other", "Unknown"),
                                             ("unknown", "Unknown"), (None, "Unknown")])
def test_patient_gender_table(mapping_set: MappingSet, gender: str | None, sex: str) -> None:
    """administrative-gender maps to OnCall's sex values; absent is Unknown."""
    data = sample("r4/Patient-no-version.json")
    data.pop("gender")
    if gender:
        data["gender"] = gender
    assert run(mapping_set, data)[1][0]["sex"] == sex


def test_patient_without_name_is_a_mapping_error(mapping_set: MappingSet) -> None:
    """A Patient without a name cannot become a contact: a MappingError names route and field."""
    data = sample("r4/Patient.json")
    data.pop("name")
    with pytest.raises(MappingError) as info:
        run(mapping_set, data)
    assert info.value.route == "Patient"
    assert info.value.target == "first_name"


def test_booked_appointment_maps_to_upsert(mapping_set: MappingSet) -> None:
    """A booked R4 Appointment: appointment_upsert with title, start with its offset, minutes, site
    tables, the Patient participant only (not the Practitioner or Location), and EMR ids in metadata."""
    route, ops = run(mapping_set, sample("r4/Appointment.json"))
    assert route == "Appointment"
    assert ops == [{
        "kind": "appointment_upsert", "emr_appointment_id": "appt-5001", "title": "Follow-up visit",
        "type": "online", "datetime": "2024-05-10T13:30:00-04:00", "duration": 20, "division": DIVISION,
        "provider": PROVIDER, "participants": [{"emr_patient_id": "pat-1001", "name": "Amélie Tremblay"}],
        "metadata": {"emr_appointment_id": "appt-5001", "emr_fhir_version_id": "1", "emr_source": "fhir"},
    }]


def test_r5_virtual_appointment(mapping_set: MappingSet) -> None:
    """An R5 Appointment with a virtual service is an online appointment of 30 minutes."""
    route, ops = run(mapping_set, sample("r5/Appointment.json"))
    assert route == "Appointment"
    assert (ops[0]["type"], ops[0]["duration"], ops[0]["datetime"]) == ("online", 30, "2024-06-12T15:00:00Z")
    assert ops[0]["participants"] == [{"emr_patient_id": "pat-2001", "name": "Amélie Tremblay"}]


def test_duration_from_start_and_end(mapping_set: MappingSet) -> None:
    """Without minutesDuration, the minutes come from start and end on the same day."""
    data = sample("r4/Appointment.json")
    data.pop("minutesDuration")
    data["end"] = "2024-05-10T14:15:00-04:00"
    assert run(mapping_set, data)[1][0]["duration"] == 45


@pytest.mark.parametrize("code", ["PHONE", "OFFICE"])
def test_type_from_appointment_type_table(mapping_set: MappingSet, code: str) -> None:
    """appointmentType codes go through the site's appointment_type table."""
    data = sample("r4/Appointment.json")
    data["appointmentType"] = {"coding": [{"code": code.lower()}]}
    assert run(mapping_set, data)[1][0]["type"] == {"PHONE": "phone", "OFFICE": "inperson"}[code]


def test_declined_patient_is_not_a_participant(mapping_set: MappingSet) -> None:
    """A Patient participant who declined is left out of participants."""
    data = sample("r4/Appointment.json")
    data["participant"].append({"actor": {"reference": "Patient/pat-1002", "display": "Daniel Okafor"},
                                "status": "declined"})
    assert [p["emr_patient_id"] for p in run(mapping_set, data)[1][0]["participants"]] == ["pat-1001"]


@pytest.mark.parametrize("status", ["cancelled", "noshow", "entered-in-error"])
def test_cancel_statuses(mapping_set: MappingSet, status: str) -> None:
    """cancelled, noshow and entered-in-error cancel the appointment, with the reason when given."""
    data = sample("r4/Appointment-cancelled.json")
    data["status"] = status
    route, ops = run(mapping_set, data)
    assert route == "Appointment_cancel"
    assert ops == [{"kind": "appointment_cancel", "emr_appointment_id": "appt-5001",
                    "reason": f"FHIR Appointment.status = {status}"}]
    data["cancelationReason"] = {"text": "Patient request"}
    assert run(mapping_set, data)[1][0]["reason"] == "Patient request"


@pytest.mark.parametrize("status", ["proposed", "pending", "waitlist"])
def test_not_booked_is_ignored(mapping_set: MappingSet, status: str) -> None:
    """Appointments not booked yet produce one ignore operation saying why."""
    data = sample("r4/Appointment.json")
    data["status"] = status
    route, ops = run(mapping_set, data)
    assert route == "Appointment_not_booked"
    assert ops[0]["kind"] == "ignore"


def test_participant_without_display_is_a_mapping_error(mapping_set: MappingSet) -> None:
    """A Patient participant with no display has no name to send: a MappingError naming participants."""
    data = sample("r4/Appointment.json")
    del data["participant"][0]["actor"]["display"]
    with pytest.raises(MappingError) as info:
        run(mapping_set, data)
    assert info.value.target is not None and info.value.target.startswith("participants")


@pytest.mark.parametrize("rel", ["r4/notification-full-resource.json", "r4b/notification-full-resource.json",
                                 "r5/notification-full-resource.json"])
def test_notification_entries_map(mapping_set: MappingSet, rel: str) -> None:
    """Every Patient/Appointment carried by a full-resource notification maps to operations."""
    for entry in sample(rel)["entry"][1:]:
        route, ops = run(mapping_set, entry["resource"])
        assert route == entry["resource"]["resourceType"]
        assert ops and ops[0]["kind"] in ("contact_upsert", "appointment_upsert")


@pytest.mark.parametrize(("deceased", "route"), [
    ({"deceasedBoolean": True}, "Patient_deceased"),
    ({"deceasedDateTime": "2025-01-02T10:00:00Z"}, "Patient_deceased"),
    ({"deceasedBoolean": False}, "Patient"),
    ({}, "Patient"),
])
def test_deceased_patient_gets_no_contact(mapping_set: MappingSet, deceased: dict[str, Any],
                                          route: str) -> None:
    """A deceased patient is ignored with a reason (virtual care would invite them); a living one,
    or one whose deceasedBoolean is false, becomes a contact upsert."""
    data = {"resourceType": "Patient", "id": "d1", "name": [{"family": "Doe", "given": ["Jo"]}], **deceased}
    got, ops = run(mapping_set, data)
    assert got == route
    assert [o["kind"] for o in ops] == (["ignore"] if route == "Patient_deceased" else ["contact_upsert"])
    if route == "Patient_deceased":
        assert "deceased" in ops[0]["reason"]
