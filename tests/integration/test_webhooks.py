"""The OnCall webhook route over real HTTP: the sandbox fires real webhooks at the adapter's HTTP
app (uvicorn on port 0) backed by a real store (SQLite file and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from adapter.envelope import Source, State
from adapter.store.base import Store
from listeners.http import build_http_app
from listeners.webhooks import webhook_routes
from tests.fhir_server.fhir_harness import serve_app
from tests.integration.oncall_fixtures import SandboxHandle, make_oncall_sandbox  # noqa: F401 - fixture

pytestmark = pytest.mark.anyio
SECRET = "s3cret-webhook-key"
HEADER = "X-OnCall-Webhook-Secret"


async def _ready() -> dict[str, bool]:
    return {"store": True}


@asynccontextmanager
async def adapter_app(store: Store, **options: Any) -> AsyncIterator[tuple[str, list[int]]]:
    """The adapter's HTTP app with the webhook routes; yields its URL and a list of wake-ups."""
    woken: list[int] = []
    routes = webhook_routes(store=store, secret=SECRET, secret_header=HEADER,
                            on_stored=lambda: woken.append(1), **options)
    async with serve_app(build_http_app(store, readiness=_ready, routes=routes)) as url:
        yield url, woken


async def _webhook_envelopes(store: Store, deadline: float = 10.0, count: int = 1) -> list[Any]:
    with anyio.fail_after(deadline):
        while True:
            found = await store.list(source=Source.ONCALL_WEBHOOK.value, newest_first=False)
            if len(found) >= count:
                return found
            await anyio.sleep(0.02)   # polling a condition under a deadline


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={HEADER: SECRET, "Content-Type": "application/json"})


def _appointment(base: str) -> dict[str, Any]:
    return {"title": "Follow-up", "type": "online", "datetime": "2026-03-02T14:00:00Z", "duration": 30,
            "division": f"{base}/divisions/1/",
            "participants": [{"first_name": "Ana", "last_name": "Lima", "name": "Ana Lima",
                              "email": "ana@example.org"}]}


async def test_sandbox_webhooks_are_stored_in_order_before_the_2xx(
        store: Store, make_oncall_sandbox: Callable[..., SandboxHandle]) -> None:  # noqa: F811
    """Create and then change an appointment inside OnCall: both webhooks (documented URL style: other
    host, no trailing slash) are stored under the appointment's ordering key, in order, and the
    sandbox records each delivery as acknowledged."""
    async with adapter_app(store) as (url, woken):
        sandbox = make_oncall_sandbox(webhook_url=f"{url}/oncall/webhooks",
                                      webhook_secret_header=f"{HEADER}: {SECRET}",
                                      webhook_url_style="documented")
        with sandbox.api() as api:
            created = (await anyio.to_thread.run_sync(
                lambda: api.post("/appointments/", json=_appointment(sandbox.base_url)))).json()
        appointment_id = int(created["url"].rstrip("/").rsplit("/", 1)[1])
        await anyio.to_thread.run_sync(lambda: sandbox.change(appointment_id, title="Moved"))
        stored = await _webhook_envelopes(store, count=2)
    assert [e.kind for e in stored] == ["appointment_created", "appointment_updated"]
    assert {e.ordering_key for e in stored} == {f"oncall_appointment:{appointment_id}"}
    assert all(e.state is State.QUEUED for e in stored)
    assert json.loads(stored[0].payload)["url"] == f"https://api.oncallhealth.com/appointments/{appointment_id}"
    assert len(woken) == 2
    deliveries = await anyio.to_thread.run_sync(sandbox.webhooks)
    assert [d["status"] for d in deliveries] == ["delivered", "delivered"]


async def test_secret_is_required_in_header_or_path(store: Store) -> None:
    """No secret or a wrong one: 401 and nothing stored; the secret as last path segment works."""
    body = {"event": "appointment_updated", "url": "https://api.oncallhealth.ca/appointments/5/"}
    async with adapter_app(store) as (url, _), httpx.AsyncClient(base_url=url) as http:
        missing = await http.post("/oncall/webhooks", json=body)
        wrong = await http.post("/oncall/webhooks", json=body, headers={HEADER: SECRET + "x"})
        wrong_path = await http.post("/oncall/webhooks/not-the-secret", json=body)
        assert await store.list(source=Source.ONCALL_WEBHOOK.value) == []
        by_path = await http.post(f"/oncall/webhooks/{SECRET}", json=body)
    assert [missing.status_code, wrong.status_code, wrong_path.status_code] == [401, 401, 401]
    assert by_path.status_code == 200 and by_path.json()["status"] == "stored"
    assert [e.ordering_key for e in await store.list(source=Source.ONCALL_WEBHOOK.value)] == [
        "oncall_appointment:5"]


async def test_duplicate_deliveries_are_each_stored(store: Store) -> None:
    """The same body twice is two envelopes: webhooks carry no delivery id, so duplicates are made
    harmless when applied (the worker compares what it would send), never guessed at the edge."""
    body = {"event": "appointment_updated", "url": "https://api.oncallhealth.ca/appointments/6"}
    async with adapter_app(store) as (url, _), _client(url) as http:
        first = await http.post("/oncall/webhooks", json=body)
        second = await http.post("/oncall/webhooks", json=body)
    assert first.json()["envelope_id"] != second.json()["envelope_id"]
    assert len(await store.list(source=Source.ONCALL_WEBHOOK.value)) == 2


async def test_unknown_event_acknowledged_and_kept_rejected(store: Store) -> None:
    """An unknown event gets a 200 (OnCall must not retry it) and is kept REJECTED, never queued."""
    body = {"event": "appointment_deleted", "url": "https://api.oncallhealth.ca/appointments/7/"}
    async with adapter_app(store) as (url, _), _client(url) as http:
        answer = await http.post("/oncall/webhooks", json=body)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    [kept] = await store.list(source=Source.ONCALL_WEBHOOK.value)
    assert kept.state is State.REJECTED and "unknown OnCall webhook event" in (kept.reason or "")


@pytest.mark.parametrize(("body", "where"), [
    (b"not json", "not JSON"),
    (b"[]", "$ is not a JSON object"),
    (b'{"url": "https://api.oncallhealth.ca/appointments/1/"}', "$.event"),
    (b'{"event": "appointment_updated"}', "$.url"),
    (b'{"event": "appointment_updated", "url": "https://x.example/contacts/1/"}', "appointment URL"),
])
async def test_unusable_bodies_are_400_naming_the_json_path(store: Store, body: bytes, where: str) -> None:
    """Bodies that cannot be used are refused with a 400 that says where; nothing is stored."""
    async with adapter_app(store) as (url, _), _client(url) as http:
        answer = await http.post("/oncall/webhooks", content=body)
    assert answer.status_code == 400
    assert where in answer.json()["message"]
    assert await store.list(source=Source.ONCALL_WEBHOOK.value) == []


def test_an_empty_secret_is_refused_at_start_up() -> None:
    """The route is never served unprotected: an empty secret is a configuration error."""
    from adapter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"webhooks\.secret"):
        webhook_routes(store=None, secret="")  # type: ignore[arg-type]
