"""HL7 v2 acknowledgments built from the light tokenisation (no hl7apy on the ACK path).

The ACK answers in the sender's own terms: its delimiters (MSH-1/MSH-2 echoed), its version
(MSH-12), its charset (MSH-18), sender and receiver swapped (MSH-3/4 <-> MSH-5/6), its control id
echoed in MSA-2, and the trigger copied into MSH-9 (checklist: python-hl7 `create_ack`).

Original mode answers AA / AE / AR; enhanced mode (MSH-15 or MSH-16 valued) answers the commit
ACK CA / CE / CR, sent or not as MSH-15 asks (AL always, NE never, ER only on error, SU only on
success; empty = AL so a sender is never left waiting). An error carries an ERR segment: from v2.5
ERR-2 location (``PID^1^3``), ERR-3 table 0357 code, ERR-4 severity, ERR-8 readable text; before
v2.5 the ERR-1 ELD form (``PID^1^3^101&Required field missing&HL70357``). MSA-3 repeats the text
(deprecated but what many engines display).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from adapter.errors import HL7InputError
from adapter.hl7.er7 import DEFAULT_DELIMITERS, Delimiters, Segment, escape

__all__ = ["AckError", "Verdict", "ack_code", "build_ack", "hl7_timestamp", "wants_ack"]

# HL7 table 0357 (message error condition codes)
_ERROR_NAMES = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "104": "Value too long",
    "200": "Unsupported message type", "201": "Unsupported event code", "202": "Unsupported processing id",
    "203": "Unsupported version id", "204": "Unknown key identifier", "205": "Duplicate key identifier",
    "206": "Application record locked", "207": "Application internal error",
}


class Verdict(StrEnum):
    ACCEPTED = "accepted"      # committed: AA / CA
    ERROR = "error"            # the message cannot be used: AE / CE
    REJECTED = "rejected"      # not accepted here (type, size): AR / CR


_CODES = {False: {Verdict.ACCEPTED: "AA", Verdict.ERROR: "AE", Verdict.REJECTED: "AR"},
          True: {Verdict.ACCEPTED: "CA", Verdict.ERROR: "CE", Verdict.REJECTED: "CR"}}


@dataclass(frozen=True, slots=True)
class AckError:
    """What goes into ERR: a table 0357 code, a location such as ``PID^1^3`` and readable text."""

    code: str
    text: str
    location: str | None = None

    @classmethod
    def from_exception(cls, exc: HL7InputError) -> AckError:
        text = exc.message
        if exc.location and text.startswith(f"{exc.location}: "):    # ERR-2 already says where
            text = text[len(exc.location) + 2:]
        text = f"{text} ({exc.hint})" if exc.hint else text
        return cls(exc.code, text, exc.location)


def ack_code(verdict: Verdict, *, enhanced: bool) -> str:
    return _CODES[enhanced][verdict]


def wants_ack(verdict: Verdict, *, enhanced: bool, accept_ack_type: str) -> bool:
    """Whether MSH-15 asks for this commit ACK (always true in original mode)."""
    if not enhanced:
        return True
    kind = accept_ack_type.strip().upper()
    if kind == "NE":
        return False
    if kind == "ER":
        return verdict is not Verdict.ACCEPTED
    if kind == "SU":
        return verdict is Verdict.ACCEPTED
    return True                                   # AL, empty or unknown: answer


def hl7_timestamp(value: datetime | None = None) -> str:
    """An HL7 DTM with seconds and its offset (now, in UTC, by default): 20260301140000+0000."""
    if value is not None:
        return value.strftime("%Y%m%d%H%M%S%z")
    global _last_stamp
    second = int(time.time())
    if _last_stamp[0] != second:       # one strftime per second, not one per ACK
        _last_stamp = (second, datetime.fromtimestamp(second, UTC).strftime("%Y%m%d%H%M%S%z"))
    return _last_stamp[1]


_last_stamp: tuple[int, str] = (-1, "")


def build_ack(msh: Segment | None, code: str, *, control_id: str, timestamp: str,
              error: AckError | None = None, charset: str | None = None,
              application: str | None = None, facility: str | None = None) -> str:
    """The ACK text (segments ended by CR) for a message whose MSH is `msh`.

    `msh` None means MSH could not be read: the ACK then uses the default delimiters, version 2.5
    and an empty MSA-2. `charset` is MSH-18 to echo (None when the message's one is unusable);
    `application`/`facility` override the ACK's MSH-3/MSH-4 (default: the message's MSH-5/MSH-6).
    """
    # the ACK path: the same MSH fields give the same text around timestamp, control id and MSA-2
    if msh is not None and msh.name == "MSH" and error is None:
        f = msh.field
        cut = _template(f(2), f(3), f(4), f(5), f(6), f(9), f(11), f(12), msh.delimiters, code, charset,
                        application, facility)
        if cut is not None:
            return f"{cut[0]}{timestamp}{cut[1]}{control_id}{cut[2]}{f(10)}\r"
    return _build(msh, code, control_id=control_id, timestamp=timestamp, error=error, charset=charset,
                  application=application, facility=facility)


_TS, _CID, _MCID = "\x00ts\x00", "\x00cid\x00", "\x00mcid\x00"   # placeholders: no delimiter is NUL


@lru_cache(maxsize=256)    # a feed repeats a handful of sender/receiver/type/version combinations
def _template(msh2: str, msh3: str, msh4: str, msh5: str, msh6: str, msh9: str, msh11: str, msh12: str,
              d: Delimiters, code: str, charset: str | None, application: str | None,
              facility: str | None) -> tuple[str, str, str] | None:
    """An error-free ACK cut around its timestamp, control id and MSA-2 (filled in per message);
    None when a value holds NUL and could be mistaken for a placeholder."""
    fields = {2: msh2, 3: msh3, 4: msh4, 5: msh5, 6: msh6, 9: msh9, 10: _MCID, 11: msh11, 12: msh12}
    if "\x00" in "".join([*fields.values(), d.field, d.encoding_characters, code, charset or "",
                           application or "", facility or ""]).replace(_MCID, ""):
        return None
    msh = Segment(d.field.join(["MSH", *(fields.get(n, "") for n in range(2, 13))]), d)
    text = _build(msh, code, control_id=_CID, timestamp=_TS, charset=charset, application=application,
                  facility=facility)
    head, _, rest = text.partition(_TS)
    middle, _, rest = rest.partition(_CID)
    tail, _, _ = rest.partition(_MCID)
    return head, middle, tail


def _build(msh: Segment | None, code: str, *, control_id: str, timestamp: str,
           error: AckError | None = None, charset: str | None = None,
           application: str | None = None, facility: str | None = None) -> str:
    d = msh.delimiters if msh is not None else DEFAULT_DELIMITERS
    f = msh.field if msh is not None else (lambda n: "")
    version = f(12) or "2.5"
    vtuple = _version(version, d)
    trigger = f(9).split(d.repetition)[0].split(d.component)[1:2]
    msh9 = ["ACK", *trigger]
    if vtuple >= (2, 3, 1):
        msh9 += [""] * (2 - len(msh9)) + ["ACK"]
    fs, cs = d.field, d.component
    fields = [escape(application, d) if application is not None else f(5),
              escape(facility, d) if facility is not None else f(6),
              f(3), f(4), timestamp, "", cs.join(msh9), control_id, f(11) or "P", version]
    if charset:
        fields += ["", "", "", "", "", charset]                  # MSH-13..17 empty, MSH-18
    segments = [f"MSH{fs}{f(2) or d.encoding_characters}{fs}{fs.join(fields)}"]
    msa = ["MSA", code, f(10)]
    if error is not None:
        msa.append(escape(error.text[:80], d))
    segments.append(fs.join(msa))
    if error is not None:
        segments.append(_err(error, d, vtuple))
    return "\r".join(segments) + "\r"


def _err(error: AckError, d: Delimiters, version: tuple[int, ...]) -> str:
    fs, cs, ss = d.field, d.component, d.subcomponent or d.component
    name = _ERROR_NAMES.get(error.code, "Application error")
    location = _location(error.location)
    if version >= (2, 5):
        loc = cs.join(location)
        return fs.join(["ERR", "", loc, cs.join([error.code, name, "HL70357"]), "E", "", "", "",
                        escape(error.text[:250], d)])
    seg, seq, fld = [*location, "", "", ""][:3]
    return fs.join(["ERR", cs.join([seg, seq, fld, ss.join([error.code, name, "HL70357"])])])


def _location(location: str | None) -> list[str]:
    """'PID^1^3' stays; 'MSH-9' (er7's form) becomes ['MSH', '1', '9']; None -> []."""
    if not location:
        return []
    if "^" in location:
        return location.split("^")
    seg, _, fld = location.partition("-")
    return [seg, "1", fld] if fld else [seg, "1"]


@lru_cache(maxsize=64)     # a feed sends one or two versions
def _version(version: str, d: Delimiters) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split(d.component)[0].split("."))
    except ValueError:
        return (2, 5)
