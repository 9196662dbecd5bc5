"""Reading replay files: one or many HL7 v2 messages with any segment endings, FHIR JSON and NDJSON."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from adapter.cli.replay import read_messages, split_hl7

segment_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


def _message(control_id: int, extra: list[str]) -> list[str]:
    return [f"MSH|^~\\&|APP|FAC|ADAPTER|CLINIC|20240101||ADT^A08|MSG{control_id}|P|2.5",
            "PID|1||MRN1^^^HOSP^MR||Doe^Jane"] + [f"ZX{i}|{v}" for i, v in enumerate(extra)]


@given(messages=st.lists(st.lists(segment_text, max_size=3), min_size=1, max_size=5),
       ending=st.sampled_from(["\r", "\n", "\r\n"]), blank_lines=st.booleans(), framed=st.booleans())
def test_split_hl7_any_segment_ending(messages: list[list[str]], ending: str, blank_lines: bool,
                                      framed: bool) -> None:
    """Any number of messages with CR, LF or CRLF segment ends, blank lines between them or MLLP framing
    bytes around them, split into the same messages with CR segment ends."""
    built = [_message(i, extra) for i, extra in enumerate(messages)]
    parts = []
    for segments in built:
        text = ending.join(segments) + ending + (ending if blank_lines else "")
        parts.append(f"\x0b{text}\x1c\r" if framed else text)
    got = split_hl7("".join(parts).encode())
    assert got == [("\r".join(s) + "\r").encode() for s in built]
    assert all(m.startswith(b"MSH|") and b"\n" not in m for m in got)


def test_split_hl7_skips_batch_envelopes_and_bom() -> None:
    """FHS/BHS/BTS/FTS batch segments and a UTF-8 byte-order mark are not part of any message."""
    text = "\ufeffFHS|^~\\&\nBHS|^~\\&\n" + "\n".join(_message(1, [])) + "\n" + "\n".join(_message(2, [])) \
        + "\nBTS|2\nFTS|1\n"
    got = split_hl7(text.encode("utf-8"))
    assert [m.split(b"|")[9] for m in got] == [b"MSG1", b"MSG2"]


def test_read_messages_from_folder(tmp_path: Path) -> None:
    """A folder is read recursively: .hl7 files by message, .json as one resource, .ndjson by line,
    each message named file:index for the summary."""
    two = "\r".join(_message(1, [])) + "\r" + "\r".join(_message(2, []))
    (tmp_path / "a.hl7").write_bytes(two.encode())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.json").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}))
    (tmp_path / "sub" / "many.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "p2"}) + "\n\n"
        + json.dumps({"resourceType": "Patient"}))
    (tmp_path / "notes.md").write_text("ignored")
    got = read_messages([tmp_path])
    assert [(Path(m.origin).name, m.kind) for m in got] == [
        ("a.hl7:1", "hl7v2"), ("a.hl7:2", "hl7v2"), ("many.ndjson:1", "fhir"), ("many.ndjson:2", "fhir"),
        ("p.json:1", "fhir")]
    assert got[4].resource == {"resourceType": "Patient", "id": "p1"}
