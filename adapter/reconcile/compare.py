"""The comparison: a pure function from a Snapshot to Findings, each with its safe fix (or none).

Contacts are tied to EMR patients by, in order: the EMR id custom field; the crosswalk; a unique EMR
patient with the same e-mail and birth date (the rule the feed's own lookup uses). What a fix may do
is narrow on purpose: set an EMPTY EMR id field, patch fields from the EMR (the system of record;
the e-mail only when asked, OnCall may refuse it), point the crosswalk at the contact that carries
the EMR id, forget entries whose object is gone, create a missing contact through the feed's own
`contact_upsert` (which looks before it creates), reschedule or cancel as the EMR says. Anything
that needs judgement (duplicates, an appointment cancelled in OnCall only) is reported for a person.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from adapter.oncall.matching import email_key
from adapter.oncall.models import Contact
from adapter.reconcile.compare_appointments import compare_appointments
from adapter.reconcile.fields import CONTACT_COMPARED, contact_field, same
from adapter.reconcile.model import EMRPatient, Finding, FindingKind, Snapshot
from adapter.worker import xref

__all__ = ["KIND_ORDER", "compare", "emr_id_of"]

KIND_ORDER = list(FindingKind)


def emr_id_of(contact: Contact, label: str) -> str | None:
    value = contact.custom_value(label)
    return None if value in (None, "", False) else str(value)


def _who(contact: Contact) -> str:
    name = contact.name or " ".join(p for p in (contact.first_name, contact.last_name) if p)
    return f"contact {contact.id} ({name or 'no name'}{', ' + contact.email if contact.email else ''})"


class _Index:
    def __init__(self, snap: Snapshot) -> None:
        label = snap.emr_id_label
        self.by_url = {c.url: c for c in snap.contacts}
        self.by_emr_id: dict[str, list[Contact]] = defaultdict(list)
        for contact in sorted(snap.contacts, key=lambda c: c.id or 0):
            eid = emr_id_of(contact, label)
            if eid is not None:
                self.by_emr_id[eid].append(contact)
        self.xref = {x.source_id: x for x in snap.patient_xrefs}
        self.pids_at: dict[str, list[str]] = defaultdict(list)
        for x in snap.patient_xrefs:
            self.pids_at[x.target].append(x.source_id)
        self.emr: dict[str, EMRPatient] = {p.id: p for p in snap.emr_patients or []}
        self.emr_by_email_birth: dict[tuple[str, str], list[EMRPatient]] = defaultdict(list)
        for patient in self.emr.values():
            key = (email_key(patient.values.get("email")), str(patient.values.get("date_of_birth") or ""))
            if all(key):
                self.emr_by_email_birth[key].append(patient)


def compare(snap: Snapshot, *, fix_email: bool = False) -> list[Finding]:
    """Every difference between the crosswalk, OnCall and (when collected) the EMR."""
    idx = _Index(snap)
    findings: list[Finding] = []
    handled: set[str] = set()                  # EMR ids whose fix already recreates or ties a contact
    tied: dict[str, Contact] = {}               # EMR id -> its contact
    findings += _stale_patients(snap, idx, handled)
    findings += _without_emr_id(snap, idx, tied)
    findings += _duplicates(snap, idx)
    findings += _crosswalk_missing(snap, idx)
    if snap.emr_patients is not None:
        findings += _emr_patients(snap, idx, tied, handled, fix_email)
    findings += compare_appointments(snap)
    findings += [Finding(FindingKind.EMR_RECORD_UNUSABLE, where, why, f"emr:{where}",
                         action="fix the record in the EMR (or its export) and reconcile again")
                 for where, why in snap.emr_unusable]
    return sorted(findings, key=lambda f: (KIND_ORDER.index(f.kind), f.subject))


def _stale_patients(snap: Snapshot, idx: _Index, handled: set[str]) -> list[Finding]:
    out: list[Finding] = []
    for entry in snap.patient_xrefs:
        if entry.target not in snap.gone:
            continue
        pid = entry.source_id
        carriers = idx.by_emr_id.get(pid, [])
        fix: list[dict[str, Any]]
        if len(carriers) == 1:
            fix = [_link(pid, carriers[0].url, entry.target)]
            action = f"point the crosswalk at contact {carriers[0].id}, which carries this EMR id"
        elif carriers:
            fix, action = [], "several contacts carry this EMR id: merge them in OnCall first"
        else:
            fix = [{"kind": "xref_unlink", "namespace": xref.PATIENT, "source_id": pid,
                    "target": entry.target}]
            patient = idx.emr.get(pid)
            if patient is not None and patient.upsert:
                fix.append(patient.upsert)
                action = "forget the entry and create the contact from the EMR (looked up first)"
            else:
                action = "forget the entry: the feed's next update for this patient looks it up again"
        handled.add(pid)
        out.append(Finding(FindingKind.CROSSWALK_STALE, f"patient {pid}",
                           f"the crosswalk points at contact {entry.target}, which OnCall no longer has",
                           f"patient:{pid}", pid, entry.target, fix=tuple(fix), action=action))
    return out


def _link(pid: str, target: str, replaces: str | None) -> dict[str, Any]:
    return {"kind": "xref_link", "namespace": xref.PATIENT, "source_id": pid, "target": target,
            "replaces": replaces}


def _without_emr_id(snap: Snapshot, idx: _Index, tied: dict[str, Contact]) -> list[Finding]:
    out: list[Finding] = []
    for contact in snap.contacts:
        if emr_id_of(contact, snap.emr_id_label) is not None:
            continue
        fix: list[dict[str, Any]] = []
        pids = [p for p in idx.pids_at.get(contact.url, []) if not idx.by_emr_id.get(p)]
        pid: str | None = None
        if len(pids) == 1:
            pid, why = pids[0], "the crosswalk ties it to EMR patient"
        elif not pids and snap.emr_patients is not None:
            key = (email_key(contact.email),
                   contact.date_of_birth.isoformat() if contact.date_of_birth else "")
            matches = [p for p in idx.emr_by_email_birth.get(key, []) if not idx.by_emr_id.get(p.id)]
            if len(matches) == 1:
                pid, why = matches[0].id, "same e-mail and birth date as EMR patient"
        if pid is not None:
            tied[pid] = contact
            fix.append({"kind": "contact_set_emr_id", "contact_url": contact.url, "emr_patient_id": pid})
            current = idx.xref.get(pid)
            if current is None or current.target != contact.url:
                fix.append(_link(pid, contact.url, current.target if current else None))
            action = f"set its EMR id to {pid} ({why} {pid})"
        elif len(pids) > 1:
            action = f"the crosswalk ties several EMR patients to it ({', '.join(pids)}): decide which"
        else:
            action = "no EMR patient matches: set its EMR id in OnCall, or leave it if it is no EMR patient"
        ordering = f"patient:{pid}" if pid else f"oncall_contact:{contact.id}"
        out.append(Finding(FindingKind.CONTACT_WITHOUT_EMR_ID, f"contact {contact.id}",
                           f"{_who(contact)} has no {snap.emr_id_label!r} value", ordering, pid, contact.url,
                           fix=tuple(fix), action=action))
    return out


def _duplicates(snap: Snapshot, idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    for pid, carriers in sorted(idx.by_emr_id.items()):
        if len(carriers) > 1:
            out.append(Finding(
                FindingKind.DUPLICATE_EMR_ID, f"patient {pid}",
                f"EMR id {pid} is on {len(carriers)} contacts: " + "; ".join(_who(c) for c in carriers),
                f"patient:{pid}", pid, carriers[0].url,
                action="merge the contacts in OnCall (keep one), then reconcile again"))
    groups: dict[tuple[str, str], list[Contact]] = defaultdict(list)
    for contact in sorted(snap.contacts, key=lambda c: c.id or 0):
        if contact.email and contact.date_of_birth:
            groups[(email_key(contact.email), contact.date_of_birth.isoformat())].append(contact)
    for (email, birth), members in sorted(groups.items()):
        if len(members) > 1:
            ids = {emr_id_of(c, snap.emr_id_label) for c in members}
            note = (" (different EMR ids: perhaps family members sharing an e-mail)"
                    if len(ids - {None}) > 1 else "")
            out.append(Finding(
                FindingKind.DUPLICATE_EMAIL_BIRTH_DATE, f"contacts {', '.join(str(c.id) for c in members)}",
                f"{len(members)} contacts share e-mail {email} and birth date {birth}{note}: "
                + "; ".join(_who(c) for c in members),
                f"oncall_contact:{members[0].id}", None, members[0].url,
                action="check whether they are one person; merge them in OnCall if so"))
    return out


def _crosswalk_missing(snap: Snapshot, idx: _Index) -> list[Finding]:
    out: list[Finding] = []
    for pid, carriers in sorted(idx.by_emr_id.items()):
        if len(carriers) != 1:
            continue
        contact = carriers[0]
        entry = idx.xref.get(pid)
        if entry is not None and (entry.target == contact.url or entry.target in snap.gone):
            continue   # right, or stale (reported and fixed as such)
        was = f"points at {entry.target}" if entry is not None else "has no entry"
        out.append(Finding(FindingKind.CROSSWALK_MISSING, f"patient {pid}",
                           f"{_who(contact)} carries EMR id {pid}, but the crosswalk {was}",
                           f"patient:{pid}", pid, contact.url,
                           fix=(_link(pid, contact.url, entry.target if entry else None),),
                           action=f"point the crosswalk at contact {contact.id}"))
    return out


def _emr_patients(snap: Snapshot, idx: _Index, tied: dict[str, Contact], handled: set[str],
                  fix_email: bool) -> list[Finding]:
    out: list[Finding] = []
    for pid, patient in sorted(idx.emr.items()):
        carriers = idx.by_emr_id.get(pid, [])
        contact: Contact | None = carriers[0] if len(carriers) == 1 else tied.get(pid)
        entry = idx.xref.get(pid)
        if contact is None and not carriers and entry is not None:
            contact = idx.by_url.get(entry.target)
        if contact is None:
            if carriers or pid in handled:
                continue   # duplicates or a stale entry: reported with their own fix
            out.append(Finding(
                FindingKind.MISSING_IN_ONCALL, f"patient {pid}",
                f"EMR patient {pid} ({_name(patient)}, {patient.where}) has no OnCall contact",
                f"patient:{pid}", pid, None, fix=(patient.upsert,) if patient.upsert else (),
                action="create the contact (the feed's contact_upsert: an existing match is adopted)"))
            continue
        diffs = {name: (patient.values[name], contact_field(contact, name)) for name in CONTACT_COMPARED
                 if patient.values.get(name) not in (None, "")
                 and not same(name, patient.values[name], contact_field(contact, name))}
        if not diffs:
            continue
        settable = {k: v for k, v in diffs.items() if k != "email" or fix_email}
        fix = ({"kind": "contact_patch", "contact_url": contact.url, "emr_patient_id": pid,
                "set": {k: e for k, (e, _o) in settable.items()},
                "expect": {k: o for k, (_e, o) in settable.items()}},) if settable else ()
        action = f"patch {', '.join(settable)} from the EMR" if settable else ""
        if "email" in diffs and not fix_email:
            action += ("; " if action else "") + ("e-mail left alone (OnCall may refuse the change): edit it "
                                                 "in OnCall or rerun with --fix-email")
        out.append(Finding(FindingKind.FIELD_MISMATCH, f"patient {pid}",
                           f"{_who(contact)} differs from EMR patient {pid} ({patient.where}) in "
                           f"{', '.join(diffs)}", f"patient:{pid}", pid, contact.url, diffs, fix, action))
    return out


def _name(patient: EMRPatient) -> str:
    return " ".join(str(patient.values[k]) for k in ("first_name", "last_name") if patient.values.get(k))
