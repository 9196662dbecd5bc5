"""Serve the sandbox with uvicorn inside the caller's anyio task group.

    port = await tg.start(functools.partial(serve_sandbox, host="127.0.0.1", port=0))

`task_status.started(port)` reports the bound port (useful with port 0); cancelling the task
stops the server (uvicorn's graceful shutdown, bounded by `graceful_seconds`).
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskStatus

from adapter.asgi import bind_socket, serve_asgi
from adapter.oncall.sandbox.app import create_sandbox_app
from adapter.oncall.sandbox.settings import DEFAULT_API_KEYS

__all__ = ["serve_sandbox"]


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
    await serve_asgi(app, sock=sock, lifespan="on", graceful_seconds=graceful_seconds,
                     handle_signals=handle_signals, task_status=task_status)
