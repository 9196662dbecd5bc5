"""Every shipped sample maps to the expected operations, field by field, through the shipped files.

The PID -> person assertions are shared by every trigger that carries a PID: a contact
(ADT) or a participant (SIU) must show the same patient the same way.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError, MappingError
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7v2"
DIVISION = "http://127.0.0.1:8900/divisions/1/"
PROVIDER = "http://127.0.0.1:8900/providers/1/"

# The patients of the samples, as every PID-carrying route must see them.
MARIE = {"emr_patient_id": "MRN100001", "first_name": "Marie", "last_name": "Tremblay",
         "email": "marie.tremblay@example.org"}
ELODIE = {"emr_patient_id": "MRN200002", "first_name": "Élodie", "last_name": "Côté",
          "email": "elodie.cote@example.ca"}
LUC = {"emr_patient_id": "MRN200003", "first_name": "Luc", "last_name": "Côté"}
BAO = {"emr_patient_id": "MRN100004", "first_name": "Bao", "last_name": "Nguyen",
       "email": "bao.nguyen@example.com"}
FRANCOIS = {"emr_patient_id": "MRN100028", "first_name": "François", "last_name": "Lefèbvre"}
WEILING = {"emr_patient_id": "MRN300005", "first_name": "Wei Ling", "last_name": "Lim",
           "email": "weiling.lim@example.com"}
CHIDI = {"emr_patient_id": "MRN300006", "first_name": "Chidi", "last_name": "Okafor",
         "email": "chidi.okafor@example.co.uk"}

PEOPLE = {
    "adt_a01_epic_v25.hl7": [MARIE],
    "adt_a04_cerner_v251_mrn_second.hl7": [ELODIE],
    "adt_a08_meditech_v23_lf_escapes.hl7": [{**MARIE, "last_name": "Tremblay-Bélanger",
                                             "email": "marie.t@example.org"}],
    "adt_a31_v24_crlf.hl7": [{**ELODIE, "email": "elodie.new@example.ca"}],
    "adt_a28_v231_latin1_no_email.hl7": [FRANCOIS],
    "siu_s12_v25_virtual.hl7": [MARIE],
    "siu_s12_v26_tq1_group_phone.hl7": [ELODIE, LUC],
    "siu_s13_v25_reschedule.hl7": [MARIE],
    "siu_s14_v27_truncation.hl7": [BAO],
    "adt_a04_scm_v25_national_id_first_xtn_parts.hl7": [WEILING],
    "siu_s12_v24_pas_aig_only_email_code.hl7": [CHIDI],
    "siu_s13_v25_duration_hours.hl7": [CHIDI],
}

CONTACTS = {  # file -> (route, demographics beyond the shared person fields)
    "adt_a01_epic_v25.hl7": ("ADT_A01", {"phone": "5145550101", "sex": "female",
                                         "date_of_birth": "1980-02-14", "update_participants": False}),
    "adt_a04_cerner_v251_mrn_second.hl7": ("ADT_A04", {
        "phone": "4185550202", "sex": "female", "date_of_birth": "1992-07-30", "update_participants": False}),
    "adt_a08_meditech_v23_lf_escapes.hl7": ("ADT_A08", {
        "phone": "5145550199", "sex": "female", "date_of_birth": "1980-02-14", "update_participants": True}),
    "adt_a31_v24_crlf.hl7": ("ADT_A31", {"phone": "4185550202", "update_participants": True}),
    "adt_a28_v231_latin1_no_email.hl7": ("ADT_A28", {
        "phone": "8195550303", "sex": "male", "date_of_birth": "1961-03-05", "update_participants": False}),
    "adt_a04_scm_v25_national_id_first_xtn_parts.hl7": ("ADT_A04", {
        "phone": "18195550404", "sex": "female", "date_of_birth": "1987-04-22",
        "update_participants": False}),
}

APPOINTMENTS = {  # file -> (route, appointment fields)
    "siu_s12_v25_virtual.hl7": ("SIU_S12", {
        "emr_appointment_id": "APPT7001", "title": "Follow-up & results review", "type": "online",
        "datetime": "2024-05-15T14:30:00-04:00", "duration": 30,
        "metadata": {"emr_appointment_id": "APPT7001", "emr_placer_appointment_id": "PL-7001",
                     "emr_patient_id": "MRN100001", "emr_source": "CLINIC_A"}}),
    "siu_s12_v26_tq1_group_phone.hl7": ("SIU_S12", {
        "emr_appointment_id": "APPT8002", "title": "Family counselling", "type": "phone",
        "datetime": "2024-05-16T10:00:00-04:00", "duration": 45,
        "metadata": {"emr_appointment_id": "APPT8002", "emr_patient_id": "MRN200002",
                     "emr_source": "CLINIC_B"}}),
    "siu_s13_v25_reschedule.hl7": ("SIU_S13", {
        "emr_appointment_id": "APPT7001", "datetime": "2024-05-16T09:15:00-04:00", "duration": 20}),
    "siu_s14_v27_truncation.hl7": ("SIU_S14", {
        "emr_appointment_id": "APPT9003", "title": "New patient intake", "type": "inperson",
        "datetime": "2024-05-17T13:00:00-04:00", "duration": 60}),
    "siu_s12_v24_pas_aig_only_email_code.hl7": ("SIU_S12", {
        "emr_appointment_id": "APPT9100", "title": "Video review", "type": "online",
        "datetime": "2024-05-20T11:00:00-04:00", "duration": 20,
        "metadata": {"emr_appointment_id": "APPT9100", "emr_placer_appointment_id": "PL-9100",
                     "emr_patient_id": "MRN300006", "emr_source": "CLINIC_A"}}),
    "siu_s13_v25_duration_hours.hl7": ("SIU_S13", {
        "emr_appointment_id": "APPT9100", "datetime": "2024-05-21T15:00:00-04:00", "duration": 60}),
}

OTHERS = {  # file -> (route, the one operation)
    "adt_a04_optout_zsegment_v25.hl7": ("ADT_optout", {"kind": "ignore"}),
    "adt_a03_discharge_v25.hl7": ("ADT_A03", {"kind": "ignore"}),
    "adt_a11_cancel_admit_v25.hl7": ("ADT_A11", {"kind": "ignore"}),
    "siu_s26_v25_noshow.hl7": ("SIU_S26", {"kind": "ignore"}),
    "adt_a40_merge_v25.hl7": ("ADT_A40", {"kind": "patient_merge", "surviving_emr_patient_id": "MRN100001",
                                          "merged_emr_patient_id": "MRN100099"}),
    "siu_s15_v25_cancel.hl7": ("SIU_S15", {"kind": "appointment_cancel", "emr_appointment_id": "APPT7001",
                                           "reason": "Patient cancelled"}),
    "siu_s17_v28_delete.hl7": ("SIU_S17", {"kind": "appointment_cancel", "emr_appointment_id": "APPT8002",
                                           "reason": "Entered in error"}),
}


@pytest.fixture(scope="module")
def shipped() -> MappingSet:
    return load_mapping_set([SHIPPED_DIR], timezone="America/Toronto")


def _map(shipped: MappingSet, name: str) -> tuple[str | None, list[dict[str, Any]]]:
    result = shipped.map("", (SAMPLES / name).read_bytes(), source="mllp")
    assert result.mapping_version == shipped.version
    return result.route, [op.to_json() for op in result.operations]


def assert_person(actual: dict[str, Any], person: dict[str, Any]) -> None:
    """The shared PID assertions: id, names, e-mail (absent when the EMR has none)."""
    for key in ("emr_patient_id", "first_name", "last_name"):
        assert actual[key] == person[key], key
    assert actual.get("email") == person.get("email")


def test_every_sample_is_covered() -> None:
    """Each sample file in samples/hl7v2 has expectations here, and is listed in its README."""
    files = {p.name for p in SAMPLES.glob("*.hl7")}
    assert files == set(CONTACTS) | set(APPOINTMENTS) | set(OTHERS)
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in files)


@pytest.mark.parametrize("name", sorted(CONTACTS))
def test_adt_samples_map_to_contact_upsert(shipped: MappingSet, name: str) -> None:
    """ADT register/update/add-person samples map to one contact_upsert with the patient's fields."""
    route, ops = _map(shipped, name)
    expected_route, fields = CONTACTS[name]
    assert route == expected_route
    assert [op["kind"] for op in ops] == ["contact_upsert"]
    (contact,) = PEOPLE[name]
    assert_person(ops[0], contact)
    for key, value in fields.items():
        assert ops[0].get(key) == value, key
    assert ops[0]["division"] == DIVISION and ops[0]["provider"] == PROVIDER


