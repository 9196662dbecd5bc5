"""Typed views of OnCall objects (pydantic v2).

Unknown fields are kept (``extra="allow"``): the API is only partly documented and the reverse
mappings may read fields this module does not name. Relations stay URLs, as the API gives them;
``.id`` properties parse the numeric id from ``url``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from adapter.oncall.urls import object_id

__all__ = [
    "Appointment",
    "Contact",
    "Division",
    "Fee",
    "OnCallModel",
    "Page",
    "Participant",
    "Provider",
    "parse_fee",
]


def parse_fee(value: Any) -> Decimal | None:
    """A fee from the documented number (``10``, ``10.0``) or the internal API's string (``"10.00"``)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a fee is a number or a decimal string, not a boolean")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))   # repr: 10.1 -> Decimal("10.1"), not the binary expansion
    if isinstance(value, str):
        try:
            fee = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"fee {value!r} is not a decimal number") from None
        if not fee.is_finite():
            raise ValueError(f"fee {value!r} is not a finite number")
        return fee
    raise ValueError(f"a fee is a number or a decimal string, not {type(value).__name__}")


Fee = Annotated[Decimal | None, BeforeValidator(parse_fee)]


class OnCallModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Hyperlinked(OnCallModel):
    url: str

    @property
    def id(self) -> int:
        return object_id(self.url)


class Participant(OnCallModel):
    url: str | None = None           # absent only on a participant about to be added
    appointment: str | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    fee: Fee = None
    cancelled: bool = False
    user_id: int | None = None       # set once the person has an OnCall account
    answers: Any = None

    @property
    def id(self) -> int | None:
        return object_id(self.url) if self.url else None


class Appointment(_Hyperlinked):
    title: str | None = None
    type: str | None = None          # online, inperson, phone, message
    datetime: dt.datetime | None = None
    duration: int | None = None      # minutes
    division: str | None = None
    provider: str | None = None
    participants: list[Participant] = Field(default_factory=list)
    metadata: dict[str, str | int | bool | None] | None = None
    status: str | None = None
    cancelled: bool = False


class Contact(OnCallModel):
    url: str
    # `id` is a real field on contacts (the API sends it); fall back on the URL when absent.
    id: int | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    sex: str | None = None
    date_of_birth: dt.date | None = None
    notes: str | None = None
    provider: str | None = None
    division: str | None = None
    appointments: str | None = None  # URL of /contacts/{id}/appointments/
    custom_field_names: dict[str, str] = Field(default_factory=dict)
    custom_field_values: dict[str, str | bool | None] = Field(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        if self.id is None:
            self.id = object_id(self.url)

    def custom_value(self, label: str) -> str | bool | None:
        """The value of the custom field labelled `label` (e.g. "EMR id"), None when unset."""
        for field_id, name in self.custom_field_names.items():
            if name == label:
                return self.custom_field_values.get(field_id)
        return None


class Provider(_Hyperlinked):
    full_name: str | None = None
    email: str | None = None
    memberships: list[Any] = Field(default_factory=list)


class Division(_Hyperlinked):
    name: str | None = None


T = TypeVar("T", bound=OnCallModel)


class Page(OnCallModel, Generic[T]):
    count: int
    next: str | None = None
    previous: str | None = None
    results: list[T]
