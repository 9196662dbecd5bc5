"""Reverse path message building: FHIR transaction Bundles and HL7 v2 SIU/ADT, from any values.

Properties: every Bundle is valid R4B, deterministic (same input, same hash), made only of
conditional updates on identifiers of the configured OnCall base, with participant references
that resolve inside the Bundle; every HL7 message keeps its structure whatever the values hold
(delimiters, escapes) and gives the values back when read with the light ER7 reader.
"""

from __future__ import annotations

import datetime as dt

from fhir.resources.R4B.bundle import Bundle
from hl7apy.parser import parse_message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapter.hl7.er7 import Message as ER7
from adapter.reverse.bundle import BundleBuilder, bundle_hash, full_url, response_locations
from adapter.reverse.hl7_out import HL7Builder, siu_trigger
from adapter.reverse.mllp_out import control_id_for, read_ack
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatient

BASE = "https://api.oncallhealth.us"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# Printable text including every HL7 delimiter and the escape character.
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F, blacklist_categories=("Cs",)),
               min_size=1, max_size=30).map(str.strip).filter(bool)
people = st.builds(
    lambda n, first, last, email, phone, gender, birth, cancelled: EMRPatient(
        oncall_url=f"{BASE}/participants/{n}/", first_name=first, last_name=last, email=email, phone=phone,
        gender=gender, birth_date=birth, participation_cancelled=cancelled),
    st.integers(1, 10**6), text, text, st.none() | st.emails().map(str.lower),
    st.none() | st.from_regex(r"\+1 [0-9]{3} 555 [0-9]{4}", fullmatch=True),
    st.none() | st.sampled_from(["male", "female", "other", "unknown"]),
    st.none() | st.dates(dt.date(1900, 1, 1), dt.date(2025, 12, 31)), st.booleans())
appointments = st.builds(
    lambda n, status, start, minutes, title, kind, who: EMRAppointmentUpsert(
        oncall_url=f"{BASE}/appointments/{n}/", status=status, start=start, minutes_duration=minutes,
        description=title, appointment_type=kind,
        participants=list({p.oncall_url: p for p in who}.values())),
    st.integers(1, 10**6), st.sampled_from(["booked", "cancelled", "fulfilled", "noshow"]),
    st.datetimes(dt.datetime(2024, 1, 1), dt.datetime(2030, 1, 1), timezones=st.just(dt.UTC)),
    st.integers(5, 240), st.none() | text, st.sampled_from(["online", "inperson", "phone"]),
    st.lists(people, min_size=1, max_size=4))


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(appointments)
def test_bundle_is_valid_deterministic_and_conditional(op: EMRAppointmentUpsert) -> None:
    """The Bundle validates as R4B, hashes the same when rebuilt, uses only conditional PUTs on the
    base's identifier systems, and every participant reference is the fullUrl of a Patient in it."""
    builder = BundleBuilder(BASE + "/")
    bundle = builder.for_appointment(op)
    Bundle.model_validate(bundle)
    assert bundle_hash(bundle) == bundle_hash(BundleBuilder(BASE).for_appointment(op))
    for entry in bundle["entry"]:
        rtype = entry["resource"]["resourceType"]
        assert entry["request"]["method"] == "PUT"
        assert entry["request"]["url"].startswith(f"{rtype}?identifier={BASE}/")
    patients = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
    appointment = bundle["entry"][-1]["resource"]
    assert {p["actor"]["reference"] for p in appointment["participant"]} == patients
    assert appointment["end"] > appointment["start"]
    declined = {full_url(p.oncall_url) for p in op.participants if p.participation_cancelled}
    refused = {p["actor"]["reference"] for p in appointment["participant"] if p["status"] == "declined"}
    assert refused == declined


