"""The light ER7 tokenisation: delimiters, segments, values, escapes, charsets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError
from adapter.hl7.er7 import Delimiters, Message, codec_for, decode_bytes, escape, unescape

ADT = (
    "MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20240501101500||ADT^A08^ADT_A01|MSG00042|P|2.5|||AL|NE|"
    "|UNICODE UTF-8\r"
    "EVN|A08|20240501101500\r"
    "PID|1||987^^^HOSP^PI~MRN123^^^CLINIC^MR||Tremblay^H\\E\\l\\S\\ne^Marie||19800214|F|||"
    "1 Rue X\\.br\\Apt 2^^Montr\\XE9\\al\r"
    "ZPI|1|VIP\r"
    "PV1|1|O|CLINIC^101\r"
)


def test_parse_reads_segments_in_order_and_keeps_z_segments() -> None:
    """Every segment is kept in arrival order, Z-segments and out-of-order segments included."""
    msg = Message.parse(ADT)
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID", "ZPI", "PV1"]
    zpi = msg.segment("ZPI")
    assert zpi is not None and zpi.value(2) == "VIP"
    assert msg.segment("PID", 1) is None
    assert len(msg.all("PID")) == 1


def test_msh_numbering_and_convenience_properties() -> None:
    """MSH-1 is the field separator, MSH-2 the encoding characters; properties read MSH fields."""
    msg = Message.parse(ADT)
    msh = msg.segment("MSH")
    assert msh is not None
    assert msh.field(1) == "|" and msh.field(2) == "^~\\&"
    assert msh.value(2) == "^~\\&"
    assert (msg.sending_application, msg.sending_facility) == ("EPIC", "CLINIC_A")
    assert (msg.receiving_application, msg.receiving_facility) == ("ONCALL", "ONCALL")
    assert (msg.message_type, msg.trigger, msg.structure) == ("ADT", "A08", "ADT_A01")
    assert (msg.control_id, msg.processing_id, msg.version) == ("MSG00042", "P", "2.5")
    assert (msg.accept_ack_type, msg.application_ack_type, msg.charset) == ("AL", "NE", "UNICODE UTF-8")


def test_value_repetition_component_and_escapes() -> None:
    """value() addresses repetition/component and decodes \\E\\ \\S\\ \\.br\\ \\X..\\ escapes."""
    pid = Message.parse(ADT).segment("PID")
    assert pid is not None
    assert pid.repetitions(3) == ["987^^^HOSP^PI", "MRN123^^^CLINIC^MR"]
    assert pid.value(3, 2, 1) == "MRN123"
    assert pid.value(3, 2, 5) == "MR"
    assert pid.value(3, 3, 1) == ""
    assert pid.value(5, 1, 2) == "H\\l^ne"
    assert pid.value(11, 1, 1) == "1 Rue X\nApt 2"
    assert pid.value(11, 1, 3) == "Montr\u00e9al"
    assert pid.value(99) == "" and pid.field(0) == "" and pid.name == "PID"


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_segment_endings_and_trailing_blank_lines(ending: str) -> None:
    """CR, LF and CRLF segment endings are all accepted; trailing empty lines are ignored."""
    text = ADT.replace("\r", ending) + ending + ending
    assert [s.name for s in Message.parse(text).segments] == ["MSH", "EVN", "PID", "ZPI", "PV1"]


@pytest.mark.parametrize("text", ["", "PID|1", "MSH", "MSH|", "MSHA^~\\&|", "MSH|^^\\&|", "MSH|^|x"])
def test_unusable_msh_raises_hl7_input_error(text: str) -> None:
    """A text without a usable MSH raises HL7InputError located at MSH."""
    with pytest.raises(HL7InputError) as info:
        Message.parse(text)
    assert info.value.location is not None and info.value.location.startswith("MSH")


def test_not_msh_has_code_100() -> None:
    """A text not starting with MSH is a segment sequence error (code 100)."""
    with pytest.raises(HL7InputError) as info:
        Message.parse("PID|1||x")
    assert info.value.code == "100" and info.value.location == "MSH"


def test_v27_truncation_character() -> None:
    """MSH-2 with five characters carries the v2.7 truncation character, escaped as \\P\\."""
    msg = Message.parse("MSH|^~\\&#|A|B|||||ADT^A01|1|P|2.7\rPID|1||a\\P\\b")
    assert msg.delimiters.truncation == "#"
    pid = msg.segment("PID")
    assert pid is not None and pid.value(3) == "a#b"


def test_unknown_escapes_are_left_as_is() -> None:
    """Unknown or malformed escape sequences are kept verbatim."""
    d = Delimiters()
    assert unescape("a\\Q\\b", d) == "a\\Q\\b"
    assert unescape("a\\Xzz\\b", d) == "a\\Xzz\\b"
    assert unescape("trailing\\", d) == "trailing\\"
    assert unescape("\\H\\bold\\N\\", d) == "bold"


def test_hex_escape_uses_charset() -> None:
    """\\X..\\ bytes decode in the message charset."""
    d = Delimiters()
    assert unescape("\\XC3A9\\", d, charset="UNICODE UTF-8") == "\u00e9"
    assert unescape("\\XE9\\", d, charset="8859/1") == "\u00e9"


def test_codec_for_and_decode_bytes() -> None:
    """MSH-18 picks the codec used to decode the bytes; without it UTF-8 then cp1252."""
    assert codec_for("8859/1") == "latin-1"
    assert codec_for("UNICODE UTF-8") == "utf-8"
    assert codec_for("") == "utf-8"
    assert codec_for("NOPE", "ascii") == "ascii"
    latin = "MSH|^~\\&|A|B|||||ADT^A01|1|P|2.3||||||8859/1\rPID|1||1||C\u00f4t\u00e9^Ren\u00e9"
    text, used = decode_bytes(latin.encode("latin-1"))
    assert used == "latin-1" and "C\u00f4t\u00e9" in text
    text, used = decode_bytes(latin.replace("8859/1", "").encode("utf-8"))
    assert used == "utf-8" and "C\u00f4t\u00e9" in text
    text, used = decode_bytes(latin.replace("8859/1", "").encode("latin-1"))
    assert used == "cp1252" and "C\u00f4t\u00e9" in text


delimiter_sets = st.sampled_from([Delimiters(), Delimiters(truncation="#"),
                                  Delimiters("!", "@", "*", "%", "$")])


@settings(max_examples=300, derandomize=True)
@given(value=st.text(), d=delimiter_sets)
def test_escape_unescape_round_trip(value: str, d: Delimiters) -> None:
    """unescape(escape(v)) == v for every text and delimiter set; escape output has no delimiters."""
    escaped = escape(value, d)
    assert unescape(escaped, d) == value
    for c in (d.field, d.component, d.repetition, d.subcomponent, "\r", "\n"):
        assert c not in escaped


@settings(max_examples=500, derandomize=True)
@given(text=st.one_of(st.text(), st.text().map(lambda t: "MSH" + t),
                      st.text(alphabet="MSHPID|^~\\&\r\n0123AZ#").map(lambda t: "MSH|^~\\&" + t)))
def test_parse_never_raises_anything_but_hl7_input_error(text: str) -> None:
    """Whatever the text, parse and field access either work or raise HL7InputError."""
    try:
        msg = Message.parse(text)
    except HL7InputError:
        return
    for seg in msg.segments:
        for n in range(0, seg.field_count + 2):
            seg.value(n, 1, 1, 1)
            seg.value(n, 2, 2, 2)
    _ = (msg.message_type, msg.trigger, msg.control_id, msg.charset, msg.version)
