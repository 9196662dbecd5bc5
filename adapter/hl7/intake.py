"""What the MLLP listener reads cheaply from a raw message before it stores and acknowledges it.

Two steps, so that an answer is always possible when MSH is readable:

1. `read_header(raw)`: MSH alone, read from the bytes as latin-1 (MSH is ASCII in practice, and
   latin-1 maps every byte, so nothing can fail but a missing MSH), then MSH-18 resolved to a codec.
   This is all the ACK needs: delimiters, MSH-3..6, 9, 10, 11, 12, 15, 16, 18.
2. `read_intake(header, raw, policy)`: the payload decoded strictly in its charset, and the envelope's
   kind, ordering key, dedup key and meta. Only the PID (else SCH) line is found and split with
   `adapter.hl7.er7` (no hl7apy, no full tokenisation on this path: it runs once per ACK).
   Anything that makes the message unusable raises HL7InputError with an ERR-style location.

The ordering key is the patient ("patient:" + the PID-3 identifier chosen by assigning authority
PID-3.4, then by identifier type PID-3.5, else the first repetition with a value); without PID, the
appointment ("appointment:" + SCH-1, else SCH-2); without either, the control id. It holds an MRN:
fine in the store, never in a log line (`key_hash` is what is logged).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from adapter.errors import HL7InputError
from adapter.hl7.charset import DEFAULT_CHARSET, decode_payload, resolve_codec
from adapter.hl7.er7 import Delimiters, Message, Segment, leaf

__all__ = ["BOM", "Header", "Intake", "PatientIdPolicy", "key_hash", "read_header", "read_intake"]

BOM = b"\xef\xbb\xbf"
_LEADING_NOISE = b"\r\n \t"


@dataclass(frozen=True, slots=True)
class PatientIdPolicy:
    """Which PID-3 repetition is the patient id: first match of authorities, then type codes."""

    authorities: Sequence[str] = ()            # PID-3.4 namespace (or universal id), e.g. ("HOSP",)
    type_codes: Sequence[str] = ("MR", "MRN")  # PID-3.5 (MRN: seen from UK/SG EMRs), e.g. ("MR", "PI")


@dataclass(frozen=True, slots=True)
class Header:
    """MSH as the ACK needs it. `msh` holds raw (escaped) field text, MSH-n at `msh.field(n)`."""

    msh: Segment
    declared_charset: str                      # MSH-18 as sent ('' when absent)
    codec: str | None                          # None when MSH-18 is unusable (see charset_error)
    charset_error: HL7InputError | None
    body_offset: int                           # bytes before MSH (BOM, stray line ends) in the raw frame

    @property
    def delimiters(self) -> Delimiters:
        return self.msh.delimiters

    @property
    def control_id(self) -> str:
        return self.msh.field(10)

    @property
    def sender(self) -> str:
        return f"{self.msh.field(3)}|{self.msh.field(4)}"

    @property
    def enhanced(self) -> bool:
        """Enhanced acknowledgment mode: MSH-15 or MSH-16 valued (HL7 v2.5 section 2.9.3)."""
        return bool(self.msh.field(15) or self.msh.field(16))

    @property
    def kind(self) -> str:
        d = self.delimiters
        rep = self.msh.field(9).split(d.repetition)[0]
        parts = rep.split(d.component)
        trigger = parts[1] if len(parts) > 1 else ""
        return f"{parts[0]}^{trigger}" if trigger else parts[0]


@dataclass(frozen=True, slots=True)
class Intake:
    """What the envelope is made of, read from the message."""

    header: Header
    kind: str                                  # "ADT^A04"
    ordering_key: str                          # "patient:<id>", "appointment:<id>" or "control:<...>"
    dedup_key: str                             # "mllp:{MSH-3}|{MSH-4}|{MSH-10}"
    payload: bytes                             # the raw bytes to store (a leading BOM removed)
    meta: dict[str, str] = field(default_factory=dict)


def key_hash(ordering_key: str) -> str:
    """A short stand-in for an ordering key in logs (the key itself may hold an MRN)."""
    return hashlib.sha256(ordering_key.encode("utf-8")).hexdigest()[:12]


def read_header(raw: bytes) -> Header:
    """Read MSH from the raw frame; HL7InputError (location MSH, code 100) when there is none."""
    offset = len(BOM) if raw.startswith(BOM) else 0
    while offset < len(raw) and raw[offset] in _LEADING_NOISE:
        offset += 1
    end = len(raw)
    for stop in (raw.find(b"\r", offset), raw.find(b"\n", offset)):
        if 0 <= stop < end:
            end = stop
    first = raw[offset:end].decode("latin-1")
    d = Delimiters.from_msh(first)             # raises HL7InputError when MSH is missing or broken
    msh = Segment(first, d)
    declared = msh.repetitions(18)[0].split(d.component)[0] if msh.field(18) else ""
    codec: str | None = None
    error: HL7InputError | None = None
    try:
        codec = resolve_codec(declared)
    except HL7InputError as exc:
        error = exc
    if codec is not None and codec != "latin-1":
        # echo MSH-3/4 (names with accents) in the message's own charset
        msh = Segment(raw[offset:end].decode(codec, errors="replace"), d)
    return Header(msh, declared, codec, error, offset)


def read_intake(header: Header, raw: bytes, policy: PatientIdPolicy = PatientIdPolicy()) -> Intake:
    """Decode and tokenise the message and say what its envelope is; HL7InputError when unusable."""
    if header.charset_error is not None:
        raise header.charset_error
    assert header.codec is not None
    msh = header.msh
    if not msh.field(9):
        raise HL7InputError("MSH-9 (message type) is empty", location="MSH^1^9", code="101",
                            hint="send the message type and trigger event, e.g. ADT^A04")
    control_id = header.control_id
    if not control_id:
        raise HL7InputError("MSH-10 (message control id) is empty", location="MSH^1^10", code="101",
                            hint="give every message a unique control id; it is how duplicates are found")
    payload = raw[len(BOM):] if raw.startswith(BOM) else raw
    text = decode_payload(payload, header.codec, declared=header.declared_charset)   # strict: AE on bad bytes
    charset = header.declared_charset or DEFAULT_CHARSET
    if _scannable(header):
        # the ACK path: MSH is already read and only PID (or SCH) is needed, so find that one line
        # instead of tokenising every segment (same rules as Message.parse: first segment so named)
        d = header.delimiters
        msh = header.msh
        ordering_key = _ordering_key(lambda name: _find_segment(text, name, d), policy, charset)
    else:
        message = Message.parse(text)
        msh = message.msh
        ordering_key = _ordering_key(message.segment, policy, charset)
    ordering_key = ordering_key or f"control:{header.sender}|{control_id}"
    message_type, trigger, version, processing_id, accept_ack_type, application_ack_type = _msh_meta(
        msh.field(9), msh.field(11), msh.field(12), msh.field(15), msh.field(16), msh.delimiters)
    meta = {
        "control_id": control_id,
        "sender": header.sender,
        "message_type": message_type,
        "trigger": trigger,
        "version": version,
        "processing_id": processing_id,
        "charset": header.codec,
        "msh18": header.declared_charset,
        "accept_ack_type": accept_ack_type,
        "application_ack_type": application_ack_type,
        "key_hash": key_hash(ordering_key),
    }
    if payload is not raw:
        meta["bom_removed"] = "true"
    return Intake(header, header.kind, ordering_key, f"mllp:{header.sender}|{control_id}", payload, meta)


@lru_cache(maxsize=256)    # a feed repeats a handful of MSH-9/11/12/15/16 combinations
def _msh_meta(msh9: str, msh11: str, msh12: str, msh15: str, msh16: str,
              d: Delimiters) -> tuple[str, str, str, str, str, str]:
    """MSH-9.1, 9.2, 12, 11, 15, 16 decoded from the raw fields, as `Segment.value` reads them."""
    def value(raw: str, component: int = 1) -> str:
        return leaf(raw.split(d.repetition)[0], d, component) if raw else ""
    return value(msh9), value(msh9, 2), value(msh12), value(msh11), value(msh15), value(msh16)


# Codecs in which every ASCII byte (CR, LF, delimiters) is that character and nothing else: the MSH
# read as latin-1 then holds the same delimiters and line ends as the decoded text.
_BYTEWISE = frozenset({"utf-8", "ascii", "latin-1", "iso8859-1", "cp1252"})


def _scannable(header: Header) -> bool:
    codec = header.codec or ""
    d = header.delimiters
    return ((codec in _BYTEWISE or codec.startswith("iso8859-")) and d.field.isascii()
            and d.encoding_characters.isascii())


def _find_segment(text: str, name: str, d: Delimiters) -> Segment | None:
    """The first segment called `name` (a line starting with it and then a field separator or the
    line end), without splitting the other lines."""
    n = len(name)
    at = text.find(name)
    while at >= 0:
        after = text[at + n:at + n + 1]
        if (at == 0 or text[at - 1] in "\r\n") and after in ("", "\r", "\n", d.field):
            end = len(text)
            for stop in (text.find("\r", at), text.find("\n", at)):
                if 0 <= stop < end:
                    end = stop
            return Segment(text[at:end], d)
        at = text.find(name, at + 1)
    return None


def _ordering_key(segment: Callable[[str], Segment | None], policy: PatientIdPolicy,
                  charset: str) -> str | None:
    pid = segment("PID")
    if pid is not None:
        return "patient:" + _patient_id(pid, policy, charset)
    sch = segment("SCH")
    if sch is not None:
        appointment = sch.value(1, charset=charset) or sch.value(2, charset=charset)
        if appointment:
            return "appointment:" + appointment
    return None


def _patient_id(pid: Segment, policy: PatientIdPolicy, charset: str) -> str:
    d = pid.delimiters
    reps = [r for r in pid.repetitions(3) if leaf(r, d, 1, charset=charset)]
    chosen = None
    for authority in policy.authorities:
        chosen = next((r for r in reps if authority in (leaf(r, d, 4, 1, charset=charset),
                                                        leaf(r, d, 4, 2, charset=charset))), None)
        if chosen:
            break
    if chosen is None:
        for code in policy.type_codes:
            chosen = next((r for r in reps if leaf(r, d, 5, charset=charset) == code), None)
            if chosen:
                break
    if chosen is None and reps:
        chosen = reps[0]
    if chosen is not None:
        return leaf(chosen, d, 1, charset=charset)
    external = pid.value(2, charset=charset)     # PID-2, the pre-2.3 external id, still sent by some
    if external:
        return external
    raise HL7InputError("PID-3 (patient identifier list) has no identifier", location="PID^1^3",
                        code="101", hint="send the patient's identifier (e.g. the MRN) in PID-3.1")
