"""The pure comparison: each finding kind from a hand-built snapshot, the fixes it proposes, and
properties (a snapshot built to agree has no finding; the comparison never invents a contact)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.oncall.models import Appointment, Contact
from adapter.reconcile.compare import compare
from adapter.reconcile.fields import same
from adapter.reconcile.model import EMRAppointment, EMRPatient, FindingKind, Snapshot, Window
from adapter.store.base import Xref
from adapter.worker import xref

BASE = "https://api.oncallhealth.ca"
WINDOW = Window(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC))
NOW = datetime(2029, 12, 1, tzinfo=UTC)


def contact(cid: int, emr_id: str | None = None, **fields: Any) -> Contact:
    values = {
        "first_name": "Ada",
        "last_name": "Ok",
        "email": f"c{cid}@example.org",
        "phone": "4165550100",
        "sex": "female",
        "date_of_birth": "1980-01-02",
        **fields,
    }
    return Contact.model_validate(
        {
            "url": f"{BASE}/contacts/{cid}/",
            "id": cid,
            **values,
            "custom_field_names": {"2": "EMR id"},
            "custom_field_values": {"2": emr_id} if emr_id else {},
        }
    )


def emr(pid: str, cid: int, **fields: Any) -> EMRPatient:
    values = {
        "first_name": "Ada",
        "last_name": "Ok",
        "email": f"c{cid}@example.org",
        "phone": "4165550100",
        "sex": "female",
        "date_of_birth": "1980-01-02",
        **fields,
    }
    upsert = {
        "kind": "contact_upsert",
        "emr_patient_id": pid,
        "first_name": values["first_name"],
        "last_name": values["last_name"],
    }
    return EMRPatient(pid, values, f"Patient/{pid}", upsert)


def link(pid: str, cid: int, namespace: str = xref.PATIENT, **detail: Any) -> Xref:
    kind = "contacts" if namespace == xref.PATIENT else "appointments"
    return Xref(namespace, pid, f"{BASE}/{kind}/{cid}/", NOW, detail)


def snap(
    contacts: list[Contact], xrefs: list[Xref], patients: list[EMRPatient] | None = None, **extra: Any
) -> Snapshot:
    return Snapshot(
        WINDOW,
        "EMR id",
        contacts,
        xrefs,
        extra.pop("appointment_xrefs", []),
        extra.pop("appointments", {}),
        emr_patients=patients,
        **extra,
    )


def kinds(s: Snapshot, **kw: Any) -> list[tuple[FindingKind, str, bool]]:
    return [(f.kind, f.subject, f.fixable) for f in compare(s, **kw)]


def test_in_sync_has_no_finding() -> None:
    """A contact carrying its EMR id, linked by the crosswalk, equal to the EMR: nothing reported."""
    assert kinds(snap([contact(1, "P1")], [link("P1", 1)], [emr("P1", 1)])) == []


def test_missing_in_oncall_fix_is_the_feeds_upsert() -> None:
    """An EMR patient with no contact: fixable by the contact_upsert the mapping produced."""
    findings = compare(snap([], [], [emr("P2", 2)]))
    assert [(f.kind, f.subject) for f in findings] == [(FindingKind.MISSING_IN_ONCALL, "patient P2")]
    assert findings[0].fix[0]["kind"] == "contact_upsert"


def test_without_emr_id_tied_by_crosswalk_or_email_and_birth() -> None:
    """A contact lacking its EMR id gets it from the crosswalk, or from the one EMR patient with the same
    e-mail and birth date (then linked); with no match it is left to a person."""
    s = snap(
        [contact(1), contact(2, email="Two@Example.org"), contact(3, email="x@example.org")],
        [link("P1", 1)],
        [emr("P1", 1), emr("P2", 2, email="two@example.org")],
    )
    findings = {f.subject: f for f in compare(s)}
    assert [op["kind"] for op in findings["contact 1"].fix] == ["contact_set_emr_id"]
    assert [op["kind"] for op in findings["contact 2"].fix] == ["contact_set_emr_id", "xref_link"]
    assert findings["contact 2"].emr_id == "P2"
    assert not findings["contact 3"].fixable
    assert "patient P2" not in findings  # tied to contact 2: not also "missing"


def test_duplicates_are_for_a_person() -> None:
    """One EMR id on two contacts, and two contacts sharing e-mail and birth date: reported, no fix."""
    s = snap(
        [
            contact(1, "P1"),
            contact(2, "P1"),
            contact(3, "P3", email="f@example.org"),
            contact(4, "P4", email="F@example.org"),
        ],
        [link("P1", 1), link("P3", 3), link("P4", 4)],
    )
    assert kinds(s) == [
        (FindingKind.DUPLICATE_EMR_ID, "patient P1", False),
        (FindingKind.DUPLICATE_EMAIL_BIRTH_DATE, "contacts 3, 4", False),
    ]


def test_field_mismatch_patch_leaves_email_unless_asked() -> None:
    """Mismatched fields are patched from the EMR with the OnCall values expected; the e-mail only with
    fix_email; equal-as-read values (case, phone punctuation) are no mismatch."""
    s = snap(
        [contact(1, "P1", last_name="Wrong", email="old@example.org", phone="+1 (416) 555-0100")],
        [link("P1", 1)],
        [emr("P1", 1, email="new@example.org")],
    )
    finding = compare(s)[0]
    assert finding.kind is FindingKind.FIELD_MISMATCH and set(finding.fields) == {"last_name", "email"}
    assert finding.fix[0]["set"] == {"last_name": "Ok"} and finding.fix[0]["expect"] == {"last_name": "Wrong"}
    assert "--fix-email" in finding.action
    assert compare(s, fix_email=True)[0].fix[0]["set"] == {"last_name": "Ok", "email": "new@example.org"}


def test_stale_and_missing_crosswalk() -> None:
    """An entry whose contact is gone is relinked to the contact carrying the id, or forgotten (and the
    EMR patient recreated); a carried id without entry is linked."""
    gone = {f"{BASE}/contacts/90/", f"{BASE}/contacts/91/"}
    s = snap(
        [contact(1, "P1"), contact(2, "P2")],
        [link("P1", 90), link("P3", 91)],
        [emr("P1", 1), emr("P2", 2), emr("P3", 3)],
        gone=gone,
    )
    findings = {f.subject: f for f in compare(s)}
    assert findings["patient P1"].kind is FindingKind.CROSSWALK_STALE
    assert findings["patient P1"].fix == (
        {
            "kind": "xref_link",
            "namespace": "patient",
            "source_id": "P1",
            "target": f"{BASE}/contacts/1/",
            "replaces": f"{BASE}/contacts/90/",
        },
    )
    assert [op["kind"] for op in findings["patient P3"].fix] == ["xref_unlink", "contact_upsert"]
    assert findings["patient P2"].kind is FindingKind.CROSSWALK_MISSING


def appointment(aid: int, start: str, duration: int, cancelled: bool = False) -> Appointment:
    return Appointment.model_validate(
        {
            "url": f"{BASE}/appointments/{aid}/",
            "datetime": start,
            "duration": duration,
            "cancelled": cancelled,
        }
    )


def test_appointments_against_emr_and_crosswalk() -> None:
    """Against the EMR: a move is patched, an EMR cancellation cancels, an OnCall-only cancellation is for
    a person; without EMR data the crosswalk's recorded start and duration hash reveal an OnCall edit."""
    appts = {
        a.url: a
        for a in (
            appointment(1, "2030-01-10T10:00:00Z", 60),
            appointment(2, "2030-01-11T10:00:00Z", 30),
            appointment(3, "2030-01-12T10:00:00Z", 30, True),
            appointment(4, "2030-01-13T11:00:00Z", 45),
        )
    }
    entries = [
        link("A1", 1, xref.APPOINTMENT),
        link("A2", 2, xref.APPOINTMENT),
        link("A3", 3, xref.APPOINTMENT),
        link(
            "A4",
            4,
            xref.APPOINTMENT,
            start="2030-01-13T10:00:00+00:00",
            h=xref.field_hashes({"duration": 30}),
        ),
    ]
    emr_appts = [
        EMRAppointment("A1", datetime(2030, 1, 10, 11, tzinfo=UTC), 30, False, "x"),
        EMRAppointment("A2", None, None, True, "x"),
        EMRAppointment("A3", datetime(2030, 1, 12, 10, tzinfo=UTC), 30, False, "x"),
    ]
    s = snap([], [], [], appointment_xrefs=entries, appointments=appts, emr_appointments=emr_appts)
    findings = {f.subject: f for f in compare(s)}
    assert findings["appointment A1"].fix[0]["set"] == {
        "datetime": "2030-01-10T11:00:00+00:00",
        "duration": 30,
    }
    assert findings["appointment A2"].fix[0]["kind"] == "appointment_cancel"
    assert not findings["appointment A3"].fixable
    assert set(findings["appointment A4"].fields) == {"datetime", "duration"}
    assert not findings["appointment A4"].fixable


