"""Fault injection, an ASGI layer in front of the sandbox API (the control API is never faulted).

A rule matches requests by path pattern (fnmatch, e.g. ``/appointments/*``) and method (``*``
for any), and says what to inject:

    rate_429 (+ retry_after seconds, or retry_after_date: true for an HTTP-date)
    rate_500, rate_502, rate_503, rate_504     error pages as real proxies and Django send them
    drop_rate (+ drop_after_processing)        close the connection without an answer, before the
                                               request is applied, or after (the create happened)
    latency_ms (+ latency_after_processing)    a slow answer
    fee_as_string                              participant fees as "10.00" (the internal API's shape)
    error_shape                                "detail" | "error" | "list" | "html" | "empty": real
                                               4xx bodies re-shaped as OnCall's other code paths send them
    times                                      stop injecting status/drop faults after this many

One seeded random draw per matching request decides among the rates, so a sequence of faults
is reproducible for a given seed and request order.
"""

from __future__ import annotations

import fnmatch
import json
import random
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FaultInjector", "FaultRule", "drop_connection"]

_ERROR_PAGES: dict[int, tuple[str, bytes]] = {
    500: ("text/html", b"<!doctype html><html lang=\"en\"><head><title>Server Error (500)</title></head>"
                       b"<body><h1>Server Error (500)</h1><p></p></body></html>"),
    502: ("text/html", b"<html><head><title>502 Bad Gateway</title></head><body><center>"
                       b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"),
    503: ("text/html", b""),
    504: ("text/html", b"<html><head><title>504 Gateway Time-out</title></head><body><center>"
                       b"<h1>504 Gateway Time-out</h1></center></body></html>"),
}


@dataclass
class FaultRule:
    path: str = "*"
    method: str = "*"
    rate_429: float = 0.0
    retry_after: int = 1
    retry_after_date: bool = False
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_504: float = 0.0
    drop_rate: float = 0.0
    drop_after_processing: bool = False
    latency_ms: int = 0
    latency_after_processing: bool = False
    fee_as_string: bool = False
    error_shape: str | None = None
    times: int | None = None
    injected: int = 0            # how many status/drop faults this rule has injected

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        known = {f.name for f in fields(cls)} - {"injected"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault rule keys: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        if data.get("error_shape") not in (None, "detail", "error", "list", "html", "empty"):
            raise ValueError("error_shape must be one of detail, error, list, html, empty")
        return cls(**data)

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and fnmatch.fnmatchcase(path, self.path)


class FaultInjector:
    def __init__(self, seed: int = 0) -> None:
        self.rules: list[FaultRule] = []
        self.seed = seed
        self._rng = random.Random(seed)

    def configure(self, rules: list[FaultRule], seed: int) -> None:
        self.rules = rules
        self.seed = seed
        self._rng = random.Random(seed)

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "rules": [asdict(r) for r in self.rules]}

    def match(self, method: str, path: str) -> FaultRule | None:
        return next((r for r in self.rules if r.matches(method, path)), None)

    def draw(self, rule: FaultRule) -> int | str | None:
        """The fault for one request: an HTTP status, "drop", or None."""
        roll = self._rng.random()
        if rule.times is not None and rule.injected >= rule.times:
            return None
        edge = 0.0
        for outcome, rate in ((429, rule.rate_429), (500, rule.rate_500), (502, rule.rate_502),
                              (503, rule.rate_503), (504, rule.rate_504), ("drop", rule.drop_rate)):
            edge += rate
            if roll < edge:
                rule.injected += 1
                return outcome
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/__sandbox__"):
            await app(scope, receive, send)
            return
        rule = self.match(scope["method"], scope["path"])
        if rule is None:
            await app(scope, receive, send)
            return
        outcome = self.draw(rule)
        if rule.latency_ms and not rule.latency_after_processing:
            await anyio.sleep(rule.latency_ms / 1000)
        if outcome == "drop" and not rule.drop_after_processing:
            await drop_connection(send)
            return
        if isinstance(outcome, int):
            await _send_error(send, outcome, rule)
            return
        buffered = (outcome == "drop" or rule.fee_as_string or rule.error_shape
                    or (rule.latency_ms and rule.latency_after_processing))
        if not buffered:
            await app(scope, receive, send)
            return
        status, headers, body = await _run_buffered(app, scope, receive)
        if rule.latency_ms and rule.latency_after_processing:
            await anyio.sleep(rule.latency_ms / 1000)
        if outcome == "drop":
            await drop_connection(send)
            return
        body = _transform(status, headers, body, rule)
        headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
        ctype = b"application/json" if body[:1] in (b"{", b"[") else b"text/html; charset=utf-8"
        headers += [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _run_buffered(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return int(start.get("status", 500)), list(start.get("headers", [])), b"".join(chunks)


def _messages(data: Any) -> list[str]:
    if isinstance(data, dict):
        out: list[str] = []
        for key, value in data.items():
            bare = key in ("detail", "non_field_errors")
            out += _messages(value) if bare else [f"{key}: {x}" for x in _messages(value)]
        return out
    if isinstance(data, list):
        return [m for v in data for m in _messages(v)]
    return [] if data is None else [str(data)]


def _feeify(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (f"{v:.2f}" if k == "fee" and isinstance(v, int | float) and not isinstance(v, bool)
                    else _feeify(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_feeify(v) for v in data]
    return data


def _transform(status: int, headers: list[Any], body: bytes, rule: FaultRule) -> bytes:
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return body
    if rule.fee_as_string and status < 300 and data is not None:
        return json.dumps(_feeify(data)).encode()
    if rule.error_shape and status >= 400 and data is not None:
        text = "; ".join(_messages(data)) or "Error"
        shapes: dict[str, Any] = {"detail": {"detail": text}, "error": {"error": text}, "list": [text]}
        shaped = shapes.get(rule.error_shape)
        if shaped is not None:
            return json.dumps(shaped).encode()
        if rule.error_shape == "html":
            page = f"<html><head><title>Error {status}</title></head><body><h1>{status}</h1></body></html>"
            return page.encode()
        return b""
    return body


async def _send_error(send: Send, status: int, rule: FaultRule) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if status == 429:
        if rule.retry_after_date:
            when = datetime.now(UTC) + timedelta(seconds=rule.retry_after)
            headers.append((b"retry-after", format_datetime(when, usegmt=True).encode()))
        else:
            headers.append((b"retry-after", str(rule.retry_after).encode()))
        ctype = "application/json"
        body = json.dumps({"detail": f"Request was throttled. Expected available in {rule.retry_after} "
                                     "seconds."}).encode()
    else:
        ctype, body = _ERROR_PAGES[status]
    headers += [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def drop_connection(send: Send) -> None:
    """Close the connection without answering, so the client sees it dropped.

    Under uvicorn, `send` is the request cycle's bound method and the cycle holds the transport:
    closing it is the only way an ASGI app can hang up without a status line. After the close,
    a few loop turns let uvicorn notice the disconnect, so it does not answer 500 itself.
    Elsewhere: start a response that never completes, which the client also sees as a failure.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:
        transport.close()
        for _ in range(20):
            if getattr(cycle, "disconnected", True):
                break
            await anyio.lowlevel.checkpoint()
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
