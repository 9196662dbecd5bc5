"""Pure parts of the executor: crosswalk keys, change detection, operation values."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from adapter.mapping.operations import AppointmentParticipant, AppointmentUpsert, ContactUpsert
from adapter.oncall.models import Participant
from adapter.worker import xref
from adapter.worker.participants import _same_person, participant_values
from adapter.worker.upserts import AppointmentUpserts, contact_values

ids = st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), min_size=1,
              max_size=30)
json_values = st.none() | st.booleans() | st.integers() | st.text(max_size=20)


@given(appt=ids, patient=ids)
def test_pair_keys_round_trip(appt: str, patient: str) -> None:
    """A participant key and its reverse index split back into the ids they were made of."""
    assert xref.split_pair(xref.participant_key(appt, patient)) == (appt, patient)
    assert xref.split_pair(xref.patient_appointment_key(patient, appt)) == (patient, appt)


@given(values=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6),
       changed=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6))
def test_changed_fields_sends_only_what_changed(values: dict, changed: dict) -> None:
    """After recording the hashes of `values`, only keys whose value differs (or is new) count as changed;
    recording the same values again changes nothing."""
    detail = {"h": xref.field_hashes(values)}
    assert xref.changed_fields(values, detail) == {}
    update = {**values, **changed}
    expected = {k: v for k, v in update.items()
                if k not in values or json.dumps(values[k]) != json.dumps(v)}
    assert xref.changed_fields(update, detail) == expected


def test_detail_holds_no_values() -> None:
    """The crosswalk detail holds hashes, never the names or e-mails written."""
    detail = {"h": xref.field_hashes({"first_name": "Zoë", "email": "zoe@example.org"})}
    assert "Zoë" not in repr(detail) and "zoe@example.org" not in repr(detail)


def _contact(**kw: object) -> ContactUpsert:
    base: dict = {"emr_patient_id": "MRN1", "first_name": "Ada", "last_name": "Lovelace"}
    return ContactUpsert(**{**base, **kw})


def test_contact_values_leave_out_absent_fields() -> None:
    """A field the EMR did not send is not sent as null (absent is not "erase"); dates become ISO text."""
    values = contact_values(_contact(date_of_birth=dt.date(1990, 2, 3), email="ADA@example.org"))
    assert values == {"first_name": "Ada", "last_name": "Lovelace", "date_of_birth": "1990-02-03",
                      "email": "ada@example.org"}


def _appointment(**kw: object) -> AppointmentUpsert:
    base: dict = {"emr_appointment_id": "A1", "title": "Visit", "type": "online",
                  "datetime": dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC), "duration": 30,
                  "division": "http://127.0.0.1:8900/divisions/1/",
                  "participants": [AppointmentParticipant(emr_patient_id="MRN1", first_name="Ada",
                                                          last_name="Lovelace", fee=Decimal("10.50"))]}
    return AppointmentUpsert(**{**base, **kw})


def test_appointment_values_always_carry_the_emr_id_in_metadata() -> None:
    """Every appointment body carries the EMR appointment id in metadata, so a create whose answer was
    lost can be found again; metadata from the mapping is kept."""
    values = AppointmentUpserts.values(_appointment(metadata={"emr_patient_id": "MRN1"}))
    assert values["metadata"] == {"emr_patient_id": "MRN1", xref.METADATA_APPOINTMENT_KEY: "A1"}
    assert values["datetime"] == "2030-01-02T09:30:00+00:00"
    assert "participants" not in values


def test_participant_values_keep_only_writable_fields() -> None:
    """A participant's body holds the writable fields set, never the EMR patient id."""
    participant = _appointment().participants[0]
    assert participant_values(participant) == {"first_name": "Ada", "last_name": "Lovelace",
                                               "fee": Decimal("10.50")}


def test_same_person_prefers_email_then_names() -> None:
    """A returned participant is matched to the operation's by e-mail when both have one, else by names
    (accents and case ignored)."""
    by_mail = Participant(url="http://x/participants/1/", email="ADA@example.org", name="Someone")
    assert _same_person({"email": "ada@example.org", "first_name": "Ada"}, by_mail)
    by_name = Participant(url="http://x/participants/2/", first_name="Zoé", last_name="Durand")
    assert _same_person({"first_name": "zoe", "last_name": "DURAND"}, by_name)
    assert not _same_person({"first_name": "Ada", "last_name": "Durand"}, by_name)
