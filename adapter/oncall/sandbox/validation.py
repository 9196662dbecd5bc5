"""Field validation with Django REST Framework's messages and error shapes.

Each `clean_*` function reads a JSON object and returns the cleaned columns, or raises one
`ApiError(400, {"field": ["message"], ...})` naming every invalid field at once, as DRF does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from adapter.oncall.sandbox.http import ApiError

__all__ = [
    "APPOINTMENT_TYPES",
    "MAX_PARTICIPANTS",
    "Errors",
    "clean_bool",
    "clean_date",
    "clean_datetime",
    "clean_email",
    "clean_fee",
    "clean_hyperlink",
    "clean_int",
    "clean_metadata",
    "clean_str",
]

APPOINTMENT_TYPES = ("online", "inperson", "phone", "message")
MAX_PARTICIPANTS = 25
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY = 100
MAX_METADATA_STRING = 2000
INT32 = (-(2 ** 31), 2 ** 31 - 1)
REQUIRED = "This field is required."
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Invalid(Exception):
    """One field's messages (a list), or a nested structure for lists of objects."""

    def __init__(self, detail: Any) -> None:
        self.detail = detail if isinstance(detail, list | dict) else [detail]
        super().__init__(str(detail))


class Errors:
    """Collects DRF-shaped errors across fields, raised once at the end."""

    def __init__(self) -> None:
        self.by_field: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Invalid as exc:
            self.by_field[name] = exc.detail
            return None

    def add(self, name: str, message: str) -> None:
        self.by_field.setdefault(name, []).append(message)

    def raise_if_any(self) -> None:
        if self.by_field:
            raise ApiError(400, self.by_field)


def type_name(value: Any) -> str:
    return {dict: "dict", list: "list", str: "str", int: "int", float: "float", bool: "bool"}.get(
        type(value), type(value).__name__)


def clean_str(value: Any, *, allow_blank: bool = True, max_length: int | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid("Not a valid string.")
    text = str(value).strip()
    if not text and not allow_blank:
        raise Invalid("This field may not be blank.")
    if max_length is not None and len(text) > max_length:
        raise Invalid(f"Ensure this field has no more than {max_length} characters.")
    return text


def clean_int(value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise Invalid("A valid integer is required.")
    try:
        number = int(value) if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip(
            "-").isdigit()) else None
    except ValueError:
        number = None
    if number is None and isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None:
        raise Invalid("A valid integer is required.")
    if minimum is not None and number < minimum:
        raise Invalid(f"Ensure this value is greater than or equal to {minimum}.")
    return number


def clean_bool(value: Any) -> bool:
    if value in (True, "true", "True", 1, "1"):
        return True
    if value in (False, "false", "False", 0, "0"):
        return False
    raise Invalid("Must be a valid boolean.")


def clean_email(value: Any) -> str:
    text = clean_str(value)
    if text and not _EMAIL.match(text):
        raise Invalid("Enter a valid email address.")
    return text


def clean_fee(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Invalid("A valid number is required.")
    try:
        fee = Decimal(str(value).strip())
    except InvalidOperation:
        raise Invalid("A valid number is required.") from None
    if not fee.is_finite():
        raise Invalid("A valid number is required.")
    if fee < 0:
        raise Invalid("Ensure this value is greater than or equal to 0.")
    return str(fee.quantize(Decimal("0.01")))


def clean_datetime(value: Any, *, reject_naive: bool) -> str:
    """An ISO 8601 datetime, stored in UTC with `Z`."""
    message = ("Datetime has wrong format. Use one of these formats instead: "
               "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].")
    if not isinstance(value, str):
        raise Invalid(message)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Invalid(message) from None
    if parsed.tzinfo is None:
        if reject_naive:
            raise Invalid("Datetime has no UTC offset; send an explicit offset such as Z or -05:00.")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def clean_date(value: Any) -> str | None:
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise Invalid("Date has wrong format. Use one of these formats instead: YYYY-MM-DD.") from None


def clean_hyperlink(value: Any, kind: str, exists: Callable[[int], bool]) -> int:
    """DRF HyperlinkedRelatedField: the path must be /<kind>/<id>/ (host ignored), the object must exist."""
    if not isinstance(value, str):
        raise Invalid(f"Incorrect type. Expected URL string, received {type_name(value)}.")
    match = re.fullmatch(rf"/{re.escape(kind)}/(\d+)/", urlsplit(value).path)
    if match is None:
        raise Invalid("Invalid hyperlink - No URL match.")
    object_id = int(match.group(1))
    if not exists(object_id):
        raise Invalid("Invalid hyperlink - Object does not exist.")
    return object_id


def clean_metadata(value: Any) -> dict[str, Any]:
    """A flat object: <= 50 keys, keys <= 100 chars, values str (<= 2000) / 32-bit int / bool / null."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f'Expected a dictionary of items but got type "{type_name(value)}".')
    problems: list[str] = []
    if len(value) > MAX_METADATA_KEYS:
        problems.append(f"Ensure this field has no more than {MAX_METADATA_KEYS} keys.")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            problems.append(f"Key {key[:20]!r}... is longer than {MAX_METADATA_KEY} characters.")
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT32[0] <= item <= INT32[1]:
                problems.append(f"Value of {key[:40]!r} is not a 32-bit integer.")
        elif isinstance(item, str):
            if len(item) > MAX_METADATA_STRING:
                problems.append(f"Value of {key[:40]!r} is longer than {MAX_METADATA_STRING} characters.")
        else:
            problems.append(f"Value of {key[:40]!r} must be a string, an integer, a boolean or null, "
                            f"not {type_name(item)}.")
    if problems:
        raise Invalid(problems)
    return dict(value)
