"""Loading mapping folders: every error names file:line:column; overrides; version hash; reference doc."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from adapter.errors import MappingFileError
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.mapping.reference import render_reference

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
tables:
  sex2: {F: female, M: male}
routes:
  ADT_A04:
    match:
      hl7v2: {type: ADT, trigger: [A04]}
    operations:
      - kind: contact_upsert
        fields:
          emr_patient_id: PID-3-1
          first_name: PID-5-2
          last_name: PID-5-1
          sex: PID-8 | map(sex2)
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _error(folder: Path) -> MappingFileError:
    with pytest.raises(MappingFileError) as info:
        load_mapping_set([folder])
    return info.value


def test_a_small_folder_loads_and_maps(tmp_path: Path) -> None:
    """A valid folder loads alone and maps a message."""
    _write(tmp_path, "adt.yaml", GOOD)
    ms = load_mapping_set([tmp_path])
    result = ms.map("", "MSH|^~\\&|A|B|||||ADT^A04|1|P|2.5\rPID|1||M1||DOE^JANE|||F", source="hl7v2")
    assert result.route == "ADT_A04"
    assert result.operations[0].to_json() == {"kind": "contact_upsert", "emr_patient_id": "M1",
                                              "first_name": "JANE", "last_name": "DOE", "sex": "female",
                                              "update_participants": False}


@pytest.mark.parametrize(("old", "new", "line", "column", "words"), [
    ("          last_name: PID-5-1\n", "          last_name: PID-5-1\n          nickname: PID-5-3\n",
     13, 11, "unknown target field 'nickname'"),
    ("    operations:", "    operatons:", 7, 5, "unknown key 'operatons'"),
    ("PID-8 | map(sex2)", "PID-8 | map(gender)", 13, 16, "no table named 'gender'"),
    ("PID-8 | map(sex2)", "PID-8 | upcase", 13, 16, "unknown pipe 'upcase'"),
    ("PID-3-1", "PID-41", 10, 27, "at most"),
    ("PID-3-1", "PID-3-1-1-1", 10, 27, "is not an HL7 path"),
    ("PID-5-2", "First", 11, 23, "write {const"),
    ("kind: contact_upsert", "kind: contact_upsertt", 8, 15, "unknown operation kind"),
    ("          first_name: PID-5-2\n", "", 8, 9, "lacks required field(s) first_name"),
    ("  sex2: {F: female, M: male}", "  sex2: {F: female, F: male}", 2, 21, "duplicate key 'F'"),
    ("PID-5-1\n", "'PID-5-1\n", None, 0, "YAML syntax error"),
    ("trigger: [A04]", "trigger: []", 6, 35, "at least 1"),
])
def test_errors_name_file_line_and_column(tmp_path: Path, old: str, new: str, line: int | None, column: int,
                                          words: str) -> None:
    """Each mistake is reported with the file, the line and column of the offending key or value."""
    assert old in GOOD
    path = _write(tmp_path, "adt.yaml", GOOD.replace(old, new, 1))
    err = _error(tmp_path)
    assert err.file == str(path)
    assert words in str(err)
    assert err.line is not None
    if line is not None:
        assert err.line == line, str(err)
    if column:
        assert err.column == column, str(err)
    assert re.match(rf"{re.escape(str(path))}:{err.line}(:\d+)?", str(err))


def test_version_restricted_route_rejects_newer_fields(tmp_path: Path) -> None:
    """`versions: ["2.3"]` checks paths against v2.3, where PID has 30 fields."""
    _write(tmp_path, "adt.yaml", GOOD.replace("trigger: [A04]}", "trigger: [A04], versions: ['2.3']}")
           .replace("PID-3-1", "PID-35"))
    assert "at most 30 fields" in str(_error(tmp_path))


def test_unknown_fragment_and_duplicate_route(tmp_path: Path) -> None:
    """An unknown include and a route defined in two files are errors naming both places."""
    _write(tmp_path, "a.yaml", GOOD.replace("        fields:", "        include: [nope]\n        fields:"))
    assert "no fragment named 'nope'" in str(_error(tmp_path))
    _write(tmp_path, "a.yaml", GOOD)
    _write(tmp_path, "b.yaml", GOOD.replace("sex2", "sex3"))
    err = _error(tmp_path)
    assert "already defined in" in str(err) and err.file.endswith("b.yaml") and err.line == 4


def test_two_plain_routes_for_one_trigger_are_ambiguous(tmp_path: Path) -> None:
    """Two routes without `when` for the same trigger are refused at load."""
    _write(tmp_path, "a.yaml", GOOD)
    _write(tmp_path, "b.yaml", GOOD.replace("ADT_A04:", "ADT_A04_bis:").replace("sex2", "sex3"))
    assert "without a `when` condition" in str(_error(tmp_path))


def test_bad_condition_is_located(tmp_path: Path) -> None:
    """A condition with two tests is refused at its line."""
    when = "    when: {path: MSH-4, equals: A, exists: true}\n    operations:"
    _write(tmp_path, "a.yaml", GOOD.replace("    operations:", when))
    err = _error(tmp_path)
    assert err.line == 7 and "exactly one of equals, in, exists" in str(err)


def test_user_folder_overrides_shipped_files_one_by_one(tmp_path: Path) -> None:
    """A user file with a shipped file's relative name replaces it; other shipped files stay."""
    shipped = load_mapping_set([SHIPPED_DIR])
    site = (SHIPPED_DIR / "site.yaml").read_text(encoding="utf-8")
    _write(tmp_path, "site.yaml", site.replace("http://127.0.0.1:8900/divisions/1/",
                                               "https://api.oncallhealth.ca/divisions/7/"))
    user = load_mapping_set([SHIPPED_DIR, tmp_path])
    assert user.version != shipped.version
    assert len(user.routes) == len(shipped.routes)
    assert user.tables["division_by_location"]["CLINIC_A"] == "https://api.oncallhealth.ca/divisions/7/"
    assert str(tmp_path / "site.yaml") in user.files and str(SHIPPED_DIR / "site.yaml") not in user.files


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    """The same content gives the same version; any change gives another."""
    _write(tmp_path, "adt.yaml", GOOD)
    first = load_mapping_set([tmp_path]).version
    assert load_mapping_set([tmp_path]).version == first
    _write(tmp_path, "adt.yaml", GOOD + "# a comment\n")
    assert load_mapping_set([tmp_path]).version != first


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    """A folder that does not exist is named in the error."""
    with pytest.raises(MappingFileError, match="does not exist"):
        load_mapping_set([tmp_path / "nope"])


def test_shipped_mappings_are_valid() -> None:
    """The shipped folder loads with every HL7 route of the issue."""
    names = {r.name for r in load_mapping_set([SHIPPED_DIR]).routes}
    assert {"ADT_A01", "ADT_A04", "ADT_A08", "ADT_A31", "ADT_A28", "ADT_A40", "ADT_A03", "ADT_A11",
            "SIU_S12", "SIU_S13", "SIU_S14", "SIU_S15", "SIU_S17", "SIU_S26"} <= names


def test_reference_doc_is_up_to_date() -> None:
    """docs/mapping-reference.md is what the schema renders (regenerate with `mappings reference --write`)."""
    committed = (ROOT / "docs" / "mapping-reference.md").read_text(encoding="utf-8")
    hint = "run: oncall-adapter mappings reference --write docs/mapping-reference.md"
    assert committed == render_reference(), hint
