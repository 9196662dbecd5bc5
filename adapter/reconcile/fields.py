"""Which fields are compared and when two values count as the same.

Equality follows what a person would call "the same" and what OnCall does to values it stores:
e-mails case-insensitively, phones by their digits (a North American leading 1 ignored), names and
sex with surrounding blanks ignored, birth dates as ISO dates, appointment starts as instants.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from adapter.oncall.matching import email_key, phone_key
from adapter.oncall.models import Appointment, Contact

__all__ = ["APPOINTMENT_COMPARED", "CONTACT_COMPARED", "appointment_field", "as_instant", "contact_field",
           "same"]

CONTACT_COMPARED = ("first_name", "last_name", "email", "phone", "date_of_birth", "sex")
APPOINTMENT_COMPARED = ("datetime", "duration", "cancelled")


def as_instant(value: Any) -> dt.datetime | None:
    """An aware datetime from a datetime or ISO text (a naive one is read as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.utcoffset() is not None else value.replace(tzinfo=dt.UTC)


def _key(name: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if name == "email":
        return email_key(str(value)) or None
    if name == "phone":
        return phone_key(str(value)) or None
    if name == "date_of_birth":
        return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]
    if name == "datetime":
        return as_instant(value)
    if name == "duration":
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    if name == "cancelled":
        return bool(value)
    return str(value).strip()


def same(name: str, a: Any, b: Any) -> bool:
    """Whether two values of field `name` are equal as OnCall and a person would read them."""
    return bool(_key(name, a) == _key(name, b))


def contact_field(contact: Contact, name: str) -> Any:
    value = getattr(contact, name, None)
    return value.isoformat() if isinstance(value, dt.date) else value


def appointment_field(appointment: Appointment, name: str) -> Any:
    value = getattr(appointment, name, None)
    return value.isoformat() if isinstance(value, dt.datetime) else value
