"""The closed set of pipes: `PATH | date`, `| datetime`, `| lower`, `| upper`, `| title`,
`| digits`, `| trim`, `| email`, `| minutes`, `| map(TABLE)`, `| default(VALUE)`, `| join(SEP)`.

Pipes apply to each item of a list, except `join` (list -> text) and `default` (empty -> value).
A value a pipe cannot read raises `PipeError` without echoing the value (it may be PHI); the engine
adds route, target field and source path.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["PIPES", "Pipe", "PipeError", "is_empty", "parse_pipe", "split_pipes"]


class PipeError(ValueError):
    """A value a pipe cannot convert (the message never contains the value)."""


@dataclass(frozen=True, slots=True)
class PipeContext:
    tables: Mapping[str, Mapping[str, str]]
    tz: ZoneInfo


def is_empty(value: Any) -> bool:
    if value is None or value == "":
        return True
    if isinstance(value, list):
        return all(is_empty(v) for v in value)
    return False


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


_HL7_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def _parse_dtm(text: str) -> tuple[dt.datetime, bool, int]:
    """(value, has offset, precision in number of date-time parts) from HL7 DTM or ISO 8601."""
    m = _HL7_DTM.match(text)
    if m:
        parts = [int(g) if g else None for g in m.groups()[:6]]
        precision = sum(p is not None for p in parts)
        y, mo, d, h, mi, s = (p if p is not None else default for p, default in zip(parts, (0, 1, 1, 0, 0, 0),
                                                                                   strict=True))
        frac = int((m[7] or "0").ljust(6, "0")[:6])
        try:
            value = dt.datetime(y, mo, d, h, mi, s, frac)
        except ValueError:
            raise PipeError("is not a valid HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])") from None
        if m[8]:
            sign = 1 if m[8][0] == "+" else -1
            off = dt.timedelta(hours=int(m[8][1:3]), minutes=int(m[8][3:5]))
            if off >= dt.timedelta(hours=24):
                raise PipeError("has an impossible UTC offset")
            value = value.replace(tzinfo=dt.timezone(sign * off))
        return value, bool(m[8]), precision
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PipeError("is not a date/time (HL7 YYYYMMDD[HHMM[SS]][+ZZZZ] or ISO 8601)") from None
    return value, value.utcoffset() is not None, 6 if "T" in text else 3


def _date(value: str, ctx: PipeContext) -> str:
    parsed, _, precision = _parse_dtm(value.strip())
    if precision < 3:
        raise PipeError("is not a full date (year, month and day)")
    return parsed.date().isoformat()


def _datetime(value: str, ctx: PipeContext) -> str:
    parsed, aware, precision = _parse_dtm(value.strip())
    if precision < 3:
        raise PipeError("is not a full date/time (at least year, month and day)")
    if not aware:
        parsed = parsed.replace(tzinfo=ctx.tz)  # local time of the site (zoneinfo handles DST folds)
    return parsed.isoformat()


def _minutes_between(value: Any, ctx: PipeContext) -> str:
    """Minutes from the first to the second of two date-times (a start and an end): works across
    midnight and across offsets, which text arithmetic in FHIRPath or terser paths cannot."""
    items = [v for v in (value if isinstance(value, list) else [value]) if not is_empty(v)]
    if len(items) != 2:
        return ""      # a missing start or end: empty, so an alternative (or the required check) decides
    start, end = (dt.datetime.fromisoformat(_datetime(_text(v), ctx)) for v in items)
    minutes = round((end - start).total_seconds() / 60)
    if minutes <= 0:
        raise PipeError("ends before it starts (the end must be after the start)")
    return str(minutes)


def _title(value: str, ctx: PipeContext) -> str:
    # only all-caps or all-lower text is re-cased: "McDonald" or "de la Tour" typed by a person stays
    if value.isupper() or value.islower():
        return re.sub(r"[^\W\d_]+", lambda m: m[0][0].upper() + m[0][1:].lower(), value)
    return value


# one address: something@domain.tld, no spaces (HL7 senders put e-mails in XTN-1 with many use codes)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str, ctx: PipeContext) -> str:
    text = value.strip()
    return text if _EMAIL.match(text) else ""


# TQ-3 duration (HL7 v2.5 4.4.3): S<n>, M<n>, H<n>, D<n>, W<n>, or INDEF; a bare number is minutes
_TQ_DURATION = re.compile(r"^(?P<unit>[SMHDW])?\s*(?P<n>\d+(?:\.\d+)?)$", re.I)
_MINUTES_PER = {"S": 1 / 60, "M": 1, "H": 60, "D": 1440, "W": 10080}


def _minutes(value: str, ctx: PipeContext) -> str:
    text = value.strip()
    if text.upper() == "INDEF":
        return ""
    m = _TQ_DURATION.match(text)
    if not m:
        raise PipeError("is not a duration (minutes, or TQ-3 style M30, H1, D1)")
    minutes = float(m["n"]) * _MINUTES_PER[(m["unit"] or "M").upper()]
    return str(max(1, round(minutes)))


_ELEMENTWISE: dict[str, Callable[[str, PipeContext], str]] = {
    "date": _date,
    "datetime": _datetime,
    "lower": lambda v, c: v.lower(),
    "upper": lambda v, c: v.upper(),
    "title": _title,
    "digits": lambda v, c: "".join(ch for ch in v if ch.isdigit()),
    "trim": lambda v, c: v.strip(),
    "email": _email,
    "minutes": _minutes,
}

# name -> (argument: None = none allowed, "required", "optional"; help)
PIPES: dict[str, tuple[str | None, str]] = {
    "date": (None, "HL7 DT/DTM or ISO 8601 -> `YYYY-MM-DD`"),
    "datetime": (None, "HL7 DTM or ISO 8601 -> ISO 8601 with offset; no offset means the site time zone"),
    "lower": (None, "lower case"),
    "upper": (None, "upper case"),
    "title": (None, "Title Case for ALL-CAPS or all-lower text (mixed case is kept as typed)"),
    "digits": (None, "only the digits (phone numbers)"),
    "trim": (None, "strip surrounding spaces"),
    "email": (None, "the value when it looks like one e-mail address (name@domain.tld), else empty"),
    "minutes": (None, "a duration in minutes: a number, or TQ-3 style `M30`, `H1`, `D1` (`INDEF` is empty)"),
    "minutes_between": (None, "minutes from the first to the second of two date-times "
                              "(`start.combine(end) | minutes_between`)"),
    "map": ("required", "look the code up in a table (`map(sex)`); an unknown code gives the table's "
                        "`*` entry, or empty"),
    "default": ("required", "the argument when the value is empty (`default(Unknown)`)"),
    "join": ("optional", "join the non-empty items of a list (`join(\" \")`, default one space)"),
}


@dataclass(frozen=True, slots=True)
class Pipe:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}({self.arg!r})"

    def apply(self, value: Any, ctx: PipeContext) -> Any:
        if self.name == "default":
            return self.arg if is_empty(value) else value
        if self.name == "minutes_between":
            return _minutes_between(value, ctx)
        if self.name == "join":
            items = value if isinstance(value, list) else [value]
            return (" " if self.arg is None else self.arg).join(_text(v) for v in items if not is_empty(v))
        if isinstance(value, list):
            return [self.apply(v, ctx) for v in value]
        if is_empty(value):
            return ""
        if self.name == "map":
            table = ctx.tables[self.arg or ""]
            text = _text(value).strip()
            hit = table.get(text)
            if hit is None:
                hit = table.get(text.upper(), table.get(text.lower(), table.get("*", "")))
            return hit
        return _ELEMENTWISE[self.name](_text(value), ctx)


_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.S)


def parse_pipe(text: str, tables: Mapping[str, Any]) -> Pipe:
    """Parse `name` or `name(arg)`; ValueError says what is allowed."""
    m = _CALL.match(text)
    if not m or m[1] not in PIPES:
        raise ValueError(f"unknown pipe {text.strip()!r}; the pipes are: {', '.join(PIPES)}")
    name, raw = m[1], m[2]
    arg = None if raw is None else raw.strip()
    if arg is not None and len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'":
        arg = arg[1:-1]
    need = PIPES[name][0]
    if need is None and arg is not None:
        raise ValueError(f"pipe {name} takes no argument")
    if need == "required" and not arg:
        raise ValueError(f"pipe {name} needs an argument, e.g. {name}(...)")
    if name == "map" and arg not in tables:
        raise ValueError(f"map({arg}): no table named {arg!r}; tables: {', '.join(sorted(tables)) or 'none'}")
    return Pipe(name, arg)


def split_pipes(text: str) -> tuple[str, list[str]]:
    """Split `SOURCE | pipe | pipe(arg)` from the right, so a FHIRPath union (`a | b`) is kept
    in the source as long as its right side is not a pipe name."""
    parts = text.split("|")
    pipes: list[str] = []
    while len(parts) > 1:
        m = _CALL.match(parts[-1])
        if not m or m[1] not in PIPES:
            break
        pipes.insert(0, parts.pop())
    return "|".join(parts).strip(), [p.strip() for p in pipes]
