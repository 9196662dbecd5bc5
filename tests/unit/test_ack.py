"""ACKs built from the light tokenisation: echo, swap, version, delimiters, ERR and enhanced mode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError
from adapter.hl7.ack import AckError, Verdict, ack_code, build_ack, wants_ack
from adapter.hl7.er7 import Message, Segment
from adapter.hl7.intake import read_header

MSG = ("MSH|^~\\&|EPIC|HOSP^1.2.3^ISO|ONCALL|CLINIC|20240101120000||ADT^A04^ADT_A01|MSG0001|P|2.5.1"
       "|||||8859/1\rPID|1||123^^^H^MR\r")


def msh_of(text: str) -> Segment:
    return read_header(text.encode("latin-1")).msh


def ack(text: str, code: str = "AA", **kw) -> Message:
    out = build_ack(msh_of(text), code, control_id="ACK1", timestamp="20240101120001+0000", **kw)
    assert out.endswith("\r") and "\n" not in out
    return Message.parse(out)


def test_ack_swaps_sender_and_receiver_and_echoes_the_message() -> None:
    """MSH-3/4 <- MSH-5/6 and MSH-5/6 <- MSH-3/4 (components kept), MSH-9 ACK^trigger^ACK,
    MSH-11/12 echoed, MSA-1 the code, MSA-2 the control id."""
    a = ack(MSG, charset="8859/1")
    msh = a.msh
    assert [msh.field(n) for n in (3, 4, 5, 6)] == ["ONCALL", "CLINIC", "EPIC", "HOSP^1.2.3^ISO"]
    assert msh.field(9) == "ACK^A04^ACK" and msh.field(10) == "ACK1"
    assert msh.field(11) == "P" and msh.field(12) == "2.5.1" and msh.field(18) == "8859/1"
    msa = a.segment("MSA")
    assert msa is not None and msa.field(1) == "AA" and msa.field(2) == "MSG0001"
    assert a.segment("ERR") is None


def test_application_and_facility_override() -> None:
    """The ACK's own sender can be configured instead of echoing MSH-5/6."""
    msh = ack(MSG, application="ADAPTER", facility="OC|X").msh
    assert msh.field(3) == "ADAPTER" and msh.value(4) == "OC|X"


def test_old_version_keeps_two_component_msh9_and_uses_eld_err() -> None:
    """Before 2.3.1 MSH-9 is ACK^trigger; before 2.5 the error goes into ERR-1 as an ELD."""
    text = MSG.replace("2.5.1", "2.3")
    a = ack(text, "AE", error=AckError("101", "PID-3 is empty", "PID^1^3"))
    assert a.msh.field(9) == "ACK^A04" and a.msh.field(12) == "2.3"
    err = a.segment("ERR")
    assert err is not None and err.field(1) == "PID^1^3^101&Required field missing&HL70357"


def test_err_segment_from_v25() -> None:
    """From 2.5: ERR-2 location, ERR-3 code^name^HL70357, ERR-4 severity E, ERR-8 the text."""
    a = ack(MSG, "AE", error=AckError("101", "PID-3 (patient identifier list) is empty", "PID^1^3"))
    err = a.segment("ERR")
    assert err is not None
    assert err.field(2) == "PID^1^3" and err.field(3) == "101^Required field missing^HL70357"
    assert err.field(4) == "E" and err.value(8) == "PID-3 (patient identifier list) is empty"
    msa = a.segment("MSA")
    assert msa is not None and msa.field(1) == "AE" and msa.value(3).startswith("PID-3")


def test_error_text_is_escaped_in_the_message_delimiters() -> None:
    """Readable text holding delimiters is escaped, so the ACK still parses and reads back the same."""
    text = "bad value in A|B^C~D&E\\F"
    a = ack(MSG, "AE", error=AckError("102", text, "PID^1^5"))
    err = a.segment("ERR")
    assert err is not None and err.value(8) == text and err.field_count == 8


