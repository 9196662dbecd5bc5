"""EMR export files: a FHIR Bundle (JSON), FHIR NDJSON (one resource a line, as bulk export writes it),
or CSV with a column mapping.

FHIR resources are returned as they are, with where they were found (`file:line`, `entry[3]`); the
caller maps them with the same mapping files the feed uses, so a report compares exactly what the
feed would write. CSV rows become contact values directly, validated by the `contact_upsert` model.
A record that cannot be used is returned as a problem (where, why) rather than stopping the run;
a file that cannot be read at all raises InputError naming the file and line.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapter.errors import InputError
from adapter.mapping.operations import ContactUpsert
from adapter.reconcile.model import EMRPatient
from adapter.worker.upserts import contact_values

__all__ = ["CsvColumns", "ExportContents", "read_export"]

_CONTACT_KEYS = ("id", "first_name", "last_name", "email", "phone", "sex", "date_of_birth")
_DEFAULT_SEX = {"m": "male", "male": "male", "f": "female", "female": "female"}


@dataclass(frozen=True)
class CsvColumns:
    """Which CSV column holds each contact field, how sex codes and dates are written."""

    columns: dict[str, str] = field(default_factory=lambda: {k: k for k in _CONTACT_KEYS})
    sex_values: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_SEX))   # lower-case code ->
    date_format: str | None = None       # strptime format; None: ISO 8601 (YYYY-MM-DD)
    delimiter: str = ","

    @classmethod
    def parse(cls, text: str | None, *, date_format: str | None = None, delimiter: str = ",") -> CsvColumns:
        """From ``field=Column,field=Column`` (unnamed fields keep their own name as column)."""
        columns = {k: k for k in _CONTACT_KEYS}
        for pair in (text or "").split(","):
            if not pair.strip():
                continue
            name, sep, column = pair.partition("=")
            name = name.strip()
            if not sep or name not in _CONTACT_KEYS or not column.strip():
                raise InputError(f"CSV column mapping {pair.strip()!r} is not field=Column",
                                 hint=f"fields: {', '.join(_CONTACT_KEYS)}; e.g. id=MRN,first_name=Given")
            columns[name] = column.strip()
        return cls(columns=columns, date_format=date_format, delimiter=delimiter)


@dataclass
class ExportContents:
    resources: list[tuple[dict[str, Any], str]] = field(default_factory=list)   # (FHIR resource, where)
    patients: list[EMRPatient] = field(default_factory=list)                    # from CSV
    problems: list[tuple[str, str]] = field(default_factory=list)               # (where, why)


def read_export(path: str | Path, *, csv_columns: CsvColumns | None = None) -> ExportContents:
    """Read an export file; its kind is told by its suffix (.csv, .ndjson/.jsonl, else JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read EMR export {path}: {exc}",
                         hint="give --emr-export a readable UTF-8 file") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text, csv_columns or CsvColumns())
    if suffix in (".ndjson", ".jsonl"):
        return _read_ndjson(path, text)
    return _read_json(path, text)


def _read_json(path: Path, text: str) -> ExportContents:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})",
                         hint="export a FHIR Bundle, or NDJSON with the .ndjson suffix") from None
    out = ExportContents()
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        for index, entry in enumerate(data.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            where = f"{path.name}: Bundle.entry[{index}].resource"
            if isinstance(resource, dict) and resource.get("resourceType"):
                out.resources.append((resource, where))
            else:
                out.problems.append((where, "no resource with a resourceType"))
        return out
    if isinstance(data, dict) and data.get("resourceType"):
        out.resources.append((data, path.name))
        return out
    raise InputError(f"{path}: expected a FHIR Bundle or resource (resourceType), got "
                     f"{type(data).__name__}", hint="export a FHIR Bundle of Patient and Appointment")


def _read_ndjson(path: Path, text: str) -> ExportContents:
    out = ExportContents()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            resource = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append((where, f"not JSON at column {exc.colno} ({exc.msg})"))
            continue
        if isinstance(resource, dict) and resource.get("resourceType"):
            out.resources.append((resource, where))
        else:
            out.problems.append((where, "not a FHIR resource (no resourceType)"))
    return out


def _read_csv(path: Path, text: str, spec: CsvColumns) -> ExportContents:
    reader = csv.DictReader(text.splitlines(), delimiter=spec.delimiter)
    header = reader.fieldnames or []
    id_column = spec.columns["id"]
    if id_column not in header:
        raise InputError(f"{path}:1: no column {id_column!r} for the EMR patient id (columns: "
                         f"{', '.join(header) or 'none'})",
                         hint="map it with --csv-columns id=<column> (or [reconcile] csv_columns)")
    out = ExportContents()
    for number, row in enumerate(reader, start=2):
        where = f"{path.name}:{number}"
        try:
            out.patients.append(_csv_patient(row, spec, where))
        except ValueError as exc:
            out.problems.append((where, str(exc)))
    return out


def _csv_patient(row: dict[str, Any], spec: CsvColumns, where: str) -> EMRPatient:
    def cell(name: str) -> str | None:
        value = row.get(spec.columns.get(name, name))
        return value.strip() or None if isinstance(value, str) else None

    pid = cell("id")
    if not pid:
        raise ValueError(f"column {spec.columns['id']!r} (EMR patient id) is empty")
    body: dict[str, Any] = {"emr_patient_id": pid}
    for name in ("first_name", "last_name", "email", "phone"):
        body[name] = cell(name)
    sex = cell("sex")
    if sex is not None:
        body["sex"] = spec.sex_values.get(sex.lower(), "Unknown")
    birth = cell("date_of_birth")
    if birth is not None:
        try:
            body["date_of_birth"] = (dt.datetime.strptime(birth, spec.date_format).date()
                                     if spec.date_format else dt.date.fromisoformat(birth))
        except ValueError:
            raise ValueError(f"column {spec.columns['date_of_birth']!r}: {birth!r} is not a date "
                             f"({spec.date_format or 'YYYY-MM-DD'})") from None
    try:
        op = ContactUpsert.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ValueError(problems) from None
    return EMRPatient(pid, contact_values(op), where, op.to_json())
