"""A light tokenisation of HL7 v2 ER7 text, for every hot path (ACK, ordering key, mapping paths).

hl7apy's full parse costs ~20 ms per message; splitting the text costs microseconds. This module
keeps every segment in arrival order (Z-segments and out-of-order segments included), reads the
delimiters from MSH-1/MSH-2, and decodes escape sequences only when a value is asked for.

Numbering follows the standard: fields, repetitions, components and subcomponents count from 1;
in MSH, MSH-1 is the field separator itself and MSH-2 the encoding characters.

Parsing is tolerant beyond MSH (unknown segment names are kept, not rejected) so a listener can
always answer with an ACK that carries the sender's control id; only a text that does not start
with a usable MSH raises `HL7InputError`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from functools import cached_property

from adapter.errors import HL7InputError

__all__ = [
    "DEFAULT_DELIMITERS",
    "Delimiters",
    "Message",
    "Segment",
    "codec_for",
    "decode_bytes",
    "escape",
    "unescape",
]

_SEGMENT_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five (six from v2.7: truncation) delimiter characters of one message."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it would be written for these delimiters."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")

    @classmethod
    def from_msh(cls, text: str) -> Delimiters:
        """Read MSH-1 and MSH-2 from the start of a message (or of its MSH segment)."""
        if text.startswith("MSH|^~\\&|"):   # what nearly every feed sends: skip the checks below
            return DEFAULT_DELIMITERS
        if not text.startswith("MSH"):
            raise HL7InputError("the message does not start with an MSH segment",
                                location="MSH", code="100",
                                hint="an HL7 v2 message must begin with 'MSH|^~\\&|'")
        if len(text) < 5:
            raise HL7InputError("MSH is too short to carry its delimiters", location="MSH-1", code="102",
                                hint="MSH-1 (field separator) and MSH-2 (encoding characters) are required")
        field = text[3]
        end = text.find(field, 4)
        line_end = _SEGMENT_END.search(text, 4)
        stop = len(text) if line_end is None else line_end.start()
        enc = text[4:stop] if end < 0 or end > stop else text[4:end]
        if field.isalnum() or field in "\r\n":
            raise HL7InputError(f"MSH-1 field separator {field!r} is not a usable delimiter",
                                location="MSH-1", code="102", hint="the usual field separator is '|'")
        if not 2 <= len(enc) <= 5:
            raise HL7InputError(f"MSH-2 encoding characters {enc!r} must be 2 to 5 characters",
                                location="MSH-2", code="102", hint="the usual value is '^~\\&'")
        chars = field + enc
        if len(set(chars)) != len(chars) or any(c.isalnum() or c.isspace() for c in enc):
            raise HL7InputError(f"MSH-2 encoding characters {enc!r} repeat or are letters, digits or spaces",
                                location="MSH-2", code="102", hint="the usual value is '^~\\&'")
        return cls(field=field, component=enc[0], repetition=enc[1],
                   escape=enc[2] if len(enc) > 2 else "",
                   subcomponent=enc[3] if len(enc) > 3 else "",
                   truncation=enc[4] if len(enc) > 4 else None)


DEFAULT_DELIMITERS = Delimiters()

# MSH-18 values (HL7 table 0211) -> Python codec names.
_CHARSETS = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "ISO IR100": "latin-1", "8859/2": "iso8859-2", "ISO IR101": "iso8859-2",
    "8859/3": "iso8859-3", "ISO IR109": "iso8859-3", "8859/4": "iso8859-4", "ISO IR110": "iso8859-4",
    "8859/5": "iso8859-5", "ISO IR144": "iso8859-5", "8859/6": "iso8859-6", "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7", "ISO IR126": "iso8859-7", "8859/8": "iso8859-8", "ISO IR138": "iso8859-8",
    "8859/9": "iso8859-9", "ISO IR148": "iso8859-9", "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8", "ISO IR192": "utf-8", "UNICODE": "utf-8",
    "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
    "JAS2020": "iso2022_jp", "JIS X 0202": "iso2022_jp", "ISO IR87": "iso2022_jp",
}


def codec_for(charset: str | None, default: str = "utf-8") -> str:
    """The Python codec for an MSH-18 value; `default` when empty or unknown to the table."""
    if not charset:
        return default
    name = _CHARSETS.get(charset.strip().upper())
    if name:
        return name
    try:  # some senders put a Python/IANA name ("UTF-8", "ISO-8859-1") in MSH-18
        return codecs.lookup(charset.strip()).name
    except LookupError:
        return default


def decode_bytes(payload: bytes, *, default_charset: str | None = None) -> tuple[str, str]:
    """Decode a raw message using its MSH-18; returns (text, codec used).

    Without MSH-18 (or with `default_charset` None) UTF-8 is tried, then Windows-1252/latin-1,
    which always decodes: a byte stream is never refused here, field values decide later.
    """
    head = payload[:1024].decode("latin-1")
    charset = ""
    if head.startswith("MSH") and len(head) > 4:
        first = _SEGMENT_END.split(head, 1)[0]
        parts = first.split(head[3])
        if len(parts) > 17:
            charset = parts[17].split(head[5] if len(head) > 5 else "~")[0]
    tries = [codec_for(charset, default_charset or "utf-8")] if charset or default_charset else ["utf-8"]
    for name in [*tries, "cp1252", "latin-1"]:
        try:
            return payload.decode(name), name
        except (UnicodeDecodeError, LookupError):
            continue
    return payload.decode("latin-1"), "latin-1"  # pragma: no cover - latin-1 decodes every byte


_FORMATTING = {".br": "\n", ".sp": "\n", "H": "", "N": ""}


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS, *, charset: str = "latin-1") -> str:
    r"""Decode HL7 escape sequences: \F\ \S\ \T\ \R\ \E\ (\P\ from v2.7), \Xhh..\ (bytes in the
    message charset), \.br\ and \.sp\ -> newline, \H\ \N\ (highlighting) dropped.

    Unknown or malformed escapes are left as they are, so nothing is silently lost.
    """
    esc = d.escape
    if not esc or esc not in value:
        return value
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": esc}
    if d.truncation:
        simple["P"] = d.truncation
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        start = value.find(esc, i)
        if start < 0:
            out.append(value[i:])
            break
        out.append(value[i:start])
        end = value.find(esc, start + 1)
        if end < 0:
            out.append(value[start:])
            break
        body = value[start + 1:end]
        decoded = _decode_escape(body, simple, charset)
        if decoded is None:
            # not an escape we know: keep the opening character and rescan from the next one
            out.append(esc)
            i = start + 1
            continue
        out.append(decoded)
        i = end + 1
    return "".join(out)


def _decode_escape(body: str, simple: dict[str, str], charset: str) -> str | None:
    if body in simple:
        return simple[body]
    if body in _FORMATTING:
        return _FORMATTING[body]
    if len(body) > 1 and body[0] == "X" and len(body) % 2 == 1:
        try:
            return bytes.fromhex(body[1:]).decode(codec_for(charset, "latin-1"), errors="replace")
        except ValueError:
            return None
    return None


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    r"""Encode delimiter characters and line breaks so `unescape(escape(v)) == v`."""
    esc = d.escape
    if not esc:
        return value
    table = {esc: f"{esc}E{esc}", d.field: f"{esc}F{esc}", d.component: f"{esc}S{esc}",
             d.repetition: f"{esc}R{esc}", "\n": f"{esc}.br{esc}", "\r": f"{esc}X0D{esc}"}
    if d.subcomponent:
        table[d.subcomponent] = f"{esc}T{esc}"
    if d.truncation:
        table[d.truncation] = f"{esc}P{esc}"
    if not any(c in value for c in table):
        return value
    return "".join(table.get(c, c) for c in value)


class Segment:
    """One segment: its name and raw fields, split lazily into repetitions and components."""

    __slots__ = ("_fields", "delimiters", "name", "raw")

    def __init__(self, raw: str, delimiters: Delimiters) -> None:
        self.raw = raw
        self.delimiters = delimiters
        parts = raw.split(delimiters.field)
        self.name = parts[0]
        if self.name == "MSH":
            # MSH-1 is the separator itself, so shift: index n holds MSH-n
            parts = ["MSH", delimiters.field, *parts[1:]]
        self._fields = parts

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {len(self._fields) - 1} fields)"

    @property
    def field_count(self) -> int:
        """The number of the last field present (trailing empty fields included)."""
        return len(self._fields) - 1

    def field(self, n: int) -> str:
        """The raw (still escaped) text of field n; '' when absent."""
        if n < 1 or n >= len(self._fields):
            return ""
        return self._fields[n]

    def repetitions(self, n: int) -> list[str]:
        """The raw repetitions of field n; [] when the field is empty or absent."""
        raw = self.field(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition)

    def value(self, field: int, repetition: int = 1, component: int = 1, subcomponent: int = 1,
              *, charset: str = "latin-1") -> str:
        """The decoded value at field/repetition/component/subcomponent; '' when absent."""
        if self.name == "MSH" and field <= 2:
            return self.field(field) if repetition == component == subcomponent == 1 else ""
        reps = self.repetitions(field)
        if repetition < 1 or repetition > len(reps):
            return ""
        return leaf(reps[repetition - 1], self.delimiters, component, subcomponent, charset=charset)


def leaf(rep: str, d: Delimiters, component: int = 1, subcomponent: int = 1, *,
         charset: str = "latin-1") -> str:
    """Decode one component/subcomponent of a raw repetition ('' when absent)."""
    comps = rep.split(d.component) if d.component in rep else [rep]
    if component < 1 or component > len(comps):
        return ""
    text = comps[component - 1]
    if d.subcomponent and d.subcomponent in text:
        subs = text.split(d.subcomponent)
        if subcomponent < 1 or subcomponent > len(subs):
            return ""
        text = subs[subcomponent - 1]
    elif subcomponent != 1:
        return ""
    return unescape(text, d, charset=charset)


class Message:
    """A tokenised HL7 v2 message: its delimiters and its segments in arrival order."""

    __slots__ = ("__dict__", "delimiters", "segments")

    def __init__(self, segments: list[Segment], delimiters: Delimiters) -> None:
        self.segments = segments
        self.delimiters = delimiters

    @classmethod
    def parse(cls, text: str) -> Message:
        """Split ER7 text on \\r, \\n or \\r\\n; blank lines (trailing or not) are skipped."""
        if not isinstance(text, str):
            raise HL7InputError(f"expected text, got {type(text).__name__}", location="MSH", code="100",
                                hint="decode the bytes first (adapter.hl7.er7.decode_bytes)")
        text = text.lstrip("\ufeff\r\n \t\x0b")
        d = Delimiters.from_msh(text)
        segments = [Segment(line, d) for line in _SEGMENT_END.split(text) if line.strip()]
        return cls(segments, d)

    def __repr__(self) -> str:
        return f"Message({self.message_type}^{self.trigger}, {len(self.segments)} segments)"

    def segment(self, name: str, occurrence: int = 0) -> Segment | None:
        """The occurrence-th (0-based) segment called `name`, or None."""
        seen = 0
        for seg in self.segments:
            if seg.name == name:
                if seen == occurrence:
                    return seg
                seen += 1
        return None

    def all(self, name: str) -> list[Segment]:
        """Every segment called `name`, in order."""
        return [seg for seg in self.segments if seg.name == name]

    def encode(self, segment_end: str = "\r") -> str:
        """The message text, segments joined with `segment_end` (no trailing separator)."""
        return segment_end.join(seg.raw for seg in self.segments)

    # -- MSH convenience ----------------------------------------------------------------------
    @cached_property
    def msh(self) -> Segment:
        return self.segments[0]

    def _msh(self, field: int, component: int = 1) -> str:
        return self.msh.value(field, 1, component)

    @property
    def sending_application(self) -> str:
        return self._msh(3)

    @property
    def sending_facility(self) -> str:
        return self._msh(4)

    @property
    def receiving_application(self) -> str:
        return self._msh(5)

    @property
    def receiving_facility(self) -> str:
        return self._msh(6)

    @property
    def message_type(self) -> str:
        return self._msh(9, 1)

    @property
    def trigger(self) -> str:
        return self._msh(9, 2)

    @property
    def structure(self) -> str:
        return self._msh(9, 3)

    @property
    def control_id(self) -> str:
        return self._msh(10)

    @property
    def processing_id(self) -> str:
        return self._msh(11)

    @property
    def version(self) -> str:
        return self._msh(12)

    @property
    def accept_ack_type(self) -> str:
        return self._msh(15)

    @property
    def application_ack_type(self) -> str:
        return self._msh(16)

    @property
    def charset(self) -> str:
        return self._msh(18)
