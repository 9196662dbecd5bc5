"""What the listener reads from a raw message: MSH, charset, ordering key from PID-3, dedup key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError
from adapter.hl7.er7 import Delimiters, escape
from adapter.hl7.intake import PatientIdPolicy, key_hash, read_header, read_intake


def adt(*, control: str = "MSG0001", pid3: str = "12345^^^HOSP^MR", charset: str = "",
        name: str = "Doe^John", seg_end: str = "\r", extra: str = "") -> str:
    segs = [f"MSH|^~\\&|EPIC|HOSP|ONCALL|CLINIC|20240101120000||ADT^A04^ADT_A01|{control}|P|2.5.1"
            f"|||AL|NE||{charset}",
            "EVN|A04|20240101120000", f"PID|1||{pid3}||{name}||19800101|M", "PV1|1|O", *extra.split("\n")]
    return seg_end.join(s for s in segs if s) + seg_end


def intake(text: str | bytes, policy: PatientIdPolicy | None = None):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return read_intake(read_header(raw), raw, policy or PatientIdPolicy())


def test_msh_fields_kind_and_dedup_key() -> None:
    """Kind is MSH-9.1^MSH-9.2, the dedup key mllp:{MSH-3}|{MSH-4}|{MSH-10}, meta carries no PHI."""
    it = intake(adt())
    assert it.kind == "ADT^A04"
    assert it.dedup_key == "mllp:EPIC|HOSP|MSG0001"
    assert it.ordering_key == "patient:12345"
    assert it.meta["control_id"] == "MSG0001" and it.meta["sender"] == "EPIC|HOSP"
    assert it.meta["version"] == "2.5.1" and it.meta["trigger"] == "A04" and it.meta["charset"] == "utf-8"
    assert it.meta["key_hash"] == key_hash("patient:12345")
    assert not any("12345" in v or "Doe" in v for k, v in it.meta.items() if k != "key_hash")


@pytest.mark.parametrize("seg_end", ["\r", "\n", "\r\n"])
def test_lf_and_crlf_segment_ends(seg_end: str) -> None:
    """Segments ended by CR, LF or CRLF read the same; the stored payload is the bytes as sent."""
    text = adt(seg_end=seg_end)
    it = intake(text)
    assert it.ordering_key == "patient:12345" and it.kind == "ADT^A04"
    assert it.payload == text.encode()


def test_bom_and_leading_line_ends_are_tolerated() -> None:
    """A UTF-8 byte-order mark and stray line ends before MSH are skipped; the BOM is not stored."""
    raw = b"\xef\xbb\xbf" + adt().encode()
    it = intake(raw)
    assert it.payload == adt().encode() and it.meta["bom_removed"] == "true"
    assert intake(b"\r\n" + adt().encode()).kind == "ADT^A04"


def test_unusual_delimiters() -> None:
    """A '#' field separator and other encoding characters are read from MSH-1/MSH-2."""
    text = adt().replace("|", "#").replace("^", "@")
    it = intake(text)
    assert it.kind == "ADT^A04" and it.ordering_key == "patient:12345"
    assert it.dedup_key == "mllp:EPIC|HOSP|MSG0001"


def test_patient_id_chosen_by_authority_then_type_code_then_first() -> None:
    """PID-3: the configured assigning authority wins, then the type code, then the first repetition."""
    pid3 = "111^^^SSA^SS~222^^^HOSP^PI~333^^^CLINIC^MR"
    assert intake(adt(pid3=pid3), PatientIdPolicy(authorities=("HOSP",))).ordering_key == "patient:222"
    assert intake(adt(pid3=pid3), PatientIdPolicy(type_codes=("MR",))).ordering_key == "patient:333"
    assert intake(adt(pid3=pid3), PatientIdPolicy(authorities=("X",), type_codes=("Y",))).ordering_key \
        == "patient:111"
    # the authority's universal id (PID-3.4.2) matches too
    assert intake(adt(pid3="9^^^&1.2.3&ISO^MR~8^^^H^MR"),
                  PatientIdPolicy(authorities=("1.2.3",))).ordering_key == "patient:9"


def test_escaped_identifier_is_decoded() -> None:
    r"""An identifier holding an escaped delimiter (\T\ for '&') is decoded in the ordering key."""
    assert intake(adt(pid3=r"A\T\B^^^HOSP^MR")).ordering_key == "patient:A&B"


def test_empty_pid3_is_an_error_at_pid_1_3() -> None:
    """A PID without any identifier cannot be ordered: HL7InputError code 101 at PID^1^3."""
    with pytest.raises(HL7InputError) as info:
        intake(adt(pid3=""))
    assert info.value.location == "PID^1^3" and info.value.code == "101"


def test_pid2_used_when_pid3_is_empty() -> None:
    """Old feeds that only fill PID-2 (external id) still get a patient key."""
    assert intake(adt(pid3="").replace("PID|1||", "PID|1|EXT7|")).ordering_key == "patient:EXT7"


def test_siu_without_pid_falls_back_to_the_appointment_then_control_id() -> None:
    """Without PID the key is the appointment (SCH-1, else SCH-2), without SCH the control id."""
    msh = "MSH|^~\\&|EPIC|HOSP|ONCALL|CLINIC|20240101||SIU^S12|C9|P|2.5\r"
    assert intake(msh + "SCH|APT1^EPIC|F2\r").ordering_key == "appointment:APT1"
    assert intake(msh + "SCH||F2^EPIC\r").ordering_key == "appointment:F2"
    assert intake(msh + "NTE|1\r").ordering_key == "control:EPIC|HOSP|C9"


def test_siu_with_pid_uses_the_patient() -> None:
    """An SIU whose patient group carries PID is ordered by the patient."""
    text = "MSH|^~\\&|EPIC|HOSP|ONCALL|CLINIC|20240101||SIU^S12|C9|P|2.5\rSCH|APT1\rPID|1||77^^^H^MR\r"
    assert intake(text).ordering_key == "patient:77"


def test_missing_control_id_or_type_is_an_error() -> None:
    """No MSH-10 or no MSH-9: code 101 at MSH^1^10 / MSH^1^9."""
    with pytest.raises(HL7InputError) as info:
        intake(adt(control=""))
    assert info.value.location == "MSH^1^10"
    with pytest.raises(HL7InputError) as info:
        intake(adt().replace("ADT^A04^ADT_A01", ""))
    assert info.value.location == "MSH^1^9"


def test_no_msh_cannot_be_read() -> None:
    """A frame that does not start with MSH raises HL7InputError (code 100)."""
    with pytest.raises(HL7InputError) as info:
        read_header(b"PID|1||123\r")
    assert info.value.code == "100"


def test_latin1_message_is_decoded_in_its_charset() -> None:
    """MSH-18 8859/1: bytes are read as ISO-8859-1 and the header echoes names with accents."""
    raw = adt(charset="8859/1", extra="NTE|1||Jérôme").replace("CLINIC", "CLINIQUE-É").encode("latin-1")
    header = read_header(raw)
    assert header.codec == "latin-1" and header.msh.field(6) == "CLINIQUE-É"
    it = read_intake(header, raw, PatientIdPolicy())
    assert it.meta["charset"] == "latin-1" and it.meta["msh18"] == "8859/1"


def test_unknown_charset_is_named() -> None:
    """An MSH-18 the adapter does not know: the header still reads, the intake raises naming it."""
    raw = adt(charset="KLINGON-8").encode()
    header = read_header(raw)
    assert header.codec is None
    with pytest.raises(HL7InputError, match="KLINGON-8") as info:
        read_intake(header, raw, PatientIdPolicy())
    assert info.value.location == "MSH^1^18" and info.value.code == "103"


def test_bytes_invalid_in_the_declared_charset_are_an_error() -> None:
    """ASCII declared but a byte above 0x7F sent: HL7InputError naming the byte and offset."""
    raw = adt(charset="ASCII").encode() + "NTE|1||é\r".encode("latin-1")
    with pytest.raises(HL7InputError, match=r"byte 0xE9 at offset \d+ \(segment 5, NTE\)"):
        intake(raw)


def test_utf8_assumed_when_msh18_is_empty() -> None:
    """Without MSH-18, UTF-8; latin-1 bytes then fail with a hint to declare the charset."""
    assert intake(adt(extra="NTE|1||Zoë").encode("utf-8")).meta["charset"] == "utf-8"
    with pytest.raises(HL7InputError, match="MSH-18 is empty so UNICODE UTF-8 is assumed"):
        intake(adt(extra="NTE|1||Zoë").encode("latin-1"))


ids = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s)


@settings(max_examples=200, deadline=None)
@given(mrn=ids, field_sep=st.sampled_from("|#!"), enc=st.sampled_from(["^~\\&", "@*$%", "^~\\&#"]))
def test_ordering_key_round_trips_any_escaped_identifier(mrn: str, field_sep: str, enc: str) -> None:
    """Any identifier, escaped in any delimiters, comes back unescaped in the ordering key."""
    if field_sep in enc:
        enc = enc.replace(field_sep, "|")
    d = Delimiters.from_msh(f"MSH{field_sep}{enc}{field_sep}")
    c = d.component
    text = (f"MSH{field_sep}{enc}{field_sep}APP{field_sep}FAC{field_sep}{field_sep}{field_sep}"
            f"{field_sep}{field_sep}ADT{c}A08{field_sep}X1{field_sep}P{field_sep}2.5\r"
            f"PID{field_sep}1{field_sep}{field_sep}{escape(mrn, d)}{c}{c}{c}H{c}MR\r")
    assert intake(text).ordering_key == "patient:" + mrn