@pytest.mark.parametrize("name", sorted(APPOINTMENTS))
def test_siu_samples_map_to_appointment_upsert(shipped: MappingSet, name: str) -> None:
    """SIU book/reschedule/modify samples map to one appointment_upsert, one participant per PID."""
    route, ops = _map(shipped, name)
    expected_route, fields = APPOINTMENTS[name]
    assert route == expected_route
    assert [op["kind"] for op in ops] == ["appointment_upsert"]
    appt = ops[0]
    for key, value in fields.items():
        assert appt[key] == value, key
    assert appt["division"] == DIVISION and appt["provider"] == PROVIDER
    people = PEOPLE[name]
    assert len(appt["participants"]) == len(people)
    for participant, person in zip(appt["participants"], people, strict=True):
        assert_person(participant, person)
        assert participant["name"] == f"{person['first_name']} {person['last_name']}"


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_samples(shipped: MappingSet, name: str) -> None:
    """Merge, cancel, delete and the ignored triggers map to their one operation, with a reason."""
    route, ops = _map(shipped, name)
    expected_route, fields = OTHERS[name]
    assert route == expected_route and len(ops) == 1
    for key, value in fields.items():
        assert ops[0][key] == value, key
    if ops[0]["kind"] == "ignore":
        assert "ignored by default" in ops[0]["reason"] or "opted out" in ops[0]["reason"]


