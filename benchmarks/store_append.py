"""Micro-benchmark of the SQLite store: append throughput and latency (the MLLP ACK latency), claims.

    .venv/bin/python benchmarks/store_append.py [--appends 4000] [--synchronous FULL] [--queued 100000]

Measures, on a fresh file in a temporary directory:
- the cost of one durable write on this file system (pwrite 1.2 KB + fdatasync), the floor of a
  commit under synchronous=FULL;
- appends/s and p50/p99 append latency for 1 and 8 concurrent appenders (group commit at work),
  with the number of commits (appends per commit = batching factor);
- claim time with `--queued` envelopes waiting: spread over 10,000 keys, all in one key behind a
  claimed head, and behind 1,000 heads waiting for a retry time;
- get() latency (a read through the reader pool).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from datetime import timedelta
from itertools import count
from pathlib import Path

import anyio
import structlog

from adapter.envelope import NewEnvelope, Source, utcnow
from adapter.store.sqlite import SQLiteStore

_seq = count()
LEASE = timedelta(minutes=5)


def envelope(key: str) -> NewEnvelope:
    n = next(_seq)
    payload = b"MSH|^~\\&|EMR|FAC|ADAPTER|ONCALL|20260101||ADT^A08|%d|P|2.5\r" % n + b"X" * 900
    return NewEnvelope(source=Source.MLLP, kind="ADT^A08", ordering_key=key, dedup_key=f"mllp:BENCH|{n}",
                       payload=payload)


def pct(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def fsync_cost(directory: Path, rounds: int = 1000) -> None:
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * (4 << 20))
        os.fsync(fd)
        times = []
        for i in range(rounds):
            start = time.perf_counter()
            os.pwrite(fd, b"x" * 1200, (i * 4096) % (4 << 20))   # in place, as a reused WAL is written
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    print(f"fsync   pwrite 1.2 KB + fdatasync: p50 {pct(times, 50) * 1000:6.2f} ms   "
          f"p99 {pct(times, 99) * 1000:6.2f} ms")


async def appends(store: SQLiteStore, total: int, tasks: int) -> None:
    latencies: list[float] = []
    per_task = total // tasks
    commits_before = store.commit_count

    async def appender(t: int) -> None:
        for i in range(per_task):
            start = time.perf_counter()
            await store.append(envelope(f"patient:{t}:{i % 50}"))
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for t in range(tasks):
            tg.start_soon(appender, t)
    elapsed = time.perf_counter() - start
    commits = store.commit_count - commits_before
    print(f"append  {tasks} appender(s): {len(latencies) / elapsed:8.0f} appends/s   "
          f"p50 {pct(latencies, 50) * 1000:6.2f} ms   p99 {pct(latencies, 99) * 1000:6.2f} ms   "
          f"{commits} commits ({len(latencies) / commits:.1f} appends/commit)")


async def fill(store: SQLiteStore, n: int, key_of: object) -> None:
    batch = 2000
    for start in range(0, n, batch):
        await store.append_many([envelope(key_of(i)) for i in range(start, min(n, start + batch))])  # type: ignore[operator]


async def time_claims(store: SQLiteStore, label: str, rounds: int = 50) -> None:
    times = []
    got = 0
    for _ in range(rounds):
        start = time.perf_counter()
        claimed = await store.claim("bench", limit=10, lease=LEASE)
        times.append(time.perf_counter() - start)
        got += len(claimed)
        for env in claimed:   # give them back so the next round sees the same queue
            await store.release(env.id, "bench")
    print(f"claim   {label:<46}: p50 {pct(times, 50) * 1000:6.2f} ms   p99 {pct(times, 99) * 1000:6.2f} ms"
          f"   ({got / rounds:.0f} claimed per call)")


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"SQLite store, synchronous={args.synchronous}, file in {tmp}")
        fsync_cost(Path(tmp))
        store = SQLiteStore(Path(tmp) / "a.db", synchronous=args.synchronous)
        await store.open()
        try:
            await appends(store, args.appends // 4, 1)
            await appends(store, args.appends, 8)
            reads = []
            for i in range(1, 501):
                start = time.perf_counter()
                await store.get(i)
                reads.append(time.perf_counter() - start)
            print(f"get     one envelope by id: p50 {pct(reads, 50) * 1000:6.2f} ms   "
                  f"p99 {pct(reads, 99) * 1000:6.2f} ms")
        finally:
            await store.close()

        spread = SQLiteStore(Path(tmp) / "spread.db", synchronous=args.synchronous)
        await spread.open()
        try:
            start = time.perf_counter()
            await fill(spread, args.queued, lambda i: f"patient:{i % 10000}")
            print(f"fill    {args.queued} queued over 10,000 keys in {time.perf_counter() - start:.1f} s")
            await time_claims(spread, f"{args.queued} queued, 10,000 keys")
        finally:
            await spread.close()

        hot = SQLiteStore(Path(tmp) / "hot.db", synchronous=args.synchronous)
        await hot.open()
        try:
            await fill(hot, args.queued, lambda i: "patient:hot")
            await hot.claim("holder", limit=1, lease=LEASE)
            await time_claims(hot, f"{args.queued} queued in one key, head claimed")
            await fill(hot, 1000, lambda i: f"patient:retry:{i}")
            for env in await hot.claim("holder", limit=1000, lease=LEASE):
                await hot.retry_at(env.id, "holder", utcnow() + timedelta(hours=1), "503")
            await fill(hot, 10, lambda i: f"patient:ready:{i}")
            await time_claims(hot, "+ 1,000 heads waiting to retry, 10 ready")
        finally:
            await hot.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=4000)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--dir", help="where the files go (default: the system temporary directory); "
                                      "use the store's real file system, not tmpfs")
    anyio.run(main, parser.parse_args())
