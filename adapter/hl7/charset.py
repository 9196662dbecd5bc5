"""MSH-18 character sets for the MLLP listener: which Python codec, and decoding the payload strictly.

`adapter.hl7.er7` owns the table of HL7 table 0211 names (`codec_for`) and a *tolerant* decoder for
replay and mapping. The listener must be stricter: a charset it does not know, or bytes that are not
valid in the declared charset, are answered with an AE that names the charset and the byte, so the
sender fixes its feed instead of the adapter quietly guessing (and mangling names with accents).

MLLP frames on single bytes (<VT>, <FS>, <CR>) and MSH is read before the charset is known, so only
ASCII-compatible encodings can travel over it: UTF-16 and UTF-32 are refused with that reason.
"""

from __future__ import annotations

import re
from functools import lru_cache

from adapter.errors import HL7InputError
from adapter.hl7.er7 import codec_for

__all__ = ["DEFAULT_CHARSET", "decode_payload", "resolve_codec"]

DEFAULT_CHARSET = "UNICODE UTF-8"          # what an empty MSH-18 means (the rule)
_PROBE = b"MSH|^~\\&|APP|FAC\r"
_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


@lru_cache(maxsize=64)     # a feed sends one or two values; the probe is not free
def resolve_codec(msh18: str, *, default: str = DEFAULT_CHARSET) -> str:
    """The Python codec for an MSH-18 value (first repetition, as sent); `default` when empty.

    Raises HL7InputError (table 0357 code 103, location MSH^1^18) naming an unknown charset.
    """
    name = msh18.strip() or default
    codec = codec_for(name, default="")
    if not codec:
        raise HL7InputError(f"character set {name!r} in MSH-18 is not known", location="MSH^1^18",
                            code="103", hint="use an HL7 table 0211 value such as 'UNICODE UTF-8', "
                                             "'8859/1' or 'ASCII', or leave MSH-18 empty for UTF-8")
    try:
        # MLLP frames on single bytes and MSH is read before the charset is known: the codec must
        # read ASCII as ASCII (rules out UTF-16/32, EBCDIC and bytes-to-bytes codecs like "base64")
        usable = _PROBE.decode(codec) == _PROBE.decode("ascii")
    except (LookupError, UnicodeDecodeError):
        usable = False
    if not usable:
        raise HL7InputError(f"character set {name!r} in MSH-18 cannot travel over MLLP",
                            location="MSH^1^18", code="103",
                            hint="MLLP needs an ASCII-compatible encoding; send UTF-8 ('UNICODE UTF-8')")
    return codec


def decode_payload(raw: bytes, codec: str, *, declared: str) -> str:
    """Decode the whole message with `codec`; an invalid byte raises HL7InputError saying where.

    `declared` is the MSH-18 text as sent ('' when absent), quoted in the error so the sender knows
    which declaration its bytes contradict.
    """
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        segment_no = len(_SEGMENT_END.findall(raw, 0, exc.start)) + 1
        start = max(raw.rfind(b"\r", 0, exc.start), raw.rfind(b"\n", 0, exc.start)) + 1
        segment = raw[start:start + 3].decode("latin-1")
        what = f"MSH-18 is {declared!r}" if declared else f"MSH-18 is empty so {DEFAULT_CHARSET} is assumed"
        raise HL7InputError(
            f"byte 0x{raw[exc.start]:02X} at offset {exc.start} (segment {segment_no}, {segment}) "
            f"is not valid {codec}; {what}", location="MSH^1^18",
            code="102", hint="declare the character set the feed really uses in MSH-18 (e.g. '8859/1')",
        ) from None
