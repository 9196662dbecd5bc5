"""`minutes_between`: the duration of an appointment from its start and end date-times."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.mapping.loader import default_dirs, load_mapping_set
from adapter.mapping.pipes import Pipe, PipeContext, PipeError, split_pipes

CTX = PipeContext(tables={}, tz=ZoneInfo("America/Toronto"))
BETWEEN = Pipe("minutes_between")


@given(start=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1)),
       minutes=st.integers(min_value=1, max_value=7 * 1440),
       start_offset=st.integers(min_value=-12 * 60, max_value=14 * 60),
       end_offset=st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_any_offsets_and_midnights(start: dt.datetime, minutes: int, start_offset: int,
                                   end_offset: int) -> None:
    """Property: start and end written in any offsets, across any midnight, give the minutes between."""
    begin = start.replace(second=0, microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=start_offset)))
    end = (begin + dt.timedelta(minutes=minutes)).astimezone(dt.timezone(dt.timedelta(minutes=end_offset)))
    assert BETWEEN.apply([begin.isoformat(), end.isoformat()], CTX) == str(minutes)


def test_hl7_local_times_use_the_site_time_zone() -> None:
    """HL7 DTMs without an offset are read in the site time zone (here across the spring DST change)."""
    assert BETWEEN.apply(["20260308013000", "20260308033000"], CTX) == "60"


def test_missing_end_is_empty_and_reversed_is_an_error() -> None:
    """No end: empty (an alternative or the required-field check decides); end before start: an error."""
    assert BETWEEN.apply(["2026-03-01T10:00:00Z"], CTX) == ""
    with pytest.raises(PipeError, match="ends before it starts"):
        BETWEEN.apply(["2026-03-01T10:00:00Z", "2026-03-01T09:00:00Z"], CTX)


def test_pipe_names_with_underscores_are_pipes_not_fhirpath_unions() -> None:
    """`start.combine(end) | minutes_between` splits into a path and the pipe."""
    assert split_pipes("start.combine(end) | minutes_between") == ("start.combine(end)", ["minutes_between"])


def test_fhir_appointment_across_midnight_gets_its_duration() -> None:
    """A FHIR Appointment without minutesDuration, ending after midnight in another offset."""
    resource = {"resourceType": "Appointment", "id": "a9", "status": "booked",
                "start": "2026-03-01T23:30:00-05:00", "end": "2026-03-02T05:15:00+00:00",
                "participant": [{"actor": {"reference": "Patient/p1", "display": "Jo Doe"},
                                 "status": "accepted"}]}
    result = load_mapping_set(default_dirs(None)).map("Appointment", json.dumps(resource), source="fhir")
    [op] = result.operations
    assert op.to_json()["duration"] == 45
