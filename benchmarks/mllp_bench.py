"""MLLP listener benchmark: ACK throughput and p50/p99 ACK latency, 1 and 8 senders on held connections.

Three servers, each in its own process (the load generator runs in this one), same client, same
realistic ADT^A04 (12 segments, a unique MSH-10 per message so nothing is deduplicated):

- floor   a minimal raw-asyncio MLLP server returning a canned ACK (no parse, no store): the ceiling
          any Python listener on this machine can reach;
- ours    `serve_mllp` + `MessageHandler` + `SQLiteStore` with synchronous=FULL (durable commit before
          each AA), on the real disk (not tmpfs); `--uvloop` runs it on uvloop as well;
- ours-nostore  the same listener with an append that returns at once (an instrument, not a mode):
          the listener's own cost, to tell it from the store's;
- hl7apy  hl7apy's `MLLPServer` with a handler returning a canned ACK (stores nothing). It closes the
          connection after every message, so its senders reconnect per message: that is the library.

    .venv/bin/python benchmarks/mllp_bench.py [--messages 3000] [--senders 1 8] [--servers floor ours ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VT, END = b"\x0b", b"\x1c\r"
CANNED_ACK = (b"\x0bMSH|^~\\&|ONCALL|CLINIC|EPIC|HOSP|20240101120000||ACK^A04^ACK|A1|P|2.5.1\r"
              b"MSA|AA|X\r\x1c\r")


def adt_a04(n: int) -> bytes:
    """A realistic 12-segment ADT^A04 (about 1.1 KB) with a unique control id."""
    segs = [
        f"MSH|^~\\&|EPIC|HOSP^1.2.840.114350^ISO|ONCALL|CLINIC|20240101120000-0500||ADT^A04^ADT_A01|"
        f"B{n:08d}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        "EVN|A04|20240101120000-0500|||JSMITH^Smith^John^^^^^^HOSP",
        f"PID|1||{100000 + n % 5000}^^^HOSP^MR~{900000 + n}^^^SSA^SS||Tremblay^Marie^Élise^^Mme||19800101|F"
        "|||"
        "123 Rue Principale^^Montréal^QC^H2X 1Y4^CA^H||^PRN^PH^^1^514^5551234~^NET^Internet^marie@example.ca|"
        "^WPN^PH^^1^514^5559876|fr|M|||||||||||N",
        "PD1|||Clinique Centrale^^1234|1234567^Gagnon^Luc^^^Dr",
        "NK1|1|Tremblay^Paul|SPO^Spouse^HL70063|123 Rue Principale^^Montréal^QC^H2X 1Y4^CA"
        "|^PRN^PH^^1^514^5551235",
        "PV1|1|O|CLIN^101^1^HOSP||||1234567^Gagnon^Luc^^^Dr|||MED||||1|||1234567^Gagnon^Luc^^^Dr|OP|"
        f"V{n:08d}^^^HOSP^VN|||||||||||||||||||||||||20240101120000-0500",
        "PV2|||^Follow-up visit||||||||||||||||||||||||N",
        "OBX|1|NM|8302-2^Body height^LN||165|cm^centimeter^UCUM|||||F",
        "OBX|2|NM|29463-7^Body weight^LN||62|kg^kilogram^UCUM|||||F",
        "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives",
        "DG1|1||Z00.00^General adult medical examination^I10||20240101|A",
        "IN1|1|PLAN01^Provincial Plan|RAMQ|Régie de l'assurance maladie du Québec"
        "|||||||||||||||||||||||||||||||||||||TREM80010112",
    ]
    return ("\r".join(segs) + "\r").encode("utf-8")


# -- servers (run with --serve KIND in a child process) --------------------------------------------
async def _floor_server() -> None:
    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(END)) >= 0:
                self.buf = self.buf[end + 2:]
                self.t.write(CANNED_ACK)  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def _serve_ours(db: str, uvloop: bool, nostore: bool) -> None:
    from functools import partial

    import anyio

    from adapter.envelope import Appended, AppendOutcome, Envelope, NewEnvelope, State
    from adapter.logging import configure_logging
    from adapter.store.sqlite import SQLiteStore
    from listeners.mllp import MessageHandler, serve_mllp

    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)

    class NoStore:
        """Instrument only: answers append at once, to show the listener's own ceiling."""

        async def open(self) -> None: ...

        async def close(self) -> None: ...

        async def append(self, new: NewEnvelope) -> Appended:
            env = Envelope(1, new.source, new.kind, new.ordering_key, new.dedup_key, None, "",
                           new.received_at, State.QUEUED)
            return Appended(env, AppendOutcome.STORED)

    async def main() -> None:
        store = NoStore() if nostore else SQLiteStore(db, synchronous="FULL")
        await store.open()
        try:
            async with anyio.create_task_group() as tg:
                port = await tg.start(partial(serve_mllp, MessageHandler(store), host="127.0.0.1", port=0))
                print(f"PORT {port}", flush=True)
        finally:
            await store.close()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": uvloop})


