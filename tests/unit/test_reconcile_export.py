"""EMR export files: FHIR Bundle, NDJSON and CSV are read with locations for bad records; FHIR resources
are mapped by the shipped mapping files as the feed would; CSV rows round-trip (hypothesis)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.errors import InputError
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import default_dirs, load_mapping_set
from adapter.reconcile.emr_data import ExportSource, emr_from_resources
from adapter.reconcile.emr_export import CsvColumns, read_export
from adapter.reconcile.model import Window

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir" / "r4"
WINDOW = Window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def mapping_set() -> MappingSet:
    return load_mapping_set(default_dirs())


def test_bundle_mapped_like_the_feed(tmp_path: Path, mapping_set: object) -> None:
    """A Bundle's Patient becomes the contact values the feed writes (digits-only phone, lower-case
    e-mail, mapped sex) and its booked Appointment in the window is kept with start and duration."""
    patient = json.loads((SAMPLES / "Patient.json").read_text())
    appointment = json.loads((SAMPLES / "Appointment.json").read_text())
    path = tmp_path / "export.json"
    path.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": patient}, {"resource": appointment}, {"fullUrl": "x"}],
            }
        )
    )
    contents = read_export(path)
    assert contents.problems == [("export.json: Bundle.entry[2].resource", "no resource with a resourceType")]
    data = emr_from_resources(contents.resources, mapping_set, WINDOW)
    assert [p.id for p in data.patients] == ["pat-1001"]
    values = data.patients[0].values
    assert (
        values["first_name"],
        values["last_name"],
        values["phone"],
        values["sex"],
        values["date_of_birth"],
    ) == ("Amélie", "Tremblay", "14165550142", "female", "1984-09-17")
    assert data.patients[0].upsert and data.patients[0].upsert["kind"] == "contact_upsert"
    [appt] = data.appointments
    assert (appt.id, appt.duration, appt.cancelled, appt.patients) == ("appt-5001", 20, False, ("pat-1001",))
    assert (
        emr_from_resources(
            contents.resources,
            mapping_set,
            Window(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)),
        ).appointments
        == []
    )


def test_ndjson_lines_and_unusable_records(tmp_path: Path, mapping_set: object) -> None:
    """NDJSON is read line by line: a broken line or a Patient the mapping refuses is a problem naming
    file:line, the others are used."""
    good = json.loads((SAMPLES / "Patient.json").read_text())
    nameless = {"resourceType": "Patient", "id": "p-nameless"}
    path = tmp_path / "patients.ndjson"
    path.write_text("\n".join([json.dumps(good), "{not json", "", json.dumps(nameless)]) + "\n")

    async def load() -> object:
        return await ExportSource(path, mapping_set).load(WINDOW)

    data = anyio.run(load)
    assert [p.id for p in data.patients] == ["pat-1001"]  # type: ignore[attr-defined]
    wheres = [where for where, _why in data.problems]  # type: ignore[attr-defined]
    assert wheres == ["patients.ndjson:2", "patients.ndjson:4"]


def test_unreadable_files_name_file_and_line(tmp_path: Path) -> None:
    """A JSON file that is not JSON names line and column; a CSV without the id column names the columns."""
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "resourceType": "Bundle",\n  oops\n}')
    with pytest.raises(InputError, match=r"bad\.json:3:3"):
        read_export(bad)
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("MRN,Given\n1,A\n")
    with pytest.raises(InputError, match=r"p\.csv:1: no column 'id'.*MRN, Given"):
        read_export(csv_path)
    with pytest.raises(InputError, match="field=Column"):
        CsvColumns.parse("first_name")


def test_csv_with_column_mapping(tmp_path: Path) -> None:
    """Columns are mapped by name, sex codes translated, dates read with the given format; a bad row is a
    problem at file:line and the others are kept."""
    path = tmp_path / "emr.csv"
    path.write_text(
        "MRN;Given;Family;Mail;DOB;Gender\nM1;Ada;Ok;ADA@Example.org;02/01/1980;F\n"
        "M2;Bo;;bo@example.org;31/12/1999;m\nM3;Cy;Z;cy@example.org;1999-12-31;x\n"
    )
    columns = CsvColumns.parse(
        "id=MRN,first_name=Given,last_name=Family,email=Mail,date_of_birth=DOB,sex=Gender",
        date_format="%d/%m/%Y",
        delimiter=";",
    )
    contents = read_export(path, csv_columns=columns)
    assert [p.id for p in contents.patients] == ["M1"]
    assert contents.patients[0].values == {
        "first_name": "Ada",
        "last_name": "Ok",
        "email": "ada@example.org",
        "sex": "female",
        "date_of_birth": "1980-01-02",
    }
    assert [w for w, _ in contents.problems] == ["emr.csv:3", "emr.csv:4"]


names = st.text(alphabet=st.characters(codec="utf-8", categories=["L"]), min_size=1, max_size=12)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Z0-9]{1,8}", fullmatch=True),
            names,
            names,
            st.dates(date(1900, 1, 1), date(2024, 1, 1)),
        ),
        max_size=8,
        unique_by=lambda r: r[0],
    )
)
def test_csv_round_trip(tmp_path: Path, rows: list[tuple[str, str, str, date]]) -> None:
    """Whatever rows are written (any letters, quotes added by the csv module), each comes back once with
    its id, names and birth date."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "first_name", "last_name", "date_of_birth"])
    for pid, first, last, birth in rows:
        writer.writerow([pid, first, last, birth.isoformat()])
    path = tmp_path / "round.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    contents = read_export(path)
    got = [
        (p.id, p.values["first_name"], p.values["last_name"], p.values["date_of_birth"])
        for p in contents.patients
    ]
    assert got == [(pid, first.strip(), last.strip(), birth.isoformat()) for pid, first, last, birth in rows]