def test_response_locations_cut_history_and_base() -> None:
    """EMR ids come from entry.response.location, absolute or relative, without /_history/N."""
    request = {"entry": [{"fullUrl": "urn:uuid:a"}, {"fullUrl": "urn:uuid:b"}]}
    response = {"entry": [{"response": {"location": "http://emr/fhir/Patient/12/_history/3"}},
                          {"response": {"location": "Appointment/x-9"}}]}
    assert response_locations(request, response) == {"urn:uuid:a": "Patient/12",
                                                     "urn:uuid:b": "Appointment/x-9"}


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(appointments, st.booleans())
def test_siu_keeps_structure_and_values(op: EMRAppointmentUpsert, known: bool) -> None:
    """Whatever the names hold, the SIU validates against hl7apy's 2.5 structure and each patient's
    PID-5 and PID-3 read back as written; the trigger follows status and history."""
    trigger = siu_trigger(op, known=known)
    assert trigger == ("S15" if op.status == "cancelled" else "S14" if known else "S12")
    text_msg = HL7Builder(BundleBuilder(BASE)).siu(op, trigger=trigger, control_id="C1", now=NOW)
    parse_message(text_msg, validation_level=1).validate()   # raises on a structure error
    msg = ER7.parse(text_msg)
    assert (msg.message_type, msg.trigger, msg.control_id) == ("SIU", trigger, "C1")
    pids = msg.all("PID")
    assert len(pids) == len(op.participants)
    for pid, person in zip(pids, op.participants, strict=True):
        assert pid.value(5, component=1) == person.last_name
        assert pid.value(5, component=2) == person.first_name
        assert pid.value(3) == person.oncall_url.rstrip("/").rsplit("/", 1)[1]


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(people, st.sampled_from(["A04", "A08"]))
@example(EMRPatient(oncall_url=f"{BASE}/contacts/1/", first_name="a\\T\\b&c", last_name="\\S\\^|~\\"), "A04")
def test_adt_keeps_structure_and_values(person: EMRPatient, trigger: str) -> None:
    """ADT^A04/A08 validates against the 2.5 ADT_A01 structure and carries the demographics."""
    text_msg = HL7Builder(BundleBuilder(BASE)).adt(person, trigger=trigger, control_id="C2",  # type: ignore[arg-type]
                                                   now=NOW)
    parse_message(text_msg, validation_level=1).validate()
    pid = ER7.parse(text_msg).segment("PID")
    assert pid is not None
    assert pid.value(5, component=1) == person.last_name
    if person.birth_date:
        assert pid.value(7) == person.birth_date.strftime("%Y%m%d")
    emails = [pid.value(13, repetition=r, component=4) for r in (1, 2)]
    assert (person.email in emails) if person.email else not any(emails)


def test_read_ack_takes_reason_from_msa_or_err() -> None:
    """The refusal reason is MSA-3, else ERR-8 (user message), else ERR-3's text."""
    head = "MSH|^~\\&|EMR|H|A|B|20260301||ACK|9|P|2.5\r"
    assert read_ack((head + "MSA|AE|C7|bad PID\r").encode()).text == "bad PID"
    err = "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 empty\r"
    ack = read_ack((head + "MSA|AR|C7\r" + err).encode())
    assert (ack.code, ack.control_id, ack.text) == ("AR", "C7", "PID-3 empty")


@given(st.text(max_size=40), st.text(max_size=64), st.integers(0, 30))
def test_control_ids_are_stable_and_fit_msh10(key: str, digest: str, part: int) -> None:
    """A control id is 20 characters (MSH-10 in 2.5) and the same for the same content."""
    cid = control_id_for(key, digest, part)
    assert len(cid) == 20 and cid == control_id_for(key, digest, part)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(op=appointments, person=people)
def test_the_emrs_echo_of_our_messages_is_not_sent_back(op: EMRAppointmentUpsert, person: EMRPatient) -> None:
    """Loop prevention, HL7 v2: what the reverse path sends the EMR (SIU with SCH-2-2 = ONCALL, ADT
    whose only patient id is OnCall's) maps to an ignore if the EMR sends it back."""
    from adapter.mapping.loader import default_dirs, load_mapping_set

    mapping_set = load_mapping_set(default_dirs(None))
    builder = HL7Builder(BundleBuilder(BASE))
    siu = builder.siu(op, trigger=siu_trigger(op, known=False), control_id="E1", now=NOW)
    adt = builder.adt(person.model_copy(update={"emr_patient_id": None}), trigger="A04", control_id="E2",
                      now=NOW)
    for message in (siu, adt):
        parsed = ER7.parse(message)
        result = mapping_set.map(f"{parsed.message_type}^{parsed.trigger}", message, source="mllp")
        assert [o.kind for o in result.operations] == ["ignore"], result
        assert "written to the EMR by this adapter" in result.operations[0].to_json()["reason"]
