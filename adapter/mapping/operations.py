"""The closed, typed set of operations a mapping can produce.

Each kind is a pydantic model with a `kind` literal; `OPERATIONS` is the registry the loader checks
route targets against and `operation_from_dict` rebuilds an operation from its JSON. Other modules
add kinds (e.g. `emr_fhir_bundle` for the reverse path) with `@register_operation` in their own
module; the HL7/FHIR -> OnCall kinds live here.

Values are checked against the OnCall model before anything is sent: types, enums, URLs, the
1-25 participant rule and the metadata limits. The executor sends only fields that are not None.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "EXTENSION_MODULES",
    "OPERATIONS",
    "AppointmentCancel",
    "AppointmentParticipant",
    "AppointmentUpsert",
    "ContactUpsert",
    "Ignore",
    "Operation",
    "ParticipantCancel",
    "ParticipantUpdate",
    "PatientMerge",
    "load_extensions",
    "operation_from_dict",
    "register_operation",
]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def _email(value: str | None) -> str | None:
    if value is not None and not _EMAIL.match(value):
        raise ValueError("is not an e-mail address (expected name@domain.tld)")
    return value.lower() if value else value


def _url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+/\S*$", value):
        raise ValueError("is not an absolute http(s) URL (edit the site table: mappings/site.yaml)")
    return value


Email = Annotated[str | None, AfterValidator(_email)]
Url = Annotated[str | None, AfterValidator(_url)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str | None, Field(max_length=2000)]


class Operation(BaseModel):
    """Base of every operation: immutable, JSON-serialisable, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    # Short description for `mappings check` and the generated reference.
    summary: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The operation as plain JSON (None fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


OPERATIONS: dict[str, type[Operation]] = {}
_O = TypeVar("_O", bound=type[Operation])

# Modules that register further kinds; the loader imports them before compiling routes.
EXTENSION_MODULES: list[str] = ["adapter.reverse.operations"]


def load_extensions() -> None:
    """Import the modules of EXTENSION_MODULES (a missing module is skipped, a broken one raises)."""
    for name in EXTENSION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def register_operation(cls: _O) -> _O:
    """Add an operation kind to the registry (its `kind` field must be a one-value Literal)."""
    kind = cls.__pydantic_fields__["kind"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__}.kind needs a string default")
    if kind in OPERATIONS and OPERATIONS[kind] is not cls:
        raise TypeError(f"operation kind {kind!r} is already registered by {OPERATIONS[kind].__name__}")
    OPERATIONS[kind] = cls
    return cls


def operation_from_dict(data: dict[str, Any]) -> Operation:
    """Rebuild an operation from its JSON (`kind` picks the model)."""
    cls = OPERATIONS.get(str(data.get("kind")))
    if cls is None:
        known = ", ".join(sorted(OPERATIONS))
        raise ValueError(f"unknown operation kind {data.get('kind')!r}; known: {known}")
    return cls.model_validate(data)


@register_operation
class ContactUpsert(Operation):
    summary: ClassVar[str] = ("Create the roster contact for an EMR patient, or update the fields that "
                              "changed (looked up through the crosswalk, then by e-mail/name).")
    kind: Literal["contact_upsert"] = "contact_upsert"
    emr_patient_id: Id = Field(description="the crosswalk key (e.g. the MRN)")
    first_name: Annotated[str, Field(min_length=1, max_length=150)]
    last_name: Annotated[str, Field(min_length=1, max_length=150)]
    email: Email = None
    phone: Annotated[str | None, Field(max_length=40)] = None
    sex: Literal["male", "female", "Unknown"] | None = None
    date_of_birth: dt.date | None = None
    division: Url = None
    provider: Url = None
    notes: Text = None
    update_participants: bool = Field(
        False, description="also update this patient's participants in future appointments when the "
                           "name or e-mail changed (ADT A08/A31)")


class AppointmentParticipant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    emr_patient_id: Id
    name: Annotated[str | None, Field(max_length=300)] = None
    first_name: Annotated[str | None, Field(max_length=150)] = None
    last_name: Annotated[str | None, Field(max_length=150)] = None
    email: Email = None
    fee: Decimal | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _named(self) -> AppointmentParticipant:
        if not (self.name or self.first_name or self.last_name):
            raise ValueError("a participant needs a name (name, or first_name/last_name)")
        return self


MetadataValue = str | int | bool | None


@register_operation
class AppointmentUpsert(Operation):
    summary: ClassVar[str] = ("Create the appointment with its participants, or reschedule/modify the one "
                              "the crosswalk knows for this EMR appointment id.")
    kind: Literal["appointment_upsert"] = "appointment_upsert"
    emr_appointment_id: Id
    title: Annotated[str, Field(min_length=1, max_length=255)]
    type: Literal["online", "inperson", "phone", "message"]
    datetime: dt.datetime | None = Field(None, description="start, ISO 8601 with an explicit offset")
    duration: Annotated[int, Field(gt=0, le=24 * 60)] = Field(description="minutes")
    division: Annotated[str, AfterValidator(_url)]
    provider: Url = None
    participants: Annotated[list[AppointmentParticipant], Field(min_length=1, max_length=25)]
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("datetime")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("needs an explicit UTC offset (the datetime pipe adds the site time zone)")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        # OnCall's documented limits: flat, <= 50 keys, keys <= 100 chars, strings <= 2,000, 32-bit ints
        if len(value) > 50:
            raise ValueError("OnCall metadata holds at most 50 keys")
        for key, item in value.items():
            if len(key) > 100:
                raise ValueError(f"metadata key {key[:20]!r}... is longer than 100 characters")
            if isinstance(item, str) and len(item) > 2000:
                raise ValueError(f"metadata value of {key!r} is longer than 2,000 characters")
            if isinstance(item, int) and not isinstance(item, bool) and not -2**31 <= item < 2**31:
                raise ValueError(f"metadata value of {key!r} is not a 32-bit integer")
        return value

    @model_validator(mode="after")
    def _when(self) -> AppointmentUpsert:
        if self.datetime is None and self.type != "message":
            raise ValueError("datetime is required unless type is 'message'")
        ids = [p.emr_patient_id for p in self.participants]
        if len(ids) != len(set(ids)):
            raise ValueError("the same patient appears twice in participants")
        return self


@register_operation
class AppointmentCancel(Operation):
    summary: ClassVar[str] = "Cancel the appointment the crosswalk knows for this EMR appointment id."
    kind: Literal["appointment_cancel"] = "appointment_cancel"
    emr_appointment_id: Id
    reason: Text = None


@register_operation
class ParticipantUpdate(Operation):
    summary: ClassVar[str] = ("Update a participant's writable fields, in one appointment or in every "
                              "future appointment of the patient; only changed fields are sent.")
    kind: Literal["participant_update"] = "participant_update"
    scope: Literal["appointment", "future_appointments"] = "appointment"
    emr_appointment_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    emr_patient_id: Id
    name: Annotated[str | None, Field(max_length=300)] = None
    first_name: Annotated[str | None, Field(max_length=150)] = None
    last_name: Annotated[str | None, Field(max_length=150)] = None
    email: Email = None
    fee: Decimal | None = Field(None, ge=0)
    cancelled: bool | None = None

    @model_validator(mode="after")
    def _target(self) -> ParticipantUpdate:
        if self.scope == "appointment" and not self.emr_appointment_id:
            raise ValueError("emr_appointment_id is required when scope is 'appointment'")
        return self


@register_operation
class ParticipantCancel(Operation):
    summary: ClassVar[str] = "Cancel one patient's participation in an appointment (the others keep it)."
    kind: Literal["participant_cancel"] = "participant_cancel"
    emr_appointment_id: Id
    emr_patient_id: Id


@register_operation
class PatientMerge(Operation):
    summary: ClassVar[str] = ("Move the crosswalk entries of the merged EMR patient to the surviving one "
                              "(no OnCall call).")
    kind: Literal["patient_merge"] = "patient_merge"
    surviving_emr_patient_id: Id
    merged_emr_patient_id: Id

    @model_validator(mode="after")
    def _distinct(self) -> PatientMerge:
        if self.surviving_emr_patient_id == self.merged_emr_patient_id:
            raise ValueError("surviving and merged patient ids are the same")
        return self


@register_operation
class Ignore(Operation):
    summary: ClassVar[str] = "Do nothing, on purpose, and record why."
    kind: Literal["ignore"] = "ignore"
    reason: Annotated[str, Field(min_length=1, max_length=500)]
