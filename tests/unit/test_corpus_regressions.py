"""Regressions found by running the shipped HL7 v2 mappings over real-world ADT/SIU messages.

Every message here is synthetic (invented names and numbers), written to reproduce the *shape*
that broke: a national id listed before the MRN typed `MRN`, phones sent in XTN parts, e-mails in
XTN-1 under non-standard use codes, SIU messages with only AIG resources, durations in hours.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import MappingError
from adapter.hl7.intake import read_header, read_intake
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import SHIPPED_DIR, load_mapping_set
from adapter.mapping.pipes import Pipe, PipeContext, PipeError

PROVIDER = "http://127.0.0.1:8900/providers/1/"


@pytest.fixture(scope="module")
def shipped() -> MappingSet:
    return load_mapping_set([SHIPPED_DIR], timezone="America/Toronto")


def _msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


def _ops(shipped: MappingSet, raw: bytes) -> tuple[str | None, list[dict[str, Any]]]:
    result = shipped.map("", raw, source="mllp")
    return result.route, [op.to_json() for op in result.operations]


MSH_ADT = "MSH|^~\\&|EHR|CLINIC_A|OC|OC|20250301101500||ADT^{t}^ADT_A01|CTL{t}|P|2.5|||AL|NE||UNICODE UTF-8"
MSH_SIU = "MSH|^~\\&|SCHED|CLINIC_A|OC|OC|20250301101500||SIU^S12^SIU_S12|CTLS{n}|P|2.5.1"


def test_mrn_type_code_wins_over_a_national_id_listed_first(shipped: MappingSet) -> None:
    """PID-3 with a national id first and the MRN typed `MRN` (not `MR`) second: the MRN is the id."""
    raw = _msg(MSH_ADT.format(t="A04"), "EVN|A04|20250301101500",
               "PID|1||Z1234567Q^^^NATL^NRIC~MRN777^^^CLINIC_A^MRN||Roy^Ana||19900101|F",
               "PV1|1|O|CLINIC_A")
    route, ops = _ops(shipped, raw)
    assert route == "ADT_A04"
    assert ops[0]["emr_patient_id"] == "MRN777"


def test_listener_ordering_key_uses_the_same_mrn(shipped: MappingSet) -> None:
    """The MLLP ordering key picks the `MRN`-typed repetition too, so one patient is one key."""
    raw = _msg(MSH_ADT.format(t="A08"), "PID|1||Z1234567Q^^^NATL^NRIC~MRN777^^^CLINIC_A^MRN||Roy^Ana")
    intake = read_intake(read_header(raw), raw)
    assert intake.ordering_key == "patient:MRN777"


def test_merge_reads_mrn_typed_ids(shipped: MappingSet) -> None:
    """ADT^A40 with `MRN`-typed identifiers in PID-3 and MRG-1 after a national id."""
    raw = _msg(MSH_ADT.format(t="A40"), "PID|1||N1^^^NATL^NH~MRN10^^^C^MRN||Roy^Ana",
               "MRG|N2^^^NATL^NH~MRN11^^^C^MRN")
    _, ops = _ops(shipped, raw)
    assert ops == [{"kind": "patient_merge", "surviving_emr_patient_id": "MRN10",
                    "merged_emr_patient_id": "MRN11"}]


def test_phone_in_xtn_parts_is_read(shipped: MappingSet) -> None:
    """v2.4+ senders leave XTN-1 empty and send country/area/local in XTN-5/6/7."""
    raw = _msg(MSH_ADT.format(t="A04"), "PID|1||MRN1^^^C^MR||Roy^Ana||19900101|F|||||^PRN^PH^^1^514^5550199")
    _, ops = _ops(shipped, raw)
    assert ops[0]["phone"] == "15145550199"


def test_email_in_xtn1_under_a_local_use_code(shipped: MappingSet) -> None:
    """An address in XTN-1 with use code EMAIL (UK style) is the e-mail and never becomes a phone."""
    raw = _msg(MSH_ADT.format(t="A04"),
               "PID|1||MRN2^^^C^MR||Roy^Ana||19900101|F|||||ana.roy@example.org^EMAIL~0201110111^HOME")
    _, ops = _ops(shipped, raw)
    assert ops[0]["email"] == "ana.roy@example.org"
    assert ops[0]["phone"] == "0201110111"


def test_siu_with_only_aig_resources(shipped: MappingSet) -> None:
    """No SCH-11/TQ1/AIS/AIP timing: the AIG start (AIG-8), duration (AIG-11) and provider (AIG-3)."""
    raw = _msg(MSH_SIU.format(n=1), "SCH|P1|F1||||||||||||||||||||||Booked",
               "PID|1||MRN4^^^C^MR||Roy^Ana", "RGS|1|A",
               "AIG|1|A|DRSMITH^Smith^Jo|D||||20250310143000-0500|||45|MIN")
    route, ops = _ops(shipped, raw)
    assert route == "SIU_S12"
    op = ops[0]
    assert op["datetime"] == "2025-03-10T14:30:00-05:00"
    assert op["duration"] == 45
    assert op["provider"] == PROVIDER


def test_duration_in_hours_is_never_read_as_minutes(shipped: MappingSet) -> None:
    """SCH-9 = 1 with SCH-10 = HOUR is skipped (no arithmetic in routes); AIS-7 in minutes is used."""
    raw = _msg(MSH_SIU.format(n=2),
               "SCH|P2|F2||||||||1|HOUR|^^^20250310143000",
               "PID|1||MRN5^^^C^MR||Roy^Ana", "RGS|1", "AIS|1||VIRTUAL^Video visit|20250310143000|||60|MIN")
    _, ops = _ops(shipped, raw)
    assert ops[0]["duration"] == 60


def test_tq3_duration_carries_its_unit(shipped: MappingSet) -> None:
    """SCH-11-3 `H1` (TQ-3) is one hour, not one minute."""
    raw = _msg(MSH_SIU.format(n=3), "SCH|P3|F3|||||||||^^H1^20250310143000", "PID|1||MRN6^^^C^MR||Roy^Ana")
    _, ops = _ops(shipped, raw)
    assert ops[0]["duration"] == 60
    assert ops[0]["datetime"] == "2025-03-10T14:30:00-04:00"


def test_missing_start_names_the_field_and_its_sources(shipped: MappingSet) -> None:
    """A start found nowhere is a MappingError naming `datetime` and the paths that were tried."""
    raw = _msg(MSH_SIU.format(n=4), "SCH|P4|F4|||||||30|MIN", "PID|1||MRN7^^^C^MR||Roy^Ana",
               "AIS|1||X^Y|||20250310143000|30^MIN")
    with pytest.raises(MappingError) as err:
        shipped.map("", raw, source="mllp")
    text = str(err.value)
    assert "field datetime" in text and "SCH-11-4" in text and "AIG-8" in text
    assert "20250310" not in text


def test_bad_birth_date_names_pid7_and_what_to_do(shipped: MappingSet) -> None:
    """An impossible PID-7 is a MappingError that names PID-7, hides the value, and says what to do."""
    raw = _msg(MSH_ADT.format(t="A08"), "PID|1||MRN8^^^C^MR||Roy^Ana||196203520|F")
    with pytest.raises(MappingError) as err:
        shipped.map("", raw, source="mllp")
    text = str(err.value)
    assert "date_of_birth" in text and "PID-7" in text and "queue retry" in text
    assert "196203520" not in text


CTX = PipeContext(tables={}, tz=__import__("zoneinfo").ZoneInfo("UTC"))


@given(st.integers(min_value=1, max_value=10_000), st.sampled_from(["", "M", "m", "H", "D", "W"]))
def test_minutes_pipe_reads_tq3_units(n: int, unit: str) -> None:
    """`| minutes` turns a bare number or TQ-3 `<unit><n>` into minutes."""
    factor = {"": 1, "M": 1, "H": 60, "D": 1440, "W": 10080}[unit.upper()]
    assert Pipe("minutes").apply(f"{unit}{n}", CTX) == str(n * factor)


@given(st.text(alphabet=st.characters(blacklist_characters="@"), max_size=30))
def test_email_pipe_rejects_text_without_at_sign(text: str) -> None:
    """`| email` never passes on a value that cannot be an address."""
    assert Pipe("email").apply(text, CTX) == ""


def test_minutes_pipe_error_hides_the_value() -> None:
    """An unreadable duration raises PipeError without echoing the value; INDEF is empty."""
    with pytest.raises(PipeError) as err:
        Pipe("minutes").apply("soonish", CTX)
    assert "soonish" not in str(err.value)
    assert Pipe("minutes").apply("INDEF", CTX) == ""


def test_generic_table_code_is_not_the_title(shipped: MappingSet) -> None:
    """SCH-7/SCH-8 holding standard table codes (HL70276/HL70277) give way to the service (AIS-3-2)."""
    raw = _msg(MSH_SIU.format(n=5),
               "SCH|P5|F5|||||ROUTINE^Routine^HL70277|FOLLOWUP^Follow-up^HL70276|30|min|^^30^20250310143000",
               "PID|1||MRN9^^^C^MR||Roy^Ana", "RGS|1|A",
               "AIS|1|A|CARD^Cardiology consultation^L|20250310143000")
    _, ops = _ops(shipped, raw)
    assert ops[0]["title"] == "Cardiology consultation"
