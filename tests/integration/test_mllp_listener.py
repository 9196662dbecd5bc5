"""The MLLP listener over real loopback sockets, with the real SQLite store behind it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import hl7
import hl7.mllp
import pytest
from anyio.abc import ByteStream

from adapter.envelope import State
from adapter.errors import StoreError
from adapter.hl7.er7 import Message
from adapter.store.sqlite import SQLiteStore
from listeners.mllp import Frame, FrameDecoder, MessageHandler, TLSSettings, encode_frame, serve_mllp
from listeners.mllp.inbox import Accepts, accept_all

pytestmark = pytest.mark.anyio
DEADLINE = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"          # the `hl7` package's client is asyncio-only


def adt(control: str = "MSG0001", *, trigger: str = "A04", mrn: str = "12345", msh15: str = "",
        msh16: str = "", charset: str = "", facility: str = "HOSP", extra: str = "", end: str = "\r") -> str:
    segs = [f"MSH|^~\\&|EPIC|{facility}|ONCALL|CLINIC|20240101120000||ADT^{trigger}^ADT_A01|{control}|P|2.5.1"
            f"|||{msh15}|{msh16}||{charset}",
            f"EVN|{trigger}|20240101120000", f"PID|1||{mrn}^^^HOSP^MR||Doe^John||19800101|M", "PV1|1|O"]
    if extra:
        segs.append(extra)
    return end.join(segs) + end


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "store.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@asynccontextmanager
async def listening(store: SQLiteStore, accepts: Accepts = accept_all, **kw: Any) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_mllp, MessageHandler(store, accepts), host="127.0.0.1", port=0,
                                      **kw))
        yield port
        tg.cancel_scope.cancel()


class Client:
    """A plain MLLP client on an anyio stream (frames read with a fresh decoder, never one recv)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    async def send(self, text: str | bytes, *, framed: bool = True) -> None:
        raw = text.encode("latin-1") if isinstance(text, str) else text
        await self.stream.send(encode_frame(raw) if framed else raw)

    async def read_raw(self) -> bytes | None:
        """The next frame's bytes, or None at end of stream."""
        with anyio.fail_after(DEADLINE):
            while not self.frames:
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return None
                self.frames += self.decoder.feed(data)
        return self.frames.pop(0).payload

    async def ack(self, codec: str = "latin-1") -> Message:
        raw = await self.read_raw()
        assert raw is not None, "the listener closed the connection instead of answering"
        return Message.parse(raw.decode(codec))

    async def closed(self) -> bool:
        return await self.read_raw() is None


@asynccontextmanager
async def connect(port: int, **kw: Any) -> AsyncIterator[Client]:
    stream = await anyio.connect_tcp("127.0.0.1", port, **kw)
    async with stream:
        yield Client(stream)


def msa(ack: Message) -> tuple[str, str]:
    seg = ack.segment("MSA")
    assert seg is not None
    return seg.field(1), seg.field(2)


async def envelopes(store: SQLiteStore, **kw: Any) -> list[Any]:
    return await store.list(limit=10_000, newest_first=False, **kw)


async def test_aa_after_commit_payload_stored_byte_exact(store: SQLiteStore) -> None:
    """An ADT is answered AA once committed; the store holds its bytes exactly, with kind, keys, meta."""
    text = adt(extra=r"NTE|1||a\F\b \X0D\ kept")
    async with listening(store) as port, connect(port) as client:
        await client.send(text)
        ack = await client.ack()
    assert msa(ack) == ("AA", "MSG0001")
    assert ack.msh.field(3) == "ONCALL" and ack.msh.field(5) == "EPIC" and ack.msh.field(12) == "2.5.1"
    [env] = await envelopes(store)
    assert env.payload == text.encode() and env.state is State.QUEUED
    assert (env.kind, env.ordering_key) == ("ADT^A04", "patient:12345")
    assert env.dedup_key == "mllp:EPIC|HOSP|MSG0001"
    assert env.meta["control_id"] == "MSG0001" and env.meta["charset"] == "utf-8"


async def test_duplicate_is_acked_again_and_stored_once(store: SQLiteStore) -> None:
    """The same MSH-10 with the same content gets AA again and is not stored twice."""
    async with listening(store) as port, connect(port) as client:
        for _ in range(3):
            await client.send(adt())
            assert msa(await client.ack()) == ("AA", "MSG0001")
    assert len(await envelopes(store)) == 1


