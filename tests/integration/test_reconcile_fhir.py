"""The EMR side read by FHIR search from the real Node FHIR server: every Patient, and the Appointments
dated in the window, mapped by the shipped mapping files."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.fhir.emr_client import EMRFHIRClient
from adapter.mapping.loader import default_dirs, load_mapping_set
from adapter.reconcile.emr_data import FHIRSearchSource
from adapter.reconcile.model import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fhir_server"))
from fhir_harness import NodeFHIRServer

pytestmark = pytest.mark.anyio

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir" / "r4"
TOKEN = "reconcile-emr-token"


@pytest.fixture(scope="module")
def emr_server() -> Iterator[NodeFHIRServer]:
    with NodeFHIRServer(bearer=TOKEN) as server:
        yield server


def put(http: httpx.Client, resource: dict[str, Any]) -> None:
    response = http.put(f"{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


async def test_search_source_reads_patients_and_windowed_appointments(emr_server: NodeFHIRServer) -> None:
    """Three Patients (more than one page) are all read; of two booked Appointments only the one starting
    in the window is kept, with its start, duration and patient."""
    patient = json.loads((SAMPLES / "Patient.json").read_text())
    appointment = json.loads((SAMPLES / "Appointment.json").read_text())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=emr_server.base_url, headers=headers) as http:
        for index in range(3):
            put(http, {**patient, "id": f"rp-{index}", "meta": {}})
        put(http, {**appointment, "id": "ra-in", "meta": {}})
        put(http, {**appointment, "id": "ra-out", "meta": {}, "start": "2025-05-10T13:30:00-04:00",
                   "end": "2025-05-10T13:50:00-04:00"})
    window = Window(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC))
    async with EMRFHIRClient(emr_server.base_url, bearer_token=TOKEN) as client:
        source = FHIRSearchSource(client, load_mapping_set(default_dirs()), patient_params={"_count": "2"})
        data = await source.load(window)
    assert sorted(p.id for p in data.patients) == ["rp-0", "rp-1", "rp-2"]
    assert data.patients[0].values["last_name"] == "Tremblay"
    assert [(a.id, a.duration, a.start) for a in data.appointments] == [
        ("ra-in", 20, datetime(2024, 5, 10, 17, 30, tzinfo=UTC))]
    assert data.problems == []
