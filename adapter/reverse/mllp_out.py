"""HL7 v2 over MLLP to the EMR: one held connection, reconnect with backoff, ACKs read by the codec.

`MLLPSender` keeps ONE TCP connection open and sends one message at a time on it (MLLP has no
request ids: the next message goes only after the previous one's ACK). The ACK is read with the
framing codec (listeners/mllp/framing.py), however the bytes arrive: never one fixed-size recv.

Failures:
- cannot connect: TransientError; further attempts wait out an exponential backoff (0.5 s doubling
  to 30 s) so a down EMR is not hammered; the worker's durable retry brings the message back;
- connection lost or no ACK within `ack_timeout`: the connection is dropped (its state is
  unknown) and TransientError raised. The message is resent later with the SAME control id
  (MSH-10 is derived from the content), so a receiver that dedups on MSH-10 applies it once.
  A connection found dead on first use after being idle (EMRs close idle sockets) is reopened
  and the message sent once more at once;
- AE/CE: PermanentError with the receiver's reason (MSA-3 / ERR-8); AR/CR: PermanentError too
  (the receiver refuses this kind of message: retrying cannot help);
- an ACK for another control id: the stream is out of step: dropped, TransientError.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Literal

import anyio
import structlog
from anyio.abc import ByteStream

from adapter.errors import HL7InputError, PermanentError, TransientError
from adapter.hl7.er7 import Message as ER7Message
from adapter.reverse.hl7_out import HL7Builder, siu_trigger
from adapter.reverse.targets import Delivery, DeliveryResult
from listeners.mllp.framing import FrameDecoder, encode_frame

__all__ = ["Ack", "MLLPSender", "MLLPTarget", "control_id_for", "read_ack"]

log = structlog.get_logger(__name__)
_ACCEPTED = {"AA", "CA"}


def control_id_for(key: str, output_hash: str, part: int = 0) -> str:
    """A 20-character MSH-10 stable for one content: resends carry the same id."""
    return "OC" + hashlib.sha256(f"{key}|{output_hash}|{part}".encode()).hexdigest()[:18].upper()


class Ack:
    def __init__(self, code: str, control_id: str, text: str) -> None:
        self.code = code
        self.control_id = control_id
        self.text = text


def read_ack(payload: bytes) -> Ack:
    """MSA-1, MSA-2 and the reason (MSA-3, else ERR-8, else ERR-3 text) of an ACK."""
    text = payload.decode("utf-8", errors="replace")
    msg = ER7Message.parse(text)
    msa = msg.segment("MSA")
    if msa is None:
        raise HL7InputError("the EMR's answer has no MSA segment", location="MSA",
                            hint="the receiver must answer with an HL7 ACK")
    reason = msa.value(3)
    err = msg.segment("ERR")
    if not reason and err is not None:
        reason = err.value(8) or err.value(3, component=2) or err.value(3)
    return Ack(msa.value(1).upper(), msa.value(2), reason)


class MLLPSender:
    def __init__(self, host: str, port: int, *, ack_timeout: float = 30.0, connect_timeout: float = 10.0,
                 max_message_bytes: int = 1024 * 1024, backoff_base: float = 0.5,
                 backoff_cap: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._stream: ByteStream | None = None
        self._decoder = FrameDecoder(max_message_bytes)
        self._lock = anyio.Lock()
        self._failures = 0
        self._next_connect = 0.0
        self.connects = 0               # how many connections were opened (for tests and metrics)

    async def send(self, message: str) -> Ack:
        """Send one message, wait for its ACK; raise unless it was accepted (AA/CA)."""
        control_id = ER7Message.parse(message).control_id
        frame = encode_frame(message.encode("utf-8"))
        async with self._lock:
            try:
                ack = await self._exchange_retrying_stale(frame, control_id)
            except BaseException:
                await self._drop()   # cancelled or failed mid-exchange: the stream's state is unknown
                raise
        if ack.control_id != control_id:
            await self._drop_locked()
            raise TransientError(f"MLLP {self.host}:{self.port} acknowledged {ack.control_id!r} instead of "
                                 f"{control_id!r}", hint="the connection was reset; resent later")
        log.info("mllp_ack", control_id=control_id, ack_code=ack.code, host=self.host, port=self.port)
        if ack.code not in _ACCEPTED:
            raise PermanentError(f"the EMR answered {ack.code} to message {control_id}: "
                                 f"{ack.text or 'no reason given'}",
                                 hint="fix the cause named by the EMR, then replay the dead letter")
        return ack

    async def _exchange_retrying_stale(self, frame: bytes, control_id: str) -> Ack:
        for attempt in (1, 2):
            fresh = self._stream is None
            try:
                return await self._exchange(frame)
            except _Lost:
                if fresh or attempt == 2:
                    break
                # the held connection had gone stale while idle: open a new one and send once more
        raise TransientError(f"MLLP {self.host}:{self.port} closed the connection before answering "
                             f"message {control_id}", hint="it will be resent with the same control id")

    async def _exchange(self, frame: bytes) -> Ack:
        stream = await self._connect()
        try:
            await stream.send(frame)
            with anyio.fail_after(self.ack_timeout):
                while True:
                    data = await stream.receive(65536)
                    frames = self._decoder.feed(data)
                    if frames:
                        return read_ack(frames[0].payload)
        except TimeoutError:
            await self._drop()
            raise TransientError(f"MLLP {self.host}:{self.port} sent no ACK within {self.ack_timeout:g} s",
                                 hint="the message will be resent with the same control id") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._drop()
            raise _Lost() from None

    async def _connect(self) -> ByteStream:
        if self._stream is not None:
            return self._stream
        wait = self._next_connect - time.monotonic()
        if wait > 0:
            raise TransientError(f"MLLP {self.host}:{self.port} is in connect backoff", retry_after=wait,
                                 hint="the EMR's MLLP receiver refused or dropped recent connections")
        try:
            with anyio.fail_after(self.connect_timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            self._failures += 1
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (self._failures - 1))
            self._next_connect = time.monotonic() + delay
            log.warning("mllp_connect_failed", host=self.host, port=self.port, attempt=self._failures,
                        retry_in=delay, error_type=type(exc).__name__)
            raise TransientError(f"cannot connect to the EMR's MLLP receiver {self.host}:{self.port} "
                                 f"({type(exc).__name__})", retry_after=delay,
                                 hint="check emr.mllp_host/mllp_port and that the receiver is up") from None
        self._failures = 0
        self._stream = stream
        self._decoder = FrameDecoder(self.max_message_bytes)
        self.connects += 1
        log.info("mllp_connected", host=self.host, port=self.port)
        return stream

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _drop_locked(self) -> None:
        async with self._lock:
            await self._drop()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


class _Lost(Exception):
    """The connection failed during an exchange."""


class MLLPTarget:
    """Appointments as SIU^S12/S14/S15, roster contacts as ADT^A04/A08."""

    name = "mllp"

    def __init__(self, sender: MLLPSender, builder: HL7Builder) -> None:
        self.sender = sender
        self.builder = builder

    async def deliver(self, delivery: Delivery) -> DeliveryResult:
        now = dt.datetime.now(dt.UTC)
        ids: list[str] = []
        if delivery.appointment is not None:
            trigger = siu_trigger(delivery.appointment, known=delivery.known)
            cid = control_id_for(delivery.key, delivery.output_hash)
            await self.sender.send(self.builder.siu(delivery.appointment, trigger=trigger, control_id=cid,
                                                    now=now, placer_id=delivery.placer_id))
            ids.append(cid)
        for part, patient in enumerate(delivery.patients, start=1):
            adt: Literal["A04", "A08"] = "A08" if delivery.known else "A04"
            cid = control_id_for(delivery.key, delivery.output_hash, part)
            await self.sender.send(self.builder.adt(patient, trigger=adt, control_id=cid, now=now))
            ids.append(cid)
        return DeliveryResult("mllp", receipt=",".join(ids))

    async def aclose(self) -> None:
        await self.sender.aclose()