async def test_same_control_id_other_content_is_quarantined_with_ae(store: SQLiteStore) -> None:
    """MSH-10 reused with other content: stored QUARANTINED, answered AE with ERR code 205 at MSH^1^10."""
    async with listening(store) as port, connect(port) as client:
        await client.send(adt(mrn="111"))
        assert msa(await client.ack())[0] == "AA"
        await client.send(adt(mrn="222"))
        ack = await client.ack()
    assert msa(ack) == ("AE", "MSG0001")
    err = ack.segment("ERR")
    assert err is not None and err.field(2) == "MSH^1^10" and err.field(3).startswith("205^")
    states = [e.state for e in await envelopes(store)]
    assert states == [State.QUEUED, State.QUARANTINED]


async def test_unrouted_kind_gets_ar_with_reason_and_is_stored_rejected(store: SQLiteStore) -> None:
    """A kind the mappings do not accept: AR naming the reason; kept REJECTED; a later accepted
    delivery of the same control id is not shadowed by the refusal."""
    routed: set[str] = {"ADT^A04"}

    def accepts(kind: str) -> str | None:
        return None if kind in routed else "no mapping route for it"

    async with listening(store, accepts) as port, connect(port) as client:
        await client.send(adt("C7", trigger="A17"))
        ack = await client.ack()
        assert msa(ack) == ("AR", "C7")
        err = ack.segment("ERR")
        assert err is not None and err.field(3).startswith("200^")
        assert "ADT^A17 is not accepted: no mapping route for it" in err.value(8)
        routed.add("ADT^A17")                       # the mapping is loaded; the sender resends
        await client.send(adt("C7", trigger="A17"))
        assert msa(await client.ack()) == ("AA", "C7")
    rejected, queued = await envelopes(store)
    assert rejected.state is State.REJECTED and "no mapping route" in (rejected.reason or "")
    assert queued.state is State.QUEUED and queued.dedup_key == "mllp:EPIC|HOSP|C7"


async def test_ar_text_fits_msa3_for_pre_25_senders(store: SQLiteStore) -> None:
    """Before v2.5 MSA-3 (80 characters) is the only text: a reason that already names the kind is
    sent as is, so its advice is not cut off (seen with SRM^S01 and ORU^R01 from v2.3/v2.4 feeds)."""
    def accepts(kind: str) -> str | None:
        return f"no mapping route takes {kind}; add one to a file in the mapping folder"

    async with listening(store, accepts) as port, connect(port) as client:
        await client.send(adt("C8", trigger="A17").replace("|P|2.5.1", "|P|2.3", 1))
        ack = await client.ack()
        assert msa(ack) == ("AR", "C8")
        segment = ack.segment("MSA")
        assert segment is not None
        assert segment.value(3).endswith("add one to a file in the mapping folder")


async def test_unknown_charset_gets_ae_naming_it(store: SQLiteStore) -> None:
    """MSH-18 the adapter does not know: AE with ERR at MSH^1^18 that names the charset."""
    async with listening(store) as port, connect(port) as client:
        await client.send(adt("C8", charset="KLINGON-8"))
        ack = await client.ack()
    assert msa(ack) == ("AE", "C8")
    err = ack.segment("ERR")
    assert err is not None and err.field(2) == "MSH^1^18" and "KLINGON-8" in err.value(8)
    [env] = await envelopes(store)
    assert env.state is State.REJECTED


async def test_latin1_message_is_read_in_its_charset(store: SQLiteStore) -> None:
    """An 8859/1 message: accepted, stored as sent, and the ACK echoes the facility in latin-1."""
    text = adt("C9", charset="8859/1", facility="HÔPITAL", extra="NTE|1||Jérôme")
    async with listening(store) as port, connect(port) as client:
        await client.send(text.encode("latin-1"))
        raw = await client.read_raw()
    assert raw is not None and "ACK^A04" in raw.decode("latin-1")
    ack = Message.parse(raw.decode("latin-1"))
    assert msa(ack) == ("AA", "C9") and ack.msh.field(6) == "HÔPITAL" and ack.msh.field(18) == "8859/1"
    [env] = await envelopes(store)
    assert env.payload == text.encode("latin-1") and env.meta["charset"] == "latin-1"


@pytest.mark.parametrize(("msh15", "good", "bad"), [
    ("AL", "CA", "CE"), ("NE", None, None), ("ER", None, "CE"), ("SU", "CA", None)])
