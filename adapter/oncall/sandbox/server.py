"""Serve the sandbox with uvicorn inside the caller's anyio task group.

    port = await tg.start(functools.partial(serve_sandbox, host="127.0.0.1", port=0))

`task_status.started(port)` reports the bound port (useful with port 0); cancelling the task
stops the server (uvicorn's graceful shutdown, bounded by `graceful_seconds`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from adapter.oncall.sandbox.app import create_sandbox_app
from adapter.oncall.sandbox.settings import DEFAULT_API_KEYS

__all__ = ["bind_socket", "serve_sandbox"]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


async def serve_sandbox(host: str = "127.0.0.1", port: int = 8900, *, token: str | None = None,
                        coordinator_token: str | None = None, graceful_seconds: float = 3.0,
                        handle_signals: bool = False,
                        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED, **opts: Any) -> None:
    """Run the sandbox until cancelled. `token` / `coordinator_token` replace the default keys;
    other keyword options go to `create_sandbox_app` (db_path, page_size, webhook_url, base_url ...).
    `handle_signals`: let uvicorn stop on SIGINT/SIGTERM (the standalone command); otherwise
    signals are left to the host and the sandbox stops when its task is cancelled.
    """
    if token or coordinator_token:
        keys: dict[str, int | None] = {token or "sandbox-token": 1,
                                        coordinator_token or "sandbox-coordinator-token": None}
        opts.setdefault("api_keys", keys)
    else:
        opts.setdefault("api_keys", dict(DEFAULT_API_KEYS))
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    if not opts.get("base_url"):
        shown = f"[{host}]" if ":" in host else host
        opts["base_url"] = f"http://{shown}:{bound}"
    app = create_sandbox_app(**opts)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none",
                            timeout_graceful_shutdown=max(1, int(graceful_seconds)))
    server = _Server(config, handle_signals=handle_signals)

    done = anyio.Event()

    async def run_server() -> None:
        # Shielded: on cancellation uvicorn is told to exit and shuts down gracefully (lifespan
        # shutdown: webhooks drained, database closed) instead of being cut off mid-request.
        try:
            with anyio.CancelScope(shield=True):
                await server.serve([sock])
        finally:
            server.ready.set()
            done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_server)
            try:
                with anyio.fail_after(30):
                    await server.ready.wait()
                if server.started:
                    task_status.started(bound)
                await done.wait()    # uvicorn exits on its own only on a signal (handle_signals)
            finally:
                server.should_exit = True
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn with a start event; signals left to the host unless `handle_signals`."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self.ready = anyio.Event()          # set once startup ended (check `started` for success)
        self._handle_signals = handle_signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield
