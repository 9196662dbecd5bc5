"""The listener's cheap scan for PID/SCH reads the same ordering key and MSH meta as a full tokenisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.errors import HL7InputError
from adapter.hl7.charset import DEFAULT_CHARSET
from adapter.hl7.er7 import Message
from adapter.hl7.intake import BOM, PatientIdPolicy, _ordering_key, read_header, read_intake

# (MSH-1, MSH-2): the usual ones, v2.7 truncation, and an unusual but legal set
_DELIMS = [("|", "^~\\&"), ("|", "^~\\&#"), ("#", "$*!%")]
_NAMES = ["PID", "SCH", "PV1", "PIDX", "PI", " PID", "ZPI", "SCHED", "OBX"]
_ENDS = ["\r", "\n", "\r\n"]


def reference(raw: bytes, policy: PatientIdPolicy) -> tuple[str, tuple[str, ...]]:
    """What read_intake returned before the scan: every segment tokenised, the first PID/SCH used."""
    header = read_header(raw)
    assert header.codec is not None
    payload = raw[len(BOM):] if raw.startswith(BOM) else raw
    message = Message.parse(payload.decode(header.codec))
    charset = header.declared_charset or DEFAULT_CHARSET
    key = _ordering_key(message.segment, policy, charset) or f"control:{header.sender}|{header.control_id}"
    return key, (message.message_type, message.trigger, message.version, message.processing_id,
                 message.accept_ack_type, message.application_ack_type)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    field, enc = draw(st.sampled_from(_DELIMS))
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    atoms = st.sampled_from(["MR", "MRN", "HOSP", "12345", "é", "", comp, rep, sub, f"{esc}F{esc}",
                             f"{esc}X41{esc}", "PID", "SCH"])
    value = st.lists(atoms, max_size=6).map("".join)
    charset = draw(st.sampled_from(["", "UNICODE UTF-8", "8859/1", "ASCII"]))
    end = draw(st.sampled_from(_ENDS))
    msh = field.join(["MSH", enc, "EPIC", "HOSP", "ONCALL", "CLINIC", "20240101", "",
                      draw(value) or "ADT", "CTRL1", draw(value), draw(value), "", "", draw(value),
                      draw(value), "", charset])
    segments = [msh]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(_NAMES))
        fields = draw(st.lists(value, max_size=5))
        segments.append(field.join([name, *fields]) if draw(st.booleans()) or fields else name)
    text = end.join(segments) + draw(st.sampled_from(["", end, end + end]))
    if charset == "ASCII":
        text = text.replace("é", "e")
    prefix = draw(st.sampled_from([b"", BOM, b"\r\n", b" \t"]))
    return prefix + text.encode("latin-1" if charset == "8859/1" else "utf-8")


@settings(max_examples=400, deadline=None)
@given(messages(), st.sampled_from([PatientIdPolicy(), PatientIdPolicy(authorities=("HOSP",))]))
def test_scan_matches_full_tokenisation(raw: bytes, policy: PatientIdPolicy) -> None:
    """Ordering key (or the PID-3 error) and the MSH meta are those of the whole message tokenised."""
    try:
        expected = reference(raw, policy)
    except HL7InputError as exc:
        with pytest.raises(HL7InputError) as caught:
            read_intake(read_header(raw), raw, policy)
        assert (caught.value.location, caught.value.code) == (exc.location, exc.code)
        return
    got = read_intake(read_header(raw), raw, policy)
    assert got.ordering_key == expected[0]
    m = got.meta
    assert (m["message_type"], m["trigger"], m["version"], m["processing_id"], m["accept_ack_type"],
            m["application_ack_type"]) == expected[1]


def test_first_pid_wins_and_lookalikes_are_skipped() -> None:
    """A line named PIDX or ' PID' is not PID; the first real PID gives the key, as in the full parse."""
    raw = (b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04|C1|P|2.5\r PID|1||BAD^^^^MR\rPIDX|1||BAD2^^^^MR\n"
           b"PID|1||GOOD^^^^MR\r\nPID|1||LATER^^^^MR\r")
    assert read_intake(read_header(raw), raw).ordering_key == "patient:GOOD"


def test_bare_pid_line_without_identifier_is_an_error() -> None:
    """A PID line with no fields at all is a PID without PID-3: AE at PID^1^3, as before."""
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A04|C1|P|2.5\rPID\rPV1|1\r"
    with pytest.raises(HL7InputError) as caught:
        read_intake(read_header(raw), raw)
    assert caught.value.location == "PID^1^3"