def test_error_from_exception_drops_the_location_prefix() -> None:
    """AckError.from_exception keeps code and location, text without the repeated location, hint kept."""
    exc = HL7InputError("PID-3 is empty", location="PID^1^3", code="101", hint="send the MRN")
    err = AckError.from_exception(exc)
    assert (err.code, err.location, err.text) == ("101", "PID^1^3", "PID-3 is empty (send the MRN)")


def test_er7_style_location_is_converted() -> None:
    """'MSH-2' (the tokeniser's form) becomes MSH^1^2 in ERR-2."""
    err = ack(MSG, "AE", error=AckError("102", "x", "MSH-2")).segment("ERR")
    assert err is not None and err.field(2) == "MSH^1^2"


def test_ack_without_msh_uses_default_delimiters() -> None:
    """When MSH cannot be read, the AE uses |^~\\& and version 2.5 and leaves MSA-2 empty."""
    out = build_ack(None, "AE", control_id="A9", timestamp="20240101+0000",
                    error=AckError("100", "no MSH", "MSH"))
    a = Message.parse(out)
    assert a.msh.field(2) == "^~\\&" and a.msh.field(12) == "2.5"
    msa = a.segment("MSA")
    assert msa is not None and msa.field(2) == "" and msa.field(1) == "AE"


@pytest.mark.parametrize(("verdict", "original", "enhanced"), [
    (Verdict.ACCEPTED, "AA", "CA"), (Verdict.ERROR, "AE", "CE"), (Verdict.REJECTED, "AR", "CR")])
def test_codes_in_both_modes(verdict: Verdict, original: str, enhanced: str) -> None:
    """Original mode answers AA/AE/AR, enhanced mode the commit ACKs CA/CE/CR."""
    assert ack_code(verdict, enhanced=False) == original
    assert ack_code(verdict, enhanced=True) == enhanced


@pytest.mark.parametrize(("msh15", "sent"), [
    ("AL", {Verdict.ACCEPTED, Verdict.ERROR, Verdict.REJECTED}),
    ("", {Verdict.ACCEPTED, Verdict.ERROR, Verdict.REJECTED}),
    ("NE", set()),
    ("ER", {Verdict.ERROR, Verdict.REJECTED}),
    ("SU", {Verdict.ACCEPTED})])
def test_msh15_decides_which_commit_acks_are_sent(msh15: str, sent: set[Verdict]) -> None:
    """Enhanced mode: AL always, NE never, ER only on error/reject, SU only on success;
    original mode always answers."""
    for verdict in Verdict:
        assert wants_ack(verdict, enhanced=True, accept_ack_type=msh15) is (verdict in sent)
        assert wants_ack(verdict, enhanced=False, accept_ack_type=msh15) is True


# any control id (no segment ends, no delimiter that would split it), any usable delimiters
control_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(control=control_ids, field_sep=st.sampled_from("|#!%"),
       enc=st.sampled_from(["^~\\&", "@*$/", "^~\\&#", ":;?+"]),
       code=st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR"]))
def test_msa2_always_equals_msh10_in_the_message_delimiters(control: str, field_sep: str, enc: str,
                                                           code: str) -> None:
    """Whatever the delimiters (a '#' field separator included), the ACK is written in them: MSH-1 and
    MSH-2 echoed, MSA-2 the exact MSH-10, and the ACK parses back with the same delimiters."""
    if field_sep in enc:
        enc = enc.replace(field_sep, "|")
    if any(ch in control for ch in field_sep + enc):
        control = "".join(ch for ch in control if ch not in field_sep + enc) or "X"
    fs = field_sep
    text = (f"MSH{fs}{enc}{fs}APP{fs}FAC{fs}RAPP{fs}RFAC{fs}20240101{fs}{fs}ADT{enc[0]}A08{fs}{control}"
            f"{fs}P{fs}2.4\r")
    a = ack(text, code, error=AckError("207", "x|y^z", "PID^1^3") if code[1] != "A" else None)
    assert a.delimiters == msh_of(text).delimiters
    msa = a.segment("MSA")
    assert msa is not None and msa.field(2) == control and msa.field(1) == code
    assert a.msh.field(5) == "APP" and a.msh.field(3) == "RAPP" and a.msh.field(12) == "2.4"
