"""Pipes, the FHIRPath and dotted-JSON source languages, and the field-level compare."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import MappingFileError
from adapter.mapping.compare import compare, diff_json
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.mapping.pipes import Pipe, PipeContext, PipeError, split_pipes

CTX = PipeContext({"sex": {"F": "female", "*": "Unknown"}}, ZoneInfo("America/Toronto"))


@pytest.mark.parametrize(("pipe", "value", "expected"), [
    (Pipe("date"), "19800214", "1980-02-14"),
    (Pipe("date"), "198002141230", "1980-02-14"),
    (Pipe("date"), "1980-02-14", "1980-02-14"),
    (Pipe("datetime"), "202401151430", "2024-01-15T14:30:00-05:00"),
    (Pipe("datetime"), "20240715143000", "2024-07-15T14:30:00-04:00"),
    (Pipe("datetime"), "20240715143000+0000", "2024-07-15T14:30:00+00:00"),
    (Pipe("datetime"), "2024-07-15T14:30:00Z", "2024-07-15T14:30:00+00:00"),
    (Pipe("title"), "O'BRIEN-SMITH", "O'Brien-Smith"),
    (Pipe("title"), "McDonald", "McDonald"),
    (Pipe("digits"), "(514) 555-0101", "5145550101"),
    (Pipe("map", "sex"), "F", "female"),
    (Pipe("map", "sex"), "Q", "Unknown"),
    (Pipe("map", "sex"), "", ""),
    (Pipe("default", "x"), "", "x"),
    (Pipe("join", ", "), ["a", "", "b"], "a, b"),
    (Pipe("lower"), ["A", "B"], ["a", "b"]),
])
def test_pipes(pipe: Pipe, value: object, expected: object) -> None:
    """Each pipe converts as documented; lists are converted item by item except by join/default."""
    assert pipe.apply(value, CTX) == expected


@pytest.mark.parametrize("value", ["1980", "19801345", "2024011525", "nonsense"])
def test_bad_dates_raise_without_echoing_the_value(value: str) -> None:
    """An unreadable date raises PipeError whose message does not contain the value."""
    with pytest.raises(PipeError) as info:
        Pipe("date").apply(value, CTX)
    assert value not in str(info.value)


@settings(max_examples=200, derandomize=True)
@given(st.datetimes(min_value=__import__("datetime").datetime(1900, 1, 1)))
def test_datetime_pipe_keeps_the_instant_with_an_offset(value: object) -> None:
    """An HL7 DTM with an explicit offset becomes the same wall time with that offset."""
    hl7 = value.strftime("%Y%m%d%H%M%S") + "-0300"  # type: ignore[attr-defined]
    out = Pipe("datetime").apply(hl7, CTX)
    assert out.startswith(value.strftime("%Y-%m-%dT%H:%M:%S")) and out.endswith("-03:00")  # type: ignore[attr-defined]


def test_split_pipes_keeps_fhirpath_unions() -> None:
    """Only known pipe names at the right end are pipes; a FHIRPath union stays in the source."""
    assert split_pipes("PID-5-1 | trim | title") == ("PID-5-1", ["trim", "title"])
    assert split_pipes("name.given | name.family | lower") == ("name.given | name.family", ["lower"])


FHIR = """\
routes:
  Patient:
    match:
      fhir: {resource: Patient}
    operations:
      - kind: contact_upsert
        fields:
          emr_patient_id: identifier.where(type.coding.code = 'MR').value.first()
          first_name: name.where(use = 'official').given.first()
          last_name: name.where(use = 'official').family
          email: telecom.where(system = 'email').value
          date_of_birth: birthDate | date
"""

ONCALL = """\
routes:
  appointment_updated:
    match:
      oncall: {event: appointment_updated}
    operations:
      - kind: participant_update
        fields:
          emr_appointment_id: metadata.emr_appointment_id
          emr_patient_id: participants[0].metadata_id
          email: participants[*].email
          cancelled: cancelled
"""


def _folder(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_fhirpath_routes(tmp_path: Path) -> None:
    """FHIR routes read resources with FHIRPath through the same engine and file format."""
    ms = load_mapping_set([_folder(tmp_path, FHIR)])
    patient = {"resourceType": "Patient", "birthDate": "1980-02-14",
               "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "MRN9"}],
               "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}],
               "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "j@x.org"}]}
    result = ms.map("Patient", json.dumps(patient), source="fhir")
    assert result.operations[0].to_json() == {"kind": "contact_upsert", "emr_patient_id": "MRN9",
                                              "first_name": "Jane", "last_name": "Doe", "email": "j@x.org",
                                              "date_of_birth": "1980-02-14", "update_participants": False}


def test_fhirpath_syntax_errors_are_located(tmp_path: Path) -> None:
    """A FHIRPath syntax error is a load error at the expression's line."""
    with pytest.raises(MappingFileError) as info:
        load_mapping_set([_folder(tmp_path, FHIR.replace("family\n", "family.where(\n"))])
    assert info.value.line == 10 and "FHIRPath" in str(info.value)


def test_dotted_json_routes(tmp_path: Path) -> None:
    """OnCall JSON routes read dotted paths with [n] and [*]."""
    ms = load_mapping_set([_folder(tmp_path, ONCALL)])
    body = {"metadata": {"emr_appointment_id": "A1"}, "cancelled": False,
            "participants": [{"metadata_id": "P1", "email": ""}, {"email": "b@x.org"}]}
    ops = ms.map("appointment_updated", json.dumps(body), source="oncall_webhook").operations
    assert ops[0].to_json() == {"kind": "participant_update", "scope": "appointment",
                                "emr_appointment_id": "A1", "emr_patient_id": "P1", "email": "b@x.org",
                                "cancelled": False}


def test_compare_reports_field_level_differences(tmp_path: Path) -> None:
    """Two mapping folders that differ in one table entry differ in exactly that field."""
    site = (SHIPPED_DIR / "site.yaml").read_text(encoding="utf-8")
    (tmp_path / "site.yaml").write_text(site.replace("    VIRTUAL: online", "    VIRTUAL: phone"),
                                        encoding="utf-8")
    old = load_mapping_set([SHIPPED_DIR])
    new = load_mapping_set([SHIPPED_DIR, tmp_path])
    payload = (Path(__file__).resolve().parents[2] / "samples/hl7v2/siu_s12_v25_virtual.hl7").read_bytes()
    diffs = compare(old, new, "", payload, "mllp")
    assert [d.render() for d in diffs] == ["operations[0].type: 'online' -> 'phone'"]
    assert diff_json({"a": [1]}, {"a": [1, 2]})[0].render() == "a[1]: (absent) -> 2"
