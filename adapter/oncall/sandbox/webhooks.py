"""Webhook delivery: `{"event": ..., "url": ...}` POSTed from a background task, after the response.

Deliveries are queued in order and sent one at a time (so `appointment_created` reaches the
receiver before the `appointment_updated` that follows it), retried on failure after each of
`webhook_retry_delays`, and recorded in the `webhook_deliveries` table for the control API.
A slow or dead receiver never delays an API response.
"""

from __future__ import annotations

import math

import anyio
import httpx
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from adapter.oncall.sandbox.db import SandboxDB, now_iso
from adapter.oncall.sandbox.settings import SandboxSettings

__all__ = ["WebhookDispatcher"]

log = structlog.get_logger(__name__)


class WebhookDispatcher:
    def __init__(self, db: SandboxDB, settings: SandboxSettings) -> None:
        self.db = db
        self.settings = settings
        self._send: MemoryObjectSendStream[int]
        self._receive: MemoryObjectReceiveStream[int]
        self._send, self._receive = anyio.create_memory_object_stream[int](math.inf)

    def webhook_body_url(self, base: str, appointment_id: int) -> str:
        if self.settings.webhook_url_style == "documented":
            return f"https://api.oncallhealth.com/appointments/{appointment_id}"
        return f"{base.rstrip('/')}/appointments/{appointment_id}/"

    def enqueue(self, event: str, base: str, appointment_id: int) -> None:
        """Record a delivery and hand it to the background task (never blocks)."""
        target = self.settings.webhook_url
        if not target:
            return
        delivery_id = self.db.insert("webhook_deliveries", event=event, target=target,
                                     url=self.webhook_body_url(base, appointment_id), status="pending",
                                     updated_at=now_iso())
        try:
            self._send.send_nowait(delivery_id)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.db.update("webhook_deliveries", delivery_id, status="dropped", updated_at=now_iso())

    async def run(self) -> None:
        """Deliver queued webhooks until `close()`; run inside the app's lifespan task group."""
        http = httpx.AsyncClient(timeout=self.settings.webhook_timeout, follow_redirects=False)
        async with http, self._receive:
            async for delivery_id in self._receive:
                try:
                    await self._deliver(http, delivery_id)
                except Exception as exc:   # one bad delivery must not stop the others
                    log.error("sandbox_webhook_error", delivery=delivery_id, error=type(exc).__name__)

    def close(self) -> None:
        """Stop accepting; `run` returns once what was queued has been tried."""
        self._send.close()

    async def _deliver(self, http: httpx.AsyncClient, delivery_id: int) -> None:
        row = self.db.get("webhook_deliveries", delivery_id)
        if row is None:     # the sandbox was reset meanwhile
            return
        headers = {}
        if self.settings.webhook_secret_header and ":" in self.settings.webhook_secret_header:
            name, value = self.settings.webhook_secret_header.split(":", 1)
            headers[name.strip()] = value.strip()
        delays = (0.0, *self.settings.webhook_retry_delays)
        error = ""
        for attempt, delay in enumerate(delays, start=1):
            if delay:
                await anyio.sleep(delay)   # retry backoff, not synchronisation
            try:
                response = await http.post(row["target"], json={"event": row["event"], "url": row["url"]},
                                           headers=headers)
                if response.status_code < 300:
                    self.db.update("webhook_deliveries", delivery_id, status="delivered", attempts=attempt,
                                   last_error=None, updated_at=now_iso())
                    log.debug("sandbox_webhook_delivered", delivery=delivery_id, webhook_event=row["event"],
                              attempts=attempt)
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            self.db.update("webhook_deliveries", delivery_id, status="retrying", attempts=attempt,
                           last_error=error, updated_at=now_iso())
        self.db.update("webhook_deliveries", delivery_id, status="failed", last_error=error,
                       updated_at=now_iso())
        log.warning("sandbox_webhook_failed", delivery=delivery_id, webhook_event=row["event"], error=error)
