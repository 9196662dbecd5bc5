"""HL7 terser paths: parsing, formatting, reading a tokenised message, load-time structure checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.hl7.er7 import Message
from adapter.hl7.path import Hl7Path, Scope, check_path

MSG = Message.parse(
    "MSH|^~\\&|A|FAC|||20240101||SIU^S12|1|P|2.5\r"
    "SCH||APPT1\r"
    "PID|1||111^^^X^PI~MRN1^^^X^MR||DOE^JANE||||||||a@x.org^NET~^PRN^PH^b@y.org\r"
    "PV1|1|O|LOC1\r"
    "PID|2||MRN2^^^X^MR||ROE^RICHARD\r"
    "PV1|1|O|LOC2\r"
    "ZXT|1|flag\r"
    "AIP|1|A|DR1\r"
    "AIP|2|A|DR2\r"
)


@pytest.mark.parametrize(("text", "expected"), [
    ("PID-3(2)-1", "MRN1"),
    ("PID-3-5", "PI"),
    ("PID-5-2", "JANE"),
    ("AIP(2)-3", "DR2"),
    ("ZXT-2", "flag"),
    ("MSH-9-2", "S12"),
    ("MSH-1", "|"),
    ("PID-99", ""),
    ("OBX-1", ""),
])
def test_read_single_values(text: str, expected: str) -> None:
    """A path without `*` reads one decoded value, '' when absent."""
    assert Hl7Path.parse(text).read(MSG) == expected


def test_read_lists() -> None:
    """`*` on a repetition or a segment occurrence reads a list."""
    assert Hl7Path.parse("PID-13(*)-4").read(MSG) == ["", "b@y.org"]
    assert Hl7Path.parse("AIP(*)-3").read(MSG) == ["DR1", "DR2"]
    assert Hl7Path.parse("PID(*)-3(*)-1").read(MSG) == ["111", "MRN1", "MRN2"]


def test_groups_scope_reads_each_patient() -> None:
    """In a PID group, PID and PV1 resolve to that patient's segments; others to the whole message."""
    groups = Scope(MSG).groups("PID")
    assert [Hl7Path.parse("PV1-3").read(g) for g in groups] == ["LOC1", "LOC2"]
    assert [Hl7Path.parse("PID-5").read(g) for g in groups] == ["DOE", "ROE"]
    assert [Hl7Path.parse("SCH-2").read(g) for g in groups] == ["APPT1", "APPT1"]


@pytest.mark.parametrize("bad", ["PID", "PID-0", "pid-3", "PID-3(0)", "PID-3-", "PID-3-1-1-1", "PI-3", ""])
def test_parse_rejects_malformed(bad: str) -> None:
    """Malformed paths raise ValueError naming the expected form."""
    with pytest.raises(ValueError, match="SEG"):
        Hl7Path.parse(bad)


@settings(max_examples=200, derandomize=True)
@given(seg=st.from_regex(r"\A[A-Z][A-Z0-9]{2}\Z"), occ=st.one_of(st.none(), st.integers(1, 9)),
       field=st.integers(1, 60), rep=st.one_of(st.none(), st.integers(1, 9)),
       comp=st.integers(1, 20), sub=st.integers(1, 9))
def test_format_parse_round_trip(seg: str, occ: int | None, field: int, rep: int | None,
                                 comp: int, sub: int) -> None:
    """str() of a path parses back to the same path."""
    path = Hl7Path(seg, field, occ, rep, comp, sub)
    assert Hl7Path.parse(str(path)) == path


@pytest.mark.parametrize(("text", "versions", "problem"), [
    ("PID-40", ("2.5",), "at most 39 fields"),
    ("PID-31", ("2.3",), "at most 30 fields"),
    ("PID-5-15", ("2.5",), "component"),
    ("PID-3-4-4", None, "subcomponent"),
    ("XYZ-1", None, "does not exist"),
    ("TQ1-7", ("2.3",), "does not exist"),
])
def test_check_path_rejects_impossible_paths(text: str, versions: tuple[str, ...] | None,
                                            problem: str) -> None:
    """hl7apy's structure tables reject fields and components a segment cannot have."""
    message = check_path(Hl7Path.parse(text), *(() if versions is None else (versions,)))
    assert message is not None and problem in message


@pytest.mark.parametrize("text", ["PID-3(2)-1", "PID-39", "ZPI-99", "MSH-9-2", "PID-5-1-1", "TQ1-7"])
def test_check_path_accepts_possible_paths(text: str) -> None:
    """Real fields, components and any Z-segment field pass the load-time check."""
    assert check_path(Hl7Path.parse(text)) is None