def _serve_hl7apy() -> None:
    from hl7apy.mllp import AbstractHandler, MLLPServer

    class Canned(AbstractHandler):
        def reply(self) -> str:
            return CANNED_ACK.decode()

    server = MLLPServer("127.0.0.1", 0, {"ADT^A04^ADT_A01": (Canned,)})
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


# -- load ------------------------------------------------------------------------------------------
@dataclass
class Result:
    server: str
    senders: int
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def pct(self, p: float) -> float:
        if len(self.latencies) < 2:
            return 0.0
        return statistics.quantiles(self.latencies, n=100)[int(p) - 1] * 1000


async def _sender(port: int, numbers: range, latencies: list[float], reconnect: bool) -> None:
    reader = writer = None
    try:
        for n in numbers:
            t0 = time.perf_counter()
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            writer.write(VT + adt_a04(n) + END)
            ack = await reader.readuntil(END)
            latencies.append(time.perf_counter() - t0)
            if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
                raise RuntimeError(f"not accepted: {ack[:200]!r}")
            if reconnect:
                writer.close()
                await writer.wait_closed()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()
            await writer.wait_closed()


async def _load(server: str, port: int, senders: int, messages: int, base: int) -> Result:
    reconnect = server == "hl7apy"
    per = messages // senders
    warm: list[float] = []
    warmup = base + 10_000_000
    await asyncio.gather(*(_sender(port, range(warmup + i * 1000, warmup + i * 1000 + 50), warm, reconnect)
                           for i in range(senders)))
    latencies: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_sender(port, range(base + i * per, base + (i + 1) * per), latencies, reconnect)
                           for i in range(senders)))
    return Result(server, senders, per * senders, time.perf_counter() - t0, latencies)


def _start(kind: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    args = [sys.executable, __file__, "--serve", kind, "--db", str(work / f"{kind}.db")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    return proc, int(line.split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000, help="messages per run (split over the senders)")
    ap.add_argument("--senders", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--servers", nargs="+",
                    default=["floor", "ours", "ours-uvloop", "ours-nostore", "ours-nostore-uvloop", "hl7apy"])
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        if args.serve == "floor":
            asyncio.run(_floor_server())
        elif args.serve.startswith("ours"):
            _serve_ours(args.db, uvloop="uvloop" in args.serve, nostore="nostore" in args.serve)
        else:
            _serve_hl7apy()
        return

    work = Path(tempfile.mkdtemp(prefix="mllp-bench-", dir=ROOT))   # the real disk, not tmpfs
    results: list[Result] = []
    try:
        for kind in args.servers:
            proc, port = _start(kind, work)
            try:
                for i, senders in enumerate(args.senders):
                    results.append(asyncio.run(_load(kind, port, senders, args.messages, i * 1_000_000)))
            finally:
                proc.terminate()
                proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    floor = {r.senders: r.rate for r in results if r.server == "floor"}
    print(f"{'server':<20} {'senders':>7} {'msgs':>6} {'msg/s':>8} {'% floor':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for r in results:
        share = f"{100 * r.rate / floor[r.senders]:.0f}%" if r.senders in floor else "-"
        print(f"{r.server:<20} {r.senders:>7} {r.messages:>6} {r.rate:>8.0f} {share:>8} {r.pct(50):>7.2f} "
              f"{r.pct(99):>7.2f}")


if __name__ == "__main__":
    main()
