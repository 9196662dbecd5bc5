"""The shipped reverse mapping files (mappings/oncall/) on the OnCall samples, and the webhook body
reader: what an OnCall appointment or contact becomes, and which URLs are trusted for what."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adapter.reverse.operations  # noqa: F401 - registers the reverse operation kinds
from adapter.errors import InputError
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatientUpsert
from listeners.webhooks import parse_webhook

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "oncall"
MAPPINGS = load_mapping_set([SHIPPED_DIR])


def _sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


def _appointment_op(doc: dict[str, Any], event: str = "appointment_updated") -> EMRAppointmentUpsert:
    result = MAPPINGS.map(event, json.dumps(doc), source="oncall_webhook")
    [op] = result.operations
    assert isinstance(op, EMRAppointmentUpsert) and result.route == "oncall_appointment"
    return op


def _contact_op(doc: dict[str, Any]) -> EMRPatientUpsert:
    # As the executor does: the EMR id custom field, found by its label, is handed to the mapping.
    labels = {label: key for key, label in doc.get("custom_field_names", {}).items()}
    doc = {**doc, "emr_patient_id": doc.get("custom_field_values", {}).get(labels.get("EMR id", ""))}
    [op] = MAPPINGS.map("contact_scraped", json.dumps(doc), source="contacts_scrape").operations
    assert isinstance(op, EMRPatientUpsert)
    return op


def test_appointment_sample_maps_times_people_and_cancelled_participants() -> None:
    """start/end come from datetime and duration, every participant is a patient, and a cancelled
    participant is marked (declined in FHIR) rather than left out."""
    op = _appointment_op(_sample("appointment_101.json"), "appointment_created")
    assert op.status == "booked"
    assert op.start == dt.datetime(2026, 3, 2, 14, 0, tzinfo=dt.UTC)
    assert op.end == dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
    assert [(p.oncall_url.rsplit("/", 2)[1], p.participation_cancelled) for p in op.participants] == [
        ("201", False), ("202", True)]
    assert op.participants[0].email == "ana.lima@example.org"


@settings(max_examples=50, derandomize=True, deadline=None)
@given(st.sampled_from(["Incomplete", "Complete", "No show", "Patient cancelled", "Provider cancelled",
                        "Something new", None]), st.booleans())
def test_status_follows_cancelled_then_the_completion_status(status: str | None, cancelled: bool) -> None:
    """`cancelled` wins; otherwise OnCall's completion status maps through the file's table; an
    unknown status is `booked`."""
    doc = {**_sample("appointment_102_cancelled.json"), "status": status, "cancelled": cancelled}
    expected = "cancelled" if cancelled else {
        "Complete": "fulfilled", "No show": "noshow", "Patient cancelled": "cancelled",
        "Provider cancelled": "cancelled"}.get(status or "", "booked")
    assert _appointment_op(doc).status == expected


def test_contact_samples_map_demographics_and_emr_id() -> None:
    """A contact's sex, birth date, phone and EMR id custom field reach the patient; empty
    strings are absent values, not empty fields."""
    di = _contact_op(_sample("contact_301.json"))
    assert (di.gender, di.birth_date, di.emr_patient_id, di.phone) == (
        "female", dt.date(1980, 2, 3), "MRN-77", "+1 416 555 0100")
    ed = _contact_op(_sample("contacts_page_1.json")["results"][1])
    assert (ed.gender, ed.email, ed.phone, ed.emr_patient_id) == ("unknown", None, None, None)


@given(st.sampled_from(["https", "http"]), st.from_regex(r"[a-z]{1,10}\.(com|ca|us|example)", fullmatch=True),
       st.integers(1, 10**9), st.booleans(), st.sampled_from(["appointment_created", "appointment_updated"]))
def test_webhook_url_is_trusted_for_its_id_only(scheme: str, host: str, number: int, slash: bool,
                                                event: str) -> None:
    """Any host, with or without the trailing slash: only the event and the appointment id are read."""
    url = f"{scheme}://{host}/appointments/{number}{'/' if slash else ''}"
    assert parse_webhook(json.dumps({"event": event, "url": url}).encode()) == (event, url, number)


def test_webhook_body_errors_name_the_json_path() -> None:
    """Unusable bodies raise InputError naming $, $.event or $.url; a URL of another kind has no id."""
    for body, where in ((b"[1]", "$ is not"), (b'{"url": "x"}', "$.event"), (b'{"event": "e"}', "$.url")):
        with pytest.raises(InputError, match=where.replace("$", r"\$")):
            parse_webhook(body)
    assert parse_webhook(b'{"event": "e", "url": "https://a.ca/contacts/3/"}')[2] is None


def test_reverse_writes_are_recognisable_in_the_emr() -> None:
    """Resources built by the reverse path carry an OnCall identifier the forward path can skip;
    an EMR resource without one, or with another base, is not ours."""
    from adapter.reverse.bundle import BundleBuilder
    from adapter.reverse.loop import is_reverse_write

    op = _appointment_op(_sample("appointment_101.json"))
    bundle = BundleBuilder("https://api.oncallhealth.ca").for_appointment(op)
    assert all(is_reverse_write(e["resource"], "https://api.oncallhealth.ca/") for e in bundle["entry"])
    assert not is_reverse_write(bundle["entry"][0]["resource"], "https://api.oncallhealth.us")
    emr_own = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}]}
    assert not is_reverse_write(emr_own, "https://api.oncallhealth.ca")
