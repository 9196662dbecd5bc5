"""Serve an ASGI app with uvicorn inside an anyio task group, on a socket we bind ourselves.

Binding first means the port is known (port 0 in tests) and reported through `task_status`
before anyone connects, so readiness can say "listening" truthfully. Signals are left to the
host process (the composition root owns SIGINT/SIGTERM) unless `handle_signals` is set, as for a
standalone command. Cancelling the task shuts uvicorn down gracefully: the lifespan shutdown
runs instead of being cut off mid-request.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any, Literal

import anyio
import uvicorn
from anyio.abc import TaskStatus

__all__ = ["bind_socket", "serve_asgi"]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


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


async def serve_asgi(app: Any, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None,
                     lifespan: Literal["auto", "on", "off"] = "off", graceful_seconds: float = 5.0,
                     handle_signals: bool = False,
                     task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled (or, with `handle_signals`, until SIGINT/SIGTERM); reports the bound port."""
    sock = sock or bind_socket(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan, ws="none",
                            timeout_graceful_shutdown=max(1, int(graceful_seconds)))
    server = _Server(config, handle_signals=handle_signals)
    done = anyio.Event()

    async def run_server() -> None:
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