async def test_enhanced_mode_commit_acks(store: SQLiteStore, msh15: str, good: str | None,
                                         bad: str | None) -> None:
    """Enhanced mode: the commit ACK (CA/CE) is sent or not as MSH-15 asks; an ACK-less message is
    still stored, and the next message on the connection gets its own answer."""
    async with listening(store) as port, connect(port) as client:
        for n, (ok, expected) in enumerate([(True, good), (False, bad)]):
            control = f"E{n}"
            await client.send(adt(control, msh15=msh15, msh16="NE", mrn="1" if ok else "",
                                  charset="" if ok else "KLINGON-8"))
            await client.send(adt(f"P{n}"))                 # original-mode probe
            first = msa(await client.ack())
            if expected is None:
                assert first == ("AA", f"P{n}")
            else:
                assert first == (expected, control)
                assert msa(await client.ack()) == ("AA", f"P{n}")
    assert len(await envelopes(store)) == 4


async def test_what_real_feeds_send(store: SQLiteStore) -> None:
    """LF and CRLF segment ends, a BOM, junk between frames, many messages in one write and one
    message byte by byte: every one is answered AA, in order."""
    stream = (b"\r\n" + encode_frame(adt("A1", end="\n").encode())
              + b"\n\n" + encode_frame(b"\xef\xbb\xbf" + adt("A2", end="\r\n").encode())
              + encode_frame(adt("A3").encode()))
    async with listening(store) as port, connect(port) as client:
        await client.send(stream, framed=False)
        for byte in encode_frame(adt("A4", mrn="999").encode()):
            await client.send(bytes([byte]), framed=False)
        answers = [msa(await client.ack()) for _ in range(4)]
    assert answers == [("AA", f"A{n}") for n in range(1, 5)]
    keys = [e.ordering_key for e in await envelopes(store)]
    assert keys == ["patient:12345"] * 3 + ["patient:999"]


async def test_oversized_message_gets_ar_and_unreadable_one_closes(store: SQLiteStore) -> None:
    """Over max_message_bytes: AR when MSH can be read (stored REJECTED, truncated), close otherwise."""
    big = adt("BIG", extra="NTE|1||" + "x" * 5000)
    async with listening(store, max_message_bytes=2048) as port:
        async with connect(port) as client:
            await client.send(big)
            ack = await client.ack()
            assert msa(ack) == ("AR", "BIG")
            await client.send(adt("SMALL"))
            assert msa(await client.ack()) == ("AA", "SMALL")
        async with connect(port) as client:
            await client.send(b"Z" * 5000)
            assert await client.closed()
    states = {e.meta.get("control_id", e.kind): e.state for e in await envelopes(store)}
    assert states == {"BIG": State.REJECTED, "SMALL": State.QUEUED, "unreadable": State.REJECTED}


async def test_message_without_msh_gets_ae(store: SQLiteStore) -> None:
    """A frame that is not HL7 (no MSH): AE in default delimiters with ERR code 100; kept REJECTED."""
    async with listening(store) as port, connect(port) as client:
        await client.send("hello\r")
        ack = await client.ack()
    assert msa(ack) == ("AE", "")
    err = ack.segment("ERR")
    assert err is not None and err.field(3).startswith("100^")
    [env] = await envelopes(store)
    assert env.state is State.REJECTED and env.payload == b"hello\r"


async def test_framing_error_closes_the_connection(store: SQLiteStore) -> None:
    """<FS> not followed by <CR>: the connection is closed, nothing answered."""
    async with listening(store) as port, connect(port) as client:
        await client.send(b"\x0b" + adt().encode() + b"\x1c\n", framed=False)
        assert await client.closed()
    assert await envelopes(store) == []


async def test_idle_connection_is_closed(store: SQLiteStore) -> None:
    """A connection that sends nothing for idle_timeout seconds is closed by the listener."""
    async with listening(store, idle_timeout=0.2) as port, connect(port) as client:
        await client.send(adt())
        assert msa(await client.ack())[0] == "AA"
        assert await client.closed()


