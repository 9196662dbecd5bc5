"""The MLLP listener: an anyio TCP (optionally TLS) server and its per-connection loop.

Each connection reads, decodes frames (`framing.FrameDecoder`) and hands each one to the inbox, one
at a time, before it reads again. That is the backpressure: while the store is slow nothing more is
read, the kernel buffers fill and TCP slows the sender; per connection at most one read (64 KiB)
plus one message (`max_message_bytes`) is held. Limits say so in the log when they bite:
`mllp_message_too_large`, `mllp_idle_timeout`, `mllp_connection_refused` (max connections).

Shutdown (the enclosing scope cancelled): stop accepting, let each connection finish the message
it is storing and send its ACK (shielded, bounded by `shutdown_grace`), then close.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import anyio
import structlog
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.tls import TLSStream

from adapter.errors import ConfigError, StoreError
from listeners.mllp.framing import FrameDecoder, encode_frame
from listeners.mllp.inbox import Inbox, Reply

__all__ = ["TLSSettings", "serve_mllp"]

log = structlog.get_logger(__name__)

_READ_SIZE = 65536
_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None      # set: clients must present a certificate signed by it

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("mllp.tls_cert_file", str(self.cert_file),
                              f"certificate and key ({self.key_file}) must be readable PEM files "
                              f"that match ({exc})") from None
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("mllp.tls_client_ca_file", str(self.client_ca_file),
                                  f"must be a readable PEM file of CA certificates ({exc})") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(slots=True)
class _Limits:
    max_message_bytes: int
    idle_timeout: float
    max_connections: int
    shutdown_grace: float
    active: int = 0


async def serve_mllp(handler: Inbox, *, host: str = "127.0.0.1", port: int = 2575,
                     tls: TLSSettings | None = None, max_message_bytes: int = 1024 * 1024,
                     idle_timeout: float = 300.0, max_connections: int = 64, shutdown_grace: float = 10.0,
                     task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port until cancelled; `task_status.started(bound_port)` once listening."""
    ssl_context = tls.context() if tls is not None else None
    try:
        multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigError("mllp.port", port, f"cannot listen on {host}:{port} ({exc.strerror}); "
                          "choose a free port or stop the process holding it") from None
    limits = _Limits(max_message_bytes, idle_timeout, max_connections, shutdown_grace)
    async with multi, anyio.create_task_group() as tg:
        bound = multi.listeners[0].extra(SocketAttribute.local_port)
        log.info("mllp_listening", host=host, port=bound, tls=ssl_context is not None,
                 connections=max_connections, size=max_message_bytes)
        for listener in multi.listeners:
            tg.start_soon(_accept_loop, cast(SocketListener, listener), handler, ssl_context, limits, tg)
        task_status.started(bound)


async def _accept_loop(listener: SocketListener, handler: Inbox, ssl_context: ssl.SSLContext | None,
                       limits: _Limits, tg: TaskGroup) -> None:
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:             # EMFILE and friends: this connection is lost, not the server
            log.error("mllp_accept_failed", error_type=type(exc).__name__)
            await anyio.sleep(0.1)         # back off so a full fd table does not spin the loop
            continue
        peer = _peer(stream)
        if limits.active >= limits.max_connections:
            log.warning("mllp_connection_refused", peer=peer, connections=limits.active,
                        reason_code="max_connections")
            await stream.aclose()
            continue
        limits.active += 1
        tg.start_soon(_connection, stream, peer, handler, ssl_context, limits)


async def _connection(raw_stream: SocketStream, peer: str, handler: Inbox,
                      ssl_context: ssl.SSLContext | None, limits: _Limits) -> None:
    log.info("mllp_connection_opened", peer=peer, connections=limits.active)
    stream: ByteStream = raw_stream
    messages = 0
    try:
        if ssl_context is not None:
            try:
                with anyio.fail_after(_HANDSHAKE_TIMEOUT):
                    stream = await TLSStream.wrap(raw_stream, server_side=True, ssl_context=ssl_context,
                                                  standard_compatible=False)
            except (TimeoutError, ssl.SSLError, OSError, anyio.BrokenResourceError,
                    anyio.EndOfStream) as exc:
                log.warning("mllp_tls_handshake_failed", peer=peer, error_type=type(exc).__name__)
                return
        messages = await _serve_connection(stream, peer, handler, limits)
    finally:
        limits.active -= 1
        with anyio.CancelScope(shield=True):
            await stream.aclose()          # a TLSStream closes the socket under it
        log.info("mllp_connection_closed", peer=peer, count=messages, connections=limits.active)


async def _serve_connection(stream: ByteStream, peer: str, handler: Inbox, limits: _Limits) -> int:
    """Read, frame, store, answer, until EOF, idle timeout or an unanswerable message."""
    decoder = FrameDecoder(limits.max_message_bytes)
    messages = 0
    while True:
        data = b""
        with anyio.move_on_after(limits.idle_timeout) as idle:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = await stream.receive(_READ_SIZE)
        if idle.cancelled_caught:
            log.info("mllp_idle_timeout", peer=peer, seconds=limits.idle_timeout, bytes=decoder.pending)
            return messages
        if not data:
            if decoder.pending or decoder.junk_pending:
                log.warning("mllp_partial_message_dropped", peer=peer, bytes=decoder.pending,
                            junk_bytes=decoder.junk_pending)
            return messages
        try:
            frames = decoder.feed(data)
        except Exception as exc:           # HL7InputError: the stream cannot be trusted any more
            log.warning("mllp_framing_error", peer=peer, error_type=type(exc).__name__,
                        error_code=getattr(exc, "code", None), count=messages)
            return messages
        for frame in frames:
            if frame.junk_before:
                log.info("mllp_junk_skipped", peer=peer, junk_bytes=frame.junk_before)
            if frame.oversized:
                log.warning("mllp_message_too_large", peer=peer, size=frame.size,
                            bytes=limits.max_message_bytes)
            # finish this message (commit + ACK) even when shutdown begins meanwhile
            reply: Reply | None = None
            with anyio.move_on_after(limits.shutdown_grace, shield=True):
                try:
                    reply = await handler.accept(frame, peer)
                except Exception as exc:   # StoreError or a bug: no ACK, so the sender resends
                    log.error("mllp_no_answer", peer=peer, error_type=type(exc).__name__,
                              store=isinstance(exc, StoreError), count=messages)
                    return messages
                messages += 1
                if reply.ack is not None:
                    try:
                        await stream.send(encode_frame(reply.ack))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                        log.warning("mllp_ack_not_sent", peer=peer, error_type=type(exc).__name__)
                        return messages
            if reply is None or reply.close:      # shutdown grace ran out, or nothing more to say
                return messages


def _peer(stream: SocketStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return "unknown"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)
