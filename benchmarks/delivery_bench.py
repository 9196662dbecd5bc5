"""Delivery benchmark: store -> worker pool -> OnCall, with the sandbox answering after a fixed latency.

    python benchmarks/delivery_bench.py throughput [--patients 1000] [--latency-ms 50] [--workers 8]
                                                   [--batch 8] [--max-in-flight 8]
    python benchmarks/delivery_bench.py memory [--queued 100000] [--process 2000] [--latency-ms 50]

`throughput`: N patients, each an ADT^A04 (contact upsert: look-ups by e-mail and name, then a create)
and an SIU^S12 (appointment create), queued in a SQLite store; the pool drains them through the real
mapping engine and client against `oncall-adapter sandbox` in its own process with `latency_ms` on
every API call. Reports envelopes/s, requests/s, the requests in flight (measured, and the bound
max_in_flight / latency) and where the time goes.

`memory`: 100,000 envelopes queued, then the pool processes a slice of them: peak RSS before and after
(flat: the pool never holds more than workers x batch envelopes).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter.envelope import NewEnvelope, Source, State  # noqa: E402
from adapter.logging import configure_logging  # noqa: E402
from adapter.mapping.loader import default_dirs, load_mapping_set  # noqa: E402
from adapter.oncall.client import OnCallClient  # noqa: E402
from adapter.retry import RetryPolicy  # noqa: E402
from adapter.store.sqlite import SQLiteStore  # noqa: E402
from adapter.worker.pool import WorkerPool  # noqa: E402


def messages(n: int) -> list[NewEnvelope]:
    mrn, appt = f"MRN{n:07d}", f"APPT{n:07d}"
    a04 = (f"MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20240501101500||ADT^A04^ADT_A01|BA{n:07d}|P|2.5\r"
           f"EVN|A04|20240501101500\rPID|1||{mrn}^^^CLINIC_A^MR||PATIENT{n}^ALEX||19800214|F|||||"
           f"(514)555-{n % 10000:04d}^PRN^PH~^NET^Internet^alex{n}@example.org\r"
           f"PV1|1|O|CLINIC_A^101^1||||1234^SMITH^JOHN^^^DR\r")
    s12 = (f"MSH|^~\\&|EPIC|CLINIC_A|ONCALL|ONCALL|20240510090000||SIU^S12^SIU_S12|BS{n:07d}|P|2.5\r"
           f"SCH|PL-{n}^EPIC|{appt}^EPIC|||||FOLLOWUP^Follow-up|VIRTUAL^Virtual visit|30|MIN|"
           f"^^30^20300515143000^20300515150000|||||1234^SMITH^JOHN|||||||||Booked\r"
           f"PID|1||{mrn}^^^CLINIC_A^MR||PATIENT{n}^ALEX||19800214|F|||||~^NET^Internet^alex{n}@example.org\r"
           f"PV1|1|O|CLINIC_A^101||||1234^SMITH^JOHN\rRGS|1|A\rAIL|1|A|CLINIC_A^101\rAIP|1|A|1234^SMITH^JOHN|MD\r")
    return [NewEnvelope(Source.MLLP, "ADT^A04", f"patient:{mrn}", f"bench:A{n}", a04.encode()),
            NewEnvelope(Source.MLLP, "SIU^S12", f"patient:{mrn}", f"bench:S{n}", s12.encode())]


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts requests and integrates the number in flight over time (mean concurrency)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self._area = 0.0
        self._since = time.perf_counter()
        self.start = self._since

    def _tick(self) -> None:
        now = time.perf_counter()
        self._area += self.in_flight * (now - self._since)
        self._since = now

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._tick()
        self.in_flight += 1
        self.requests += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self._tick()
            self.in_flight -= 1

    def mean_in_flight(self) -> float:
        self._tick()
        return self._area / max(self._since - self.start, 1e-9)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sandbox(tmp: Path, latency_ms: int) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = open(tmp / "sandbox.log", "wb")   # noqa: SIM115 - handed to the child
    command = [sys.executable, "-c", "from adapter.cli import main; raise SystemExit(main())",
               "sandbox", "--port", str(port), "--db", str(tmp / "sandbox.db"), "--page-size", "50"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(f"{base}/__sandbox__/faults", json={"seed": 1, "rules": [
                {"path": "/*", "latency_ms": latency_ms}]}, timeout=2).raise_for_status()
            return proc, base
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the sandbox did not start: see {tmp / 'sandbox.log'}") from None
            time.sleep(0.1)


def rss_mb() -> float:
    """Peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def drain(store: SQLiteStore, base: str, args: argparse.Namespace, until_done: int) -> dict[str, Any]:
    mapping_set = load_mapping_set(default_dirs(None))
    transport = CountingTransport()
    client = OnCallClient(api_key="sandbox-token", base_url=base, max_in_flight=args.max_in_flight,
                          transport=transport, read_timeout=60)
    pool = WorkerPool(store, lambda: mapping_set, client, workers=args.workers, batch=args.batch,
                      poll_seconds=0.05, retry_policy=RetryPolicy(base=0.05, cap=1.0), seed=1)
    started = time.perf_counter()
    samples: list[tuple[int, float]] = []
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            while True:
                done = (await store.stats()).by_state.get(State.DONE.value, 0)
                samples.append((done, current_rss_mb()))
                if done >= until_done:
                    break
                await anyio.sleep(0.25)   # progress poll of a benchmark
            elapsed = time.perf_counter() - started
            pool.stop()
    finally:
        await client.aclose()
    return {"elapsed": elapsed, "done": done, "requests": transport.requests, "rss": samples,
            "mean_in_flight": transport.mean_in_flight(), "peak_in_flight": transport.peak}


