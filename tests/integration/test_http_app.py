"""The HTTP shell over real HTTP: health, readiness, metrics, and the error table (an input error
is a 4xx that says what; anything unexpected is a 500 that echoes nothing of the request)."""

from __future__ import annotations

from functools import partial

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapter.asgi import serve_asgi
from adapter.errors import HL7InputError
from adapter.store.base import Store
from listeners.http import build_http_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _boom(request: Request) -> Response:
    raise ValueError(f"secret patient detail {await request.body()!r}")


async def _bad_input(request: Request) -> Response:
    raise HL7InputError("PID-3 is empty", location="PID^1^3", hint="send the MRN in PID-3")


async def test_health_ready_metrics_and_errors(store: Store) -> None:
    """/healthz 200; /readyz 503 naming the failing check; /metrics is Prometheus text; an InputError
    is a 400 naming where; an unexpected error is a 500 without the request's content."""
    ready = {"store": True, "mllp": False}

    async def readiness() -> dict[str, bool]:
        return dict(ready)

    app = build_http_app(store, readiness=readiness,
                         routes=[Route("/boom", _boom, methods=["POST"]), Route("/bad", _bad_input)])
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_asgi, app, host="127.0.0.1", port=0))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json() == {"ready": False, "checks": {"store": True, "mllp": False}}
            ready["mllp"] = True
            assert (await http.get("/readyz")).status_code == 200
            metrics = await http.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "oncall_adapter_queue_depth" in metrics.text
            bad = await http.get("/bad")
            assert bad.status_code == 400
            assert "PID^1^3: PID-3 is empty" in bad.json()["message"]
            boom = await http.post("/boom", content=b"Zanzibar Quuxley")
            assert boom.status_code == 500
            assert "Zanzibar" not in boom.text and "secret" not in boom.text
        tg.cancel_scope.cancel()
