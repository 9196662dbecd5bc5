"""Local re-checks of filtered OnCall results, and JSON encoding of outgoing payloads.

OnCall silently ignores query parameters it does not know (assumed DRF behaviour), so a
``GET /contacts/?email=x`` may return every contact: each result is checked here before use.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from adapter.errors import PermanentError

__all__ = ["email_key", "jsonable", "name_matches", "name_tokens", "phone_key"]


def email_key(email: str | None) -> str:
    """E-mails compare case-insensitively, surrounding blanks ignored."""
    return (email or "").strip().casefold()


def phone_key(phone: str | None) -> str:
    """Digits only; a North American number with its leading 1 compares equal to one without."""
    digits = "".join(ch for ch in (phone or "") if ch.isdigit())
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return digits


def name_tokens(*names: str | None) -> list[str]:
    """Case-folded, accent-free words of the given names."""
    text = " ".join(n for n in names if n)
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    cleaned = "".join(ch if ch.isalnum() else " " for ch in plain.casefold())
    return cleaned.split()


def name_matches(query: str, *candidate_names: str | None) -> bool:
    """Every word of `query` is a word of the candidate names ("ada lovelace" ~ "Lovelace, Ada")."""
    wanted = name_tokens(query)
    have = set(name_tokens(*candidate_names))
    return bool(wanted) and all(word in have for word in wanted)


def jsonable(value: Any, path: str = "$") -> Any:
    """A JSON-ready copy of a payload: aware datetimes in ISO 8601, dates, Decimals as numbers.

    A naive datetime is refused: OnCall would read it in the server's zone, so the appointment
    would silently move. `path` names the place in the payload for the error message.
    """
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="python", exclude_unset=True), path)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PermanentError(f"{path}: datetime {value.isoformat()} has no UTC offset",
                                 hint="give every datetime sent to OnCall an explicit offset")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
