"""Fixtures for the OnCall client and sandbox tests: real uvicorn servers on 127.0.0.1, port 0.

- `serve_in_thread(app)`: any ASGI app served by uvicorn in a background thread (its own event
  loop), yielding its base URL; stops it gracefully on exit.
- `make_oncall_sandbox(**opts)`: a fresh in-memory sandbox (options of `create_sandbox_app`),
  as a `SandboxHandle` with a synchronous control client; `oncall_sandbox` is one with page size 2.
- `webhook_receiver`: a real HTTP server recording the webhooks it receives, which can fail its
  first answers or hold them until released.
- `oncall_client`: an `OnCallClient` on `oncall_sandbox` (provider key, no GET retries).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from adapter.asgi import bind_socket
from adapter.oncall.client import OnCallClient
from adapter.oncall.sandbox import create_sandbox_app

__all__ = [
    "COORDINATOR_TOKEN",
    "TOKEN",
    "SandboxHandle",
    "WebhookReceiver",
    "make_oncall_sandbox",
    "oncall_client",
    "oncall_sandbox",
    "serve_in_thread",
    "webhook_receiver",
]

TOKEN = "sandbox-token"
COORDINATOR_TOKEN = "sandbox-coordinator-token"
DEADLINE = 10.0


class _ThreadServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


@contextmanager
def serve_in_thread(app: ASGIApp) -> Iterator[str]:
    """Serve `app` on 127.0.0.1, port 0, in a thread; yields "http://127.0.0.1:PORT"."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11",
                            timeout_graceful_shutdown=2)
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(DEADLINE) and server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@dataclass
class SandboxHandle:
    base_url: str
    control: httpx.Client

    def api(self, token: str = TOKEN) -> httpx.Client:
        """A raw HTTP client on the sandbox API with a key (close it, or use `with`)."""
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Token {token}"})

    def state(self) -> dict[str, Any]:
        response = self.control.get("/__sandbox__/state")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def emails(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.control.get("/__sandbox__/emails").raise_for_status().json()
        return data

    def webhooks(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.control.get("/__sandbox__/webhooks").raise_for_status().json()
        return data

    def faults(self, *rules: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        response = self.control.post("/__sandbox__/faults", json={"rules": list(rules), "seed": seed})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def clear_faults(self) -> None:
        self.control.delete("/__sandbox__/faults").raise_for_status()

    def config(self, **changes: Any) -> dict[str, Any]:
        response = self.control.post("/__sandbox__/config", json=changes)
        data: dict[str, Any] = response.raise_for_status().json()
        return data

    def seed(self, **body: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.control.post("/__sandbox__/seed", json=body).raise_for_status().json()
        return data

    def change(self, appointment_id: int, **fields: Any) -> dict[str, Any]:
        response = self.control.post(f"/__sandbox__/appointments/{appointment_id}/change", json=fields)
        data: dict[str, Any] = response.raise_for_status().json()
        return data

    def reset(self) -> None:
        self.control.post("/__sandbox__/reset").raise_for_status()


@contextmanager
def running_sandbox(**opts: Any) -> Iterator[SandboxHandle]:
    opts.setdefault("webhook_retry_delays", (0.05, 0.1, 0.2))
    with serve_in_thread(create_sandbox_app(**opts)) as base, httpx.Client(base_url=base) as control:
        yield SandboxHandle(base, control)


@pytest.fixture
def make_oncall_sandbox() -> Iterator[Callable[..., SandboxHandle]]:
    """A factory of sandboxes with options (create_sandbox_app keywords); all stopped after the test."""
    stack: list[Any] = []

    def make(**opts: Any) -> SandboxHandle:
        manager = running_sandbox(**opts)
        handle = manager.__enter__()
        stack.append(manager)
        return handle

    try:
        yield make
    finally:
        for manager in reversed(stack):
            manager.__exit__(None, None, None)


@pytest.fixture
def oncall_sandbox(make_oncall_sandbox: Callable[..., SandboxHandle]) -> SandboxHandle:
    """An in-memory sandbox with page size 2, so lists span several pages."""
    return make_oncall_sandbox(page_size=2)


@pytest.fixture
async def oncall_client(oncall_sandbox: SandboxHandle) -> AsyncIterator[OnCallClient]:
    async with OnCallClient(api_key=TOKEN, base_url=oncall_sandbox.base_url, get_retries=0, seed=1,
                            timeout=5.0) as client:
        yield client


@dataclass
class WebhookReceiver:
    """Records POSTed webhooks; `fail_first` answers 500 that many times; `hold` delays answers."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_first: int = 0
    hold: threading.Event | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[dict[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"expected {count} webhooks, got {len(self.received)}: {self.received}")
            return list(self.received)

    async def endpoint(self, request: Request) -> Response:
        body = await request.json()
        if self.hold is not None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.hold.wait, DEADLINE)
        with self._cond:
            if self.fail_first > 0:
                self.fail_first -= 1
                return JSONResponse({"error": "receiver failing on purpose"}, status_code=500)
            self.received.append(body)
            self.headers.append(dict(request.headers))
            self._cond.notify_all()
        return JSONResponse({"ok": True})


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = Starlette(routes=[Route("/hooks/oncall", receiver.endpoint, methods=["POST"])])
    with serve_in_thread(app) as base:
        receiver.url = f"{base}/hooks/oncall"
        yield receiver
        if receiver.hold is not None:
            receiver.hold.set()