def test_unusable_emr_records_are_reported() -> None:
    """A record the mapping could not read is a finding naming where it is."""
    s = snap([], [], [], emr_unusable=[("export.ndjson:3", "not JSON")])
    assert kinds(s) == [(FindingKind.EMR_RECORD_UNUSABLE, "export.ndjson:3", False)]


names = st.text(alphabet="abcdefghij", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(names, names, st.dates(date(1920, 1, 1), date(2020, 1, 1))),
        min_size=0,
        max_size=12,
        unique_by=lambda t: t[0],
    )
)
def test_agreeing_snapshot_is_clean(people: list[tuple[str, str, date]]) -> None:
    """Any set of contacts that carry their EMR id, are linked, and equal the EMR yields no finding."""
    contacts, xrefs, patients = [], [], []
    for index, (first, last, birth) in enumerate(people, start=1):
        fields = {"first_name": first, "last_name": last, "date_of_birth": birth.isoformat()}
        contacts.append(contact(index, f"P{index}", **fields))
        xrefs.append(link(f"P{index}", index))
        patients.append(emr(f"P{index}", index, **fields))
    assert compare(snap(contacts, xrefs, patients)) == []


@given(
    st.sampled_from(["4165550100", "416-555-0100", "+1 416 555 0100", "(416) 555.0100", "1-416-5550100"]),
    st.sampled_from(["4165550100", "+14165550100"]),
)
def test_phone_formats_compare_equal(a: str, b: str) -> None:
    """Phones equal by digits (a North American leading 1 ignored) are the same."""
    assert same("phone", a, b)


@given(st.emails())
def test_email_case_is_not_a_difference(email: str) -> None:
    """E-mails differing only in case and surrounding blanks are the same."""
    assert same("email", email.upper(), f" {email} ")
