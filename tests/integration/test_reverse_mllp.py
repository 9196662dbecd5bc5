"""The MLLP target against real receivers on loopback: the adapter's own MLLP listener
(`serve_mllp` over a real store, which checks and acknowledges every message) and tiny raw
receivers for the failure modes (ACK split into single bytes, no ACK, AE)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest
from anyio.abc import SocketStream

from adapter.envelope import Source
from adapter.errors import PermanentError, TransientError
from adapter.hl7.er7 import Message as ER7
from adapter.reverse.bundle import BundleBuilder
from adapter.reverse.hl7_out import HL7Builder
from adapter.reverse.mllp_out import MLLPSender, MLLPTarget, control_id_for
from adapter.reverse.operations import EMRAppointmentUpsert, EMRPatient
from adapter.reverse.targets import Delivery
from adapter.store.base import Store
from listeners.mllp.framing import FrameDecoder, encode_frame
from listeners.mllp.inbox import MessageHandler
from listeners.mllp.server import serve_mllp

pytestmark = pytest.mark.anyio
BASE = "https://api.oncallhealth.ca"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _appointment(status: str = "booked") -> EMRAppointmentUpsert:
    return EMRAppointmentUpsert(
        oncall_url=f"{BASE}/appointments/42/", status=status,  # type: ignore[arg-type]
        start=dt.datetime(2026, 3, 2, 14, 0, tzinfo=dt.UTC),
        end=dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC),
        minutes_duration=30, description="Follow-up", appointment_type="online",
        participants=[EMRPatient(oncall_url=f"{BASE}/participants/7/", first_name="Ana", last_name="Lima",
                                 email="ana@example.org")])


def _builder() -> HL7Builder:
    return HL7Builder(BundleBuilder(BASE))


def _delivery(op: EMRAppointmentUpsert, *, known: bool = False, output_hash: str = "h1") -> Delivery:
    return Delivery(key="oncall_appointment:42", bundle={}, output_hash=output_hash, at=NOW, appointment=op,
                    known=known)


@dataclass
class Receiver:
    port: int
    scope: anyio.CancelScope
    stopped: anyio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        with anyio.fail_after(10):
            await self.stopped.wait()


@pytest.fixture
async def start_listener(store: Store) -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Starts the adapter's own MLLP listener over the test store (port 0 unless given)."""
    async with anyio.create_task_group() as tg:
        async def start(port: int = 0, accepts: Callable[[str], str | None] = lambda kind: None) -> Receiver:
            scope, stopped = anyio.CancelScope(), anyio.Event()

            async def run(*, task_status: anyio.abc.TaskStatus[int]) -> None:
                try:
                    with scope:
                        await serve_mllp(MessageHandler(store, accepts), host="127.0.0.1", port=port,
                                         shutdown_grace=0.5, task_status=task_status)
                finally:
                    stopped.set()

            bound = await tg.start(run)
            return Receiver(bound, scope, stopped)

        yield start
        tg.cancel_scope.cancel()


async def _raw_receiver(tg: anyio.abc.TaskGroup,
                        behaviour: Callable[[SocketStream, bytes], Awaitable[None]]) -> int:
    """A one-purpose MLLP receiver: for each framed message, `behaviour(stream, payload)`."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)

    async def handle(stream: SocketStream) -> None:
        decoder = FrameDecoder()
        async with stream:
            try:
                while True:
                    for frame in decoder.feed(await stream.receive()):
                        await behaviour(stream, frame.payload)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return

    async def serve() -> None:
        async with listener:
            await listener.serve(handle)

    tg.start_soon(serve)
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


def _ack(payload: bytes, code: str, text: str = "") -> bytes:
    control = ER7.parse(payload.decode()).control_id
    return (f"MSH|^~\\&|EMR|HOSP|ONCALL-ADAPTER|ONCALL|20260301120000||ACK|A{control[-6:]}|P|2.5\r"
            f"MSA|{code}|{control}|{text}\r").encode()


async def test_siu_delivered_on_one_held_connection_and_acknowledged(
        store: Store, start_listener: Callable[..., Awaitable[Receiver]]) -> None:
    """S12 then S14 then S15 go over ONE connection; the real listener stores each and answers AA."""
    receiver = await start_listener()
    sender = MLLPSender("127.0.0.1", receiver.port, ack_timeout=5)
    target = MLLPTarget(sender, _builder())
    try:
        await target.deliver(_delivery(_appointment(), output_hash="a"))
        await target.deliver(_delivery(_appointment(), known=True, output_hash="b"))
        result = await target.deliver(_delivery(_appointment("cancelled"), known=True, output_hash="c"))
    finally:
        await target.aclose()
    assert sender.connects == 1
    assert result.receipt == control_id_for("oncall_appointment:42", "c")
    stored = await store.list(source=Source.MLLP.value, newest_first=False)
    assert [e.kind for e in stored] == ["SIU^S12", "SIU^S14", "SIU^S15"]


async def test_resend_with_same_control_id_is_a_duplicate_for_the_receiver(
        store: Store, start_listener: Callable[..., Awaitable[Receiver]]) -> None:
    """Re-delivering the same content reuses its MSH-10, so the receiver's dedup keeps one copy."""
    receiver = await start_listener()
    target = MLLPTarget(MLLPSender("127.0.0.1", receiver.port, ack_timeout=5), _builder())
    try:
        first = await target.deliver(_delivery(_appointment()))
        again = await target.deliver(_delivery(_appointment()))
    finally:
        await target.aclose()
    assert first.receipt == again.receipt
    assert len(await store.list(source=Source.MLLP.value)) == 1