async def throughput(args: argparse.Namespace, tmp: Path, base: str) -> None:
    store = SQLiteStore(tmp / "adapter.db", synchronous="NORMAL")
    await store.open()
    try:
        news = [e for n in range(args.patients) for e in messages(n)]
        for i in range(0, len(news), 1000):
            await store.append_many(news[i:i + 1000])
        result = await drain(store, base, args, until_done=len(news))
        stats = await store.stats()
    finally:
        await store.close()
    latency = args.latency_ms / 1000
    rps = result["requests"] / result["elapsed"]
    print(f"patients {args.patients}, envelopes {len(news)}, latency {args.latency_ms} ms, workers "
          f"{args.workers} x batch {args.batch}, client max_in_flight {args.max_in_flight}")
    print(f"  drained in {result['elapsed']:.1f} s: {result['done'] / result['elapsed']:.1f} envelopes/s, "
          f"{result['requests']} requests = {rps:.1f} requests/s")
    print(f"  in flight: mean {result['mean_in_flight']:.2f}, peak {result['peak_in_flight']}; "
          f"bound max_in_flight / latency = {args.max_in_flight / latency:.0f} requests/s; "
          f"achieved {rps * latency / args.max_in_flight:.0%} of it")
    print(f"  mean OnCall response time (Little's law: in flight / rate) "
          f"{1000 * result['mean_in_flight'] / rps:.0f} ms for a configured latency of {args.latency_ms} ms")
    print(f"  dead letters {stats.by_state.get('dead', 0)}, peak RSS {rss_mb():.0f} MB")


async def memory(args: argparse.Namespace, tmp: Path, base: str) -> None:
    store = SQLiteStore(tmp / "adapter.db", synchronous="NORMAL")
    await store.open()
    try:
        before = rss_mb()
        batch: list[NewEnvelope] = []
        for n in range(args.queued // 2):
            batch.extend(messages(n))
            if len(batch) >= 2000:
                await store.append_many(batch)
                batch = []
        if batch:
            await store.append_many(batch)
        queued = rss_mb()
        result = await drain(store, base, args, until_done=args.process)
        after = rss_mb()
        stats = await store.stats()
    finally:
        await store.close()
    print(f"queued {args.queued} envelopes, processed {result['done']} of them "
          f"({result['done'] / result['elapsed']:.1f}/s at {args.latency_ms} ms latency)")
    curve = result["rss"]
    marks = [curve[min(len(curve) - 1, int(len(curve) * f))] for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
    print("  RSS while processing (done: MB): " + ", ".join(f"{d}: {m:.0f}" for d, m in marks))
    print(f"  peak RSS: {before:.0f} MB at start, {queued:.0f} MB after queueing, {after:.0f} MB after "
          f"processing; still queued {stats.by_state.get('queued', 0)}, "
          f"store {stats.size_bytes / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "memory"])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--process", type=int, default=2000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-in-flight", type=int, default=8)
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as tmpdir:
        tmp = Path(tmpdir)
        proc, base = start_sandbox(tmp, args.latency_ms)
        try:
            anyio.run(throughput if args.mode == "throughput" else memory, args, tmp, base)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
