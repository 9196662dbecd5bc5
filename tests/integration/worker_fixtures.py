"""Fixtures for the delivery tests: the OnCall sandbox served by uvicorn on port 0, a client on it,
and helpers to read the sandbox's state and wait on conditions with a deadline."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from adapter.oncall.client import OnCallClient
from adapter.oncall.sandbox import create_sandbox_app

__all__ = ["Sandbox", "client", "sandbox", "wait_for"]

TOKEN = "sandbox-token"


@dataclass
class Sandbox:
    base_url: str
    control: httpx.AsyncClient

    async def state(self) -> dict[str, Any]:
        response = await self.control.get("/__sandbox__/state")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def faults(self, rules: list[dict[str, Any]], seed: int = 0) -> None:
        response = await self.control.post("/__sandbox__/faults", json={"rules": rules, "seed": seed})
        response.raise_for_status()

    async def clear_faults(self) -> None:
        (await self.control.delete("/__sandbox__/faults")).raise_for_status()

    async def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.control.post("/__sandbox__/seed", json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


async def wait_for(condition: Callable[[], Awaitable[bool]], *, deadline: float = 20.0,
                   what: str = "condition") -> None:
    """Re-check `condition` until it holds; fail after `deadline` seconds."""
    with anyio.fail_after(deadline):
        while not await condition():  # noqa: ASYNC110 - the condition lives in another process or store
            await anyio.sleep(0.02)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """The OnCall sandbox on 127.0.0.1, port 0, in-memory, page size 2 (paging is exercised)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_sandbox_app(page_size=2)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    base = f"http://127.0.0.1:{port}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
                await anyio.sleep(0.01)
        async with httpx.AsyncClient(base_url=base) as control:
            yield Sandbox(base, control)
        server.should_exit = True
    sock.close()


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[OnCallClient]:
    async with OnCallClient(api_key=TOKEN, base_url=sandbox.base_url, max_in_flight=8, seed=1,
                            read_timeout=5.0) as oncall:
        yield oncall
