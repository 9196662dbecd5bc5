"""Reconciliation against the real sandbox, both stores and a FHIR export mapped by the shipped mappings:
each kind of drift is found; `--fix` queues corrections that a real WorkerPool applies; a second report
holds only what needs a person."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapter.envelope import Source, State
from adapter.mapping.loader import default_dirs, load_mapping_set
from adapter.oncall.client import OnCallClient
from adapter.reconcile import reconcile
from adapter.reconcile.apply import ReconcileExecutor, with_reconcile
from adapter.reconcile.emr_data import ExportSource
from adapter.reconcile.fix import plan_fixes, queue_fixes
from adapter.reconcile.model import Finding, FindingKind, Window
from adapter.reconcile.report import ReportMeta, render
from adapter.retry import RetryPolicy
from adapter.store.base import Store
from adapter.worker import xref
from adapter.worker.pool import WorkerPool
from tests.integration.worker_fixtures import Sandbox, client, sandbox, wait_for

__all__ = ["client", "sandbox"]

pytestmark = pytest.mark.anyio

WINDOW = Window(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC))
EMR_ID = "2"   # the sandbox's custom field id for "EMR id"


def patient(pid: str, given: str, family: str, email: str, phone: str, birth: str,
            gender: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid,
            "name": [{"use": "official", "family": family, "given": [given]}],
            "telecom": [{"system": "phone", "value": phone, "use": "mobile"},
                        {"system": "email", "value": email}],
            "gender": gender, "birthDate": birth}


def fhir_appointment(appt_id: str, pid: str, start: str, minutes: int,
                     status: str = "booked") -> dict[str, Any]:
    end = datetime.fromisoformat(start) + timedelta(minutes=minutes)
    return {"resourceType": "Appointment", "id": appt_id, "status": status, "description": "Follow-up",
            "start": start, "end": end.isoformat(), "minutesDuration": minutes,
            "participant": [{"actor": {"reference": f"Patient/{pid}", "display": "Ada Ok"},
                             "status": "accepted"}]}


def contact(first: str, last: str, email: str, phone: str, birth: str, sex: str,
            emr_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"first_name": first, "last_name": last, "email": email, "phone": phone,
                            "date_of_birth": birth, "sex": sex}
    if emr_id:
        body["custom_field_values"] = {EMR_ID: emr_id}
    return body


def oncall_appointment(start: str, minutes: int) -> dict[str, Any]:
    return {"title": "Follow-up", "type": "online", "datetime": start, "duration": minutes,
            "division": "/divisions/1/", "participants": [{"name": "Ada Ok", "email": "ada@example.org"}]}


EMR_PATIENTS = [
    patient("P1", "Ada", "Ok", "ada@example.org", "416-555-0101", "1980-01-02", "female"),
    patient("P2", "Bo", "Missing", "bo@example.org", "416-555-0102", "1981-02-03", "male"),
    patient("P3", "Cy", "Noid", "cy@example.org", "416-555-0103", "1982-03-04", "male"),
    patient("P7", "Di", "Right", "di@example.org", "416-555-0107", "1987-07-08", "female"),
    patient("P8", "Ed", "Mail", "ed.new@example.org", "416-555-0108", "1988-08-09", "male"),
    patient("P9", "Fay", "Stale", "fay@example.org", "416-555-0109", "1989-09-10", "female"),
    patient("P10", "Gus", "Unlinked", "gus@example.org", "416-555-0110", "1990-10-11", "male"),
]
CONTACTS = [
    contact("Ada", "Ok", "ada@example.org", "4165550101", "1980-01-02", "female", "P1"),  # 0 in sync
    contact("Cy", "Noid", "CY@example.org", "4165550103", "1982-03-04", "male"),  # 1 no EMR id
    contact("Orphan", "Person", "orphan@example.org", "4165550199", "1970-01-01", "Unknown"),  # 2 no match
    contact("Dup", "One", "dup1@example.org", "4165550151", "1975-05-05", "male", "P5"),  # 3 dup EMR id
    contact("Dup", "Two", "dup2@example.org", "4165550152", "1975-05-06", "male", "P5"),  # 4 dup EMR id
    contact("Twin", "A", "family@example.org", "4165550161", "2010-06-06", "female", "P6a"),  # 5 same e-mail
    contact("Twin", "B", "family@example.org", "4165550162", "2010-06-06", "female", "P6b"),  # 6 and birth
    contact("Di", "Wrong", "di@example.org", "4165550000", "1987-07-08", "male", "P7"),  # 7 mismatch
    contact("Ed", "Mail", "ed.old@example.org", "4165550108", "1988-08-09", "male", "P8"),  # 8 e-mail
    contact("Gus", "Unlinked", "gus@example.org", "4165550110", "1990-10-11", "male", "P10"),  # 9 no xref
]


async def seed_drift(sandbox: Sandbox, store: Store, tmp_path: Path) -> Path:
    seeded = await sandbox.seed({"contacts": CONTACTS, "appointments": [
        oncall_appointment("2030-01-10T10:00:00+00:00", 60),    # A1: moved in the EMR since
        oncall_appointment("2030-01-11T10:00:00+00:00", 30),    # A2: cancelled in the EMR
        oncall_appointment("2030-01-12T10:00:00+00:00", 30),    # A0: in sync
    ]})
    urls = [c["url"] for c in seeded["contacts"]]
    for pid, index in (("P1", 0), ("P3", 1), ("P7", 7), ("P8", 8)):
        await store.xref_put(xref.PATIENT, pid, urls[index], {})
    # P9's contact was deleted (or belonged to another key): a stale entry.
    await store.xref_put(xref.PATIENT, "P9", f"{sandbox.base_url}/contacts/9999/", {})
    appointments = [a["url"] for a in seeded["appointments"]]
    for appt_id, url, start in (("A1", appointments[0], "2030-01-10T10:00:00+00:00"),
                                ("A2", appointments[1], "2030-01-11T10:00:00+00:00"),
                                ("A0", appointments[2], "2030-01-12T10:00:00+00:00"),
                                ("A3", f"{sandbox.base_url}/appointments/999/", "2030-01-13T10:00:00+00:00")):
        await store.xref_put(xref.APPOINTMENT, appt_id, url, {"cancelled": False, "start": start,
                                                                  "patients": ["P1"]})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": r} for r in [*EMR_PATIENTS,
                                  fhir_appointment("A1", "P1", "2030-01-10T11:00:00+00:00", 30),
                                  fhir_appointment("A2", "P1", "2030-01-11T10:00:00+00:00", 30, "cancelled"),
                                  fhir_appointment("A0", "P1", "2030-01-12T10:00:00+00:00", 30)]]}
    path = tmp_path / "emr-export.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


def by_kind(findings: list[Finding]) -> dict[FindingKind, list[str]]:
    out: dict[FindingKind, list[str]] = {}
    for finding in findings:
        out.setdefault(finding.kind, []).append(finding.subject)
    return out


async def run(store: Store, client: OnCallClient, export: Path) -> list[Finding]:
    mapping_set = load_mapping_set(default_dirs())
    _snapshot, findings = await reconcile(store, client, window=WINDOW, emr=ExportSource(export, mapping_set),
                                          concurrency=3, fix_email=True)
    return findings


async def apply_queue(store: Store, client: OnCallClient) -> None:
    mapping_set = load_mapping_set(default_dirs())
    pool = WorkerPool(store, with_reconcile(lambda: mapping_set), client, workers=2, batch=4,
                      poll_seconds=0.05, seed=5,
                      retry_policy=RetryPolicy(base=0.01, cap=0.05, max_attempts=3),
                      executor=ReconcileExecutor(store, client))

    async def settled() -> bool:
        stats = await store.stats()
        return not stats.by_state.get(State.QUEUED.value) and not stats.by_state.get(State.CLAIMED.value)

    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await wait_for(settled, what="reconcile envelopes applied")
        pool.stop()


async def test_each_drift_found_fixed_through_the_queue_then_clean(store: Store, client: OnCallClient,
                                                                   sandbox: Sandbox, tmp_path: Path) -> None:
    """Every kind of drift seeded in the sandbox, crosswalk and export is reported with the right subject;
    the fixes queued as RECONCILE envelopes are applied by a WorkerPool; the second report holds only
    the findings that need a person (duplicates, a contact no EMR patient matches)."""
    export = await seed_drift(sandbox, store, tmp_path)
    first = await run(store, client, export)
    found = by_kind(first)
    assert found == {
        FindingKind.MISSING_IN_ONCALL: ["patient P2"],
        FindingKind.CONTACT_WITHOUT_EMR_ID: found[FindingKind.CONTACT_WITHOUT_EMR_ID],
        FindingKind.DUPLICATE_EMR_ID: ["patient P5"],
        FindingKind.DUPLICATE_EMAIL_BIRTH_DATE: found[FindingKind.DUPLICATE_EMAIL_BIRTH_DATE],
        FindingKind.FIELD_MISMATCH: ["patient P7", "patient P8"],
        FindingKind.APPOINTMENT_OUT_OF_SYNC: ["appointment A1", "appointment A2"],
        FindingKind.CROSSWALK_STALE: ["appointment A3", "patient P9"],
        FindingKind.CROSSWALK_MISSING: ["patient P10", "patient P6a", "patient P6b"],
    }
    assert len(found[FindingKind.CONTACT_WITHOUT_EMR_ID]) == 2
    assert len(found[FindingKind.DUPLICATE_EMAIL_BIRTH_DATE]) == 1
    mismatch = {f.subject: f for f in first if f.kind is FindingKind.FIELD_MISMATCH}
    assert set(mismatch["patient P7"].fields) == {"last_name", "phone", "sex"}
    assert set(mismatch["patient P8"].fields) == {"email"}
    a1 = next(f for f in first if f.subject == "appointment A1")
    assert set(a1.fields) == {"datetime", "duration"}
    manual = {f.subject for f in first if not f.fixable}
    assert manual == {"patient P5", "contacts 6, 7", "contact 3"}

    plan = plan_fixes(first)
    assert all(e.source is Source.RECONCILE for e in plan.envelopes)
    assert await queue_fixes(store, plan) == len(plan.envelopes)
    await apply_queue(store, client)
    assert not await store.list(states=[State.DEAD])

    second = await run(store, client, export)
    assert {f.subject for f in second} == manual, render(second, _meta(), "table")
    state = await sandbox.state()
    by_emr_id = [c for c in state["contacts"] if c["custom_field_values"].get(EMR_ID) == "P2"]
    assert len(by_emr_id) == 1 and by_emr_id[0]["last_name"] == "Missing"
    cancelled = {a["url"]: a["cancelled"] for a in state["appointments"]}
    assert cancelled[(await store.xref_get(xref.APPOINTMENT, "A2")).target] is True   # type: ignore[union-attr]
    assert await store.xref_get(xref.APPOINTMENT, "A3") is None
    assert (await store.xref_get(xref.PATIENT, "P9")).target != f"{sandbox.base_url}/contacts/9999/"  # type: ignore[union-attr]


async def test_fix_is_compare_and_set(store: Store, client: OnCallClient, sandbox: Sandbox,
                                      tmp_path: Path) -> None:
    """A correction queued from a report does not overwrite a value changed in OnCall after the report:
    the contact's phone edited meanwhile is kept, and the envelope still completes."""
    export = await seed_drift(sandbox, store, tmp_path)
    first = await run(store, client, export)
    p7 = next(f for f in first if f.subject == "patient P7")
    await client.patch_contact(p7.oncall_url or "", {"phone": "4165559999"})
    plan = plan_fixes([p7])
    await queue_fixes(store, plan)
    await apply_queue(store, client)
    assert not await store.list(states=[State.DEAD])
    now = await client.get_contact(p7.oncall_url or "")
    assert (now.phone, now.last_name, now.sex) == ("4165559999", "Right", "female")


def _meta() -> ReportMeta:
    return ReportMeta(datetime.now(UTC), WINDOW.since, WINDOW.until, "test", 0, 0)
