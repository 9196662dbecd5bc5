"""The FHIR target: POST the transaction Bundle to the EMR's FHIR base and read back the EMR ids.

Every entry is a conditional update, so the whole transaction is idempotent: when no answer came
back (the EMR client's OutcomeUnknownError) it is simply sent again, as a plain TransientError.
"""

from __future__ import annotations

from adapter.errors import OutcomeUnknownError, TransientError
from adapter.fhir.emr_client import EMRFHIRClient
from adapter.reverse.bundle import response_locations
from adapter.reverse.targets import Delivery, DeliveryResult

__all__ = ["FHIRTarget"]


class FHIRTarget:
    name = "fhir"

    def __init__(self, client: EMRFHIRClient) -> None:
        self.client = client

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        try:
            response = await self.client.transaction(delivery.bundle)
        except OutcomeUnknownError as exc:
            # Conditional PUTs only: applying the Bundle twice leaves the EMR as applying it once.
            raise TransientError(str(exc.message), status=exc.status,
                                 hint="the transaction is idempotent; it will be sent again") from None
        by_full_url = delivery.oncall_urls()
        answered = response_locations(delivery.bundle, response)
        locations = {by_full_url[full]: ref for full, ref in answered.items() if full in by_full_url}
        return DeliveryResult("fhir", locations, receipt=str(len(locations)))

    async def aclose(self) -> None:
        await self.client.aclose()
