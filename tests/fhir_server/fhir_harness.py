"""Test harness: the real EMR-side FHIR server (Node, @medplum/fhir-router) and uvicorn on port 0.

Both bind port 0 on loopback and report the port they got; both are waited on with deadlines.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import uvicorn

__all__ = ["SERVER_DIR", "NodeFHIRServer", "ensure_installed", "serve_app"]

SERVER_DIR = Path(__file__).resolve().parent


def ensure_installed() -> None:
    """`npm ci` when node_modules is missing (CI runs it beforehand; a fresh checkout may not)."""
    if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the FHIR test server needs Node.js 20.19+ and npm")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SERVER_DIR, check=True, timeout=600,
                   stdout=subprocess.DEVNULL)


class NodeFHIRServer:
    """`node server.mjs` on port 0; `base_url` once started. Closing stdin stops it."""

    def __init__(self, *, bearer: str | None = None, basic: str | None = None, start_timeout: float = 60.0):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_SERVER_")}
        if bearer:
            self.env["FHIR_SERVER_BEARER"] = bearer
        if basic:
            self.env["FHIR_SERVER_BASIC"] = basic
        self.start_timeout = start_timeout
        self.base_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in __exit__

    def __enter__(self) -> NodeFHIRServer:
        ensure_installed()
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: the FHIR test server needs Node.js 20.19+")
        self._proc = subprocess.Popen([node, "server.mjs", "--port", "0"], cwd=SERVER_DIR, env=self.env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        line = self._first_line()
        info = json.loads(line)
        self.base_url = f"http://127.0.0.1:{info['port']}{info['base']}"
        return self

    def _first_line(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._proc.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError(f"FHIR test server did not start: {self.stderr()[-2000:]}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                buf += chunk
        return buf.split(b"\n", 1)[0]

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
        self._stderr.close()


@asynccontextmanager
async def serve_app(app: Any, *, headers: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1:0 inside the current task group; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(15):
            # uvicorn exposes `started` as a bool, not an event: poll the condition under a deadline.
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
