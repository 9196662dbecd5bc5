"""The reverse operation kinds (OnCall -> EMR), registered in the mapping engine's registry.

A reverse mapping file (mappings/oncall/*.yaml) turns an OnCall appointment or roster contact into
one of these; the reverse executor turns them into a FHIR R4 transaction Bundle (`bundle.py`) or
HL7 v2 messages (`hl7_out.py`) and hands them to the configured EMR target. They hold plain
values only: no crosswalk lookups, no I/O, so `oncall-adapter map` shows what would be sent.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter.mapping.operations import Operation, register_operation

__all__ = ["APPOINTMENT_STATUSES", "EMRAppointmentUpsert", "EMRPatient", "EMRPatientUpsert", "Gender"]

# http://hl7.org/fhir/R4/valueset-appointmentstatus.html
APPOINTMENT_STATUSES = ("proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow",
                        "entered-in-error", "checked-in", "waitlist")
Gender = Literal["male", "female", "other", "unknown"]
_OnCallURL = Annotated[str, Field(pattern=r"^https?://[^\s/]+/\S*/\d+/?$", max_length=500)]
_Name = Annotated[str | None, Field(max_length=150)]
_FullName = Annotated[str | None, Field(max_length=300)]


class EMRPatient(BaseModel):
    """A person as the EMR receives it: an OnCall participant or roster contact."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    oncall_url: _OnCallURL = Field(description="the participant's or contact's OnCall URL (its identity)")
    first_name: _Name = None
    last_name: _Name = None
    name: _FullName = Field(None, description="full name, as OnCall shows it")
    email: Annotated[str | None, Field(max_length=254)] = None
    phone: Annotated[str | None, Field(max_length=40)] = None
    gender: Gender | None = None
    birth_date: dt.date | None = None
    emr_patient_id: Annotated[str | None, Field(max_length=200)] = Field(
        None, description="the EMR's own id when OnCall knows it (contact custom field 'EMR id')")
    participation_cancelled: bool = Field(False, description="this participant's place was cancelled")

    @model_validator(mode="after")
    def _named(self) -> EMRPatient:
        if not (self.first_name or self.last_name or self.name):
            raise ValueError("a patient needs a name (first_name/last_name, or name)")
        return self


@register_operation
class EMRPatientUpsert(Operation, EMRPatient):
    summary: ClassVar[str] = ("Create or update one Patient in the EMR (conditional update on the OnCall "
                              "identifier): a roster contact found new or changed by the contacts scrape.")
    kind: Literal["emr_patient_upsert"] = "emr_patient_upsert"

    def patient(self) -> EMRPatient:
        return EMRPatient.model_validate(self.model_dump(exclude={"kind"}))


@register_operation
class EMRAppointmentUpsert(Operation):
    summary: ClassVar[str] = ("Create or update one Appointment in the EMR with a Patient per participant, "
                              "in one transaction (conditional updates on the OnCall identifiers).")
    kind: Literal["emr_appointment_upsert"] = "emr_appointment_upsert"
    oncall_url: _OnCallURL
    status: Literal[APPOINTMENT_STATUSES]  # type: ignore[valid-type]
    start: dt.datetime | None = None
    end: dt.datetime | None = Field(None, description="default: start + minutes_duration")
    minutes_duration: Annotated[int | None, Field(gt=0, le=24 * 60)] = None
    description: Annotated[str | None, Field(max_length=2000)] = None
    appointment_type: Annotated[str | None, Field(max_length=40)] = Field(
        None, description="OnCall's type: online, inperson, phone, message")
    participants: Annotated[list[EMRPatient], Field(min_length=1, max_length=25)]

    @model_validator(mode="after")
    def _times(self) -> EMRAppointmentUpsert:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} needs an explicit UTC offset")
        if self.end is None and self.start is not None and self.minutes_duration:
            object.__setattr__(self, "end", self.start + dt.timedelta(minutes=self.minutes_duration))
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together (FHIR Appointment invariant app-2): give end or "
                             "minutes_duration with start")
        if self.start and self.end and self.end < self.start:
            raise ValueError("end is before start")
        urls = [p.oncall_url for p in self.participants]
        if len(urls) != len(set(urls)):
            raise ValueError("the same participant appears twice")
        return self