async def test_connections_over_the_limit_are_refused(store: SQLiteStore) -> None:
    """With max_connections=1 a second connection is closed at once; the first keeps working, and once
    it is gone a new one is served."""
    async with listening(store, max_connections=1) as port:
        async with connect(port) as first:
            await first.send(adt("M1"))
            assert msa(await first.ack()) == ("AA", "M1")
            async with connect(port) as second:
                assert await second.closed()
            await first.send(adt("M2"))
            assert msa(await first.ack()) == ("AA", "M2")
        with anyio.fail_after(DEADLINE):
            while True:                    # the first connection's slot is freed once its close is seen
                async with connect(port) as third:
                    await third.send(adt("M3"))
                    if await third.read_raw() is not None:
                        break


async def test_store_failure_means_no_ack_and_a_closed_connection(tmp_path: Path) -> None:
    """When the store cannot commit, no ACK at all is sent (the sender resends); the connection closes."""
    s = SQLiteStore(tmp_path / "gone.db")
    await s.open()
    async with listening(s) as port, connect(port) as client:
        await s.close()
        await client.send(adt())
        assert await client.closed()
    with pytest.raises(StoreError):
        await s.append(None)  # type: ignore[arg-type]


async def test_independent_client_hl7_package(store: SQLiteStore) -> None:
    """The `hl7` package's asyncio MLLP client talks to the listener and reads an AA for its message."""
    async with listening(store) as port:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
        try:
            for n in range(3):
                writer.writemessage(hl7.parse(adt(f"H{n}")))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), DEADLINE)
                assert str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == f"H{n}"
        finally:
            writer.close()
            await writer.wait_closed()
    assert len(await envelopes(store)) == 3


async def test_slow_store_stops_reading(tmp_path: Path) -> None:
    """Backpressure: while the store holds an append, the listener reads no more, so a sender pushing
    megabytes is stalled by TCP instead of filling the adapter's memory; all is acked once it resumes."""
    gate = anyio.Event()
    inner = SQLiteStore(tmp_path / "slow.db")

    class GatedStore:
        async def append(self, new: Any) -> Any:
            await gate.wait()
            return await inner.append(new)

    await inner.open()
    filler = "NTE|1||" + "y" * 60_000
    count = 200                                         # ~12 MB in all
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(partial(serve_mllp, MessageHandler(GatedStore()), host="127.0.0.1",
                                          port=0))
            async with connect(port) as client:
                payloads = [encode_frame(adt(f"B{n}", extra=filler).encode()) for n in range(count)]
                with anyio.move_on_after(1.0) as stalled:
                    for p in payloads:
                        await client.send(p, framed=False)
                assert stalled.cancelled_caught, "the whole stream was read while the store was stuck"
                gate.set()
                async with anyio.create_task_group() as sender:
                    sender.start_soon(_send_all, client, payloads)
                    acked: set[str] = set()
                    while len(acked) < count:              # frames sent before the stall are acked twice
                        acked.add(msa(await client.ack())[1])
            tg.cancel_scope.cancel()
        assert acked == {f"B{n}" for n in range(count)}
    finally:
        await inner.close()


async def _send_all(client: Client, payloads: list[bytes]) -> None:
    # resend from the start: duplicates are acked again, and a frame cut off by the stall is junk
    for p in payloads:
        await client.send(p, framed=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return d


def client_context(certs: Path, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(certs / "client.pem", certs / "client.key")
    return ctx


async def test_tls(store: SQLiteStore, certs: Path) -> None:
    """Over TLS the listener answers as over TCP."""
    tls = TLSSettings(certs / "server.pem", certs / "server.key")
    async with listening(store, tls=tls) as port, \
            connect(port, ssl_context=client_context(certs, with_cert=False),
                    tls_standard_compatible=False) as client:
        await client.send(adt("T1"))
        assert msa(await client.ack()) == ("AA", "T1")


@pytest.mark.parametrize("with_cert", [True, False])
async def test_tls_client_certificate_verification(store: SQLiteStore, certs: Path, with_cert: bool) -> None:
    """With a client CA configured, a client with a certificate it signed is served; one without is not."""
    tls = TLSSettings(certs / "server.pem", certs / "server.key", client_ca_file=certs / "ca.pem")
    async with listening(store, tls=tls) as port:
        try:
            async with connect(port, ssl_context=client_context(certs, with_cert=with_cert),
                               tls_standard_compatible=False) as client:
                await client.send(adt("T2"))
                answer = await client.read_raw()
        except (ssl.SSLError, anyio.BrokenResourceError, OSError):
            answer = None
    assert (answer is not None) is with_cert
    assert len(await envelopes(store)) == (1 if with_cert else 0)