async def test_refusal_is_a_permanent_error_with_the_receivers_reason(
        store: Store, start_listener: Callable[..., Awaitable[Receiver]]) -> None:
    """A refusal (CR: enhanced mode, as MSH-15=AL asks) becomes PermanentError quoting its reason."""
    receiver = await start_listener(accepts=lambda kind: "no route for this kind")
    target = MLLPTarget(MLLPSender("127.0.0.1", receiver.port, ack_timeout=5), _builder())
    try:
        with pytest.raises(PermanentError, match=r"answered CR.*no route for this kind"):
            await target.deliver(_delivery(_appointment()))
    finally:
        await target.aclose()


async def test_reconnects_after_the_receiver_restarts(
        store: Store, start_listener: Callable[..., Awaitable[Receiver]]) -> None:
    """The held connection dies with the receiver; the next send opens a new one and succeeds."""
    receiver = await start_listener()
    sender = MLLPSender("127.0.0.1", receiver.port, ack_timeout=5)
    target = MLLPTarget(sender, _builder())
    try:
        await target.deliver(_delivery(_appointment(), output_hash="1"))
        await receiver.stop()
        await start_listener(port=receiver.port)
        await target.deliver(_delivery(_appointment(), known=True, output_hash="2"))
    finally:
        await target.aclose()
    assert sender.connects == 2
    assert len(await store.list(source=Source.MLLP.value)) == 2


async def test_connection_refused_is_transient_with_backoff() -> None:
    """No receiver: TransientError with a retry_after, and a second try inside the backoff does not
    even connect."""
    probe = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(probe.extra(anyio.abc.SocketAttribute.local_port))
    await probe.aclose()   # nothing listens there any more
    sender = MLLPSender("127.0.0.1", port, backoff_base=5.0)
    message = _builder().siu(_appointment(), trigger="S12", control_id="C1", now=NOW)
    with pytest.raises(TransientError, match="cannot connect") as first:
        await sender.send(message)
    assert first.value.retry_after == 5.0
    with pytest.raises(TransientError, match="backoff"):
        await sender.send(message)
    await sender.aclose()


async def test_ack_split_into_single_bytes_is_read_by_the_codec() -> None:
    """An ACK trickling in one byte per write is reassembled by the framing codec."""
    async def trickle(stream: SocketStream, payload: bytes) -> None:
        for byte in encode_frame(_ack(payload, "AA")):
            await stream.send(bytes([byte]))

    async with anyio.create_task_group() as tg:
        port = await _raw_receiver(tg, trickle)
        sender = MLLPSender("127.0.0.1", port, ack_timeout=5)
        ack = await sender.send(_builder().siu(_appointment(), trigger="S12", control_id="C2", now=NOW))
        await sender.aclose()
        tg.cancel_scope.cancel()
    assert (ack.code, ack.control_id) == ("AA", "C2")


async def test_application_error_and_silence() -> None:
    """AE is permanent with MSA-3's text; a receiver that never answers times out as transient."""
    async def reject(stream: SocketStream, payload: bytes) -> None:
        await stream.send(encode_frame(_ack(payload, "AE", "PID-3 unknown authority")))

    async def silent(stream: SocketStream, payload: bytes) -> None:
        return None

    message = _builder().siu(_appointment(), trigger="S12", control_id="C3", now=NOW)
    async with anyio.create_task_group() as tg:
        sender = MLLPSender("127.0.0.1", await _raw_receiver(tg, reject), ack_timeout=5)
        with pytest.raises(PermanentError, match="PID-3 unknown authority"):
            await sender.send(message)
        await sender.aclose()
        quiet = MLLPSender("127.0.0.1", await _raw_receiver(tg, silent), ack_timeout=0.3)
        with pytest.raises(TransientError, match="no ACK"):
            await quiet.send(message)
        await quiet.aclose()
        tg.cancel_scope.cancel()