def test_unrouted_message_is_ignored_with_a_reason(shipped: MappingSet) -> None:
    """A type no route takes maps to one ignore operation that says so (no dead letter)."""
    text = (SAMPLES / "adt_a01_epic_v25.hl7").read_text().replace("ADT^A01^ADT_A01", "ADT^A05^ADT_A05")
    result = shipped.map("ADT^A05", text, source="mllp")
    assert result.route is None and result.operations[0].to_json()["reason"].startswith("no route takes")
    assert not shipped.has_route("mllp", "ADT^A05") and shipped.has_route("mllp", "ADT^A01")


def test_missing_required_value_names_route_target_and_source(shipped: MappingSet) -> None:
    """A required value that is empty fails with route, target field and source path (no values)."""
    text = (SAMPLES / "adt_a01_epic_v25.hl7").read_text().replace("TREMBLAY^MARIE^J", "^MARIE^J")
    with pytest.raises(MappingError) as info:
        shipped.map("", text, source="mllp")
    err = info.value
    assert (err.route, err.target) == ("ADT_A01", "last_name")
    assert err.source is not None and "PID-5-1" in err.source
    assert "MARIE" not in str(err)


def test_local_times_use_the_configured_zone() -> None:
    """An HL7 time without offset is local to the configured zone; one with an offset keeps it."""
    utc = load_mapping_set([SHIPPED_DIR])
    ops = utc.map("", (SAMPLES / "siu_s12_v25_virtual.hl7").read_bytes(), source="mllp").operations
    assert ops[0].to_json()["datetime"] == "2024-05-15T14:30:00Z"
    assert utc.version != load_mapping_set([SHIPPED_DIR], timezone="America/Toronto").version


def _mutations(data: st.DataObject, text: str) -> str:
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(segments) - 1))
        action = data.draw(st.sampled_from(["drop_field", "repeat_field", "mutate", "drop_segment",
                                            "repeat_segment", "garbage"]))
        fields = segments[i].split("|")
        j = data.draw(st.integers(1, max(1, len(fields) - 1))) if len(fields) > 1 else 0
        if action == "drop_field" and j:
            fields[j] = ""
        elif action == "repeat_field" and j:
            fields[j] = fields[j] + "~" + fields[j]
        elif action == "mutate" and j:
            fields[j] = data.draw(st.text(alphabet="AZ09^~&\\|-+.éX ", max_size=20))
        elif action == "drop_segment" and i:
            segments.pop(i)
            continue
        elif action == "repeat_segment":
            segments.insert(i, segments[i])
        elif action == "garbage":
            segments.insert(i + 1, data.draw(st.text(max_size=30)))
        segments[i] = "|".join(fields)
    return "\r".join(segments)


@settings(max_examples=300, derandomize=True, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_mutated_samples_never_crash(data: st.DataObject) -> None:
    """Samples with fields mutated, dropped or repeated map to operations or a clear input error."""
    shipped = _SHIPPED_UTC
    name = data.draw(st.sampled_from(sorted(p.name for p in SAMPLES.glob("*.hl7"))))
    text = (SAMPLES / name).read_bytes().decode("latin-1" if "latin1" in name else "utf-8")
    mutated = _mutations(data, text)
    try:
        result = shipped.map("", mutated, source="mllp")
    except (MappingError, HL7InputError) as exc:
        assert str(exc)
        return
    assert result.operations


_SHIPPED_UTC = load_mapping_set([SHIPPED_DIR])
random.seed(0)
