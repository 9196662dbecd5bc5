"""Serve an ASGI app with uvicorn inside an anyio task group, on a socket we bind ourselves.

Binding first means the port is known (port 0 in tests) and reported through `task_status`
before anyone connects, and readiness can say "listening" truthfully. uvicorn's own signal
handling is switched off: the composition root owns SIGINT/SIGTERM for the whole process.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

__all__ = ["bind_socket", "serve_asgi"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield   # the process's signal handling belongs to the composition root


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_asgi(app: Any, *, host: str, port: int,
                     task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run until cancelled; reports the bound port once listening."""
    sock = bind_socket(host, port)
    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=5))
    bound = sock.getsockname()[1]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            while not server.started:
                await anyio.sleep(0.005)
            task_status.started(bound)
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
    finally:
        sock.close()
