"""The EMR side of a reconciliation: FHIR resources (from the EMR's FHIR server or an export file)
mapped with the feed's own mapping set, so the report expects exactly what the feed would write.

    FHIRSearchSource(emr_client, mapping_set)   Patient (all) and Appointment (in the window) by search
    ExportSource(path, mapping_set, csv_columns) a FHIR Bundle, NDJSON, or CSV file
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from adapter.errors import InputError
from adapter.reconcile.emr_export import CsvColumns, read_export
from adapter.reconcile.fields import as_instant
from adapter.reconcile.model import EMRAppointment, EMRPatient, Window
from adapter.worker.upserts import contact_values

__all__ = ["EMRData", "ExportSource", "FHIRSearchSource", "emr_from_resources"]

logger = structlog.get_logger(__name__)


@dataclass
class EMRData:
    patients: list[EMRPatient] = field(default_factory=list)
    appointments: list[EMRAppointment] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)   # (where, why)


def emr_from_resources(resources: list[tuple[dict[str, Any], str]], mapping_set: Any,
                       window: Window) -> EMRData:
    """Patients and appointments (those starting in the window) as the feed would send them."""
    out = EMRData()
    for resource, where in resources:
        kind = str(resource.get("resourceType"))
        if kind not in ("Patient", "Appointment"):
            continue
        try:
            result = mapping_set.map(kind, json.dumps(resource), source="fhir")
        except InputError as exc:
            out.problems.append((where, str(exc)))
            continue
        for op in result.operations:
            if op.kind == "contact_upsert":
                out.patients.append(EMRPatient(str(op.emr_patient_id), contact_values(op), where,
                                               op.to_json()))
            elif op.kind == "appointment_upsert":
                appointment = EMRAppointment(
                    str(op.emr_appointment_id), op.datetime, op.duration, False, where,
                    tuple(str(p.emr_patient_id) for p in op.participants))
                if window.holds(appointment.start):
                    out.appointments.append(appointment)
            elif op.kind == "appointment_cancel":
                start = as_instant(resource.get("start"))
                if window.holds(start):
                    out.appointments.append(EMRAppointment(str(op.emr_appointment_id), start,
                                                           _minutes(resource), True, where))
    return out


def _minutes(resource: dict[str, Any]) -> int | None:
    if isinstance(resource.get("minutesDuration"), int):
        return int(resource["minutesDuration"])
    start, end = as_instant(resource.get("start")), as_instant(resource.get("end"))
    return int((end - start).total_seconds() // 60) if start and end else None


class FHIRSearchSource:
    """Search the EMR's FHIR server: every Patient, and Appointments dated in the window."""

    def __init__(self, emr_client: Any, mapping_set: Any, *, patient_params: dict[str, str] | None = None
                 ) -> None:
        self.client = emr_client
        self.mapping_set = mapping_set
        self.patient_params = dict(patient_params or {})
        self.description = f"FHIR search {emr_client.base_url}"

    async def load(self, window: Window) -> EMRData:
        patients = await self.client.search_all("Patient", self.patient_params)
        appointments = await self.client.search_all("Appointment", [
            *self.patient_params.items(),
            ("date", f"ge{_instant(window.since)}"), ("date", f"lt{_instant(window.until)}")])
        resources = [(r, f"Patient/{r.get('id')}") for r in patients]
        resources += [(r, f"Appointment/{r.get('id')}") for r in appointments]
        logger.info("reconcile_emr_searched", patients=len(patients), appointments=len(appointments))
        return emr_from_resources(resources, self.mapping_set, window)


class ExportSource:
    """An export file (FHIR Bundle, NDJSON, or CSV with a column mapping)."""

    def __init__(self, path: str | Path, mapping_set: Any, *, csv_columns: CsvColumns | None = None) -> None:
        self.path = Path(path)
        self.mapping_set = mapping_set
        self.csv_columns = csv_columns
        self.description = f"export {self.path.name}"

    async def load(self, window: Window) -> EMRData:
        contents = await anyio.to_thread.run_sync(
            lambda: read_export(self.path, csv_columns=self.csv_columns))
        data = emr_from_resources(contents.resources, self.mapping_set, window)
        data.patients.extend(contents.patients)
        data.problems = contents.problems + data.problems
        logger.info("reconcile_emr_export_read", patients=len(data.patients),
                    appointments=len(data.appointments), problems=len(data.problems))
        return data


def _instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
