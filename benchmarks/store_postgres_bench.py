"""Benchmark of the PostgreSQL store: appends/s, claim latency with a deep queue, claim+complete
throughput with 1, 2 and 3 store instances in separate processes.

    .venv/bin/python benchmarks/store_postgres_bench.py [--dsn URL] [--quick]

Each scenario runs in its own schema, dropped afterwards. Figures depend on the machine and on
whatever else uses it; compare runs on one machine. Not a test: it asserts nothing but completion.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapter.envelope import NewEnvelope, Source  # after the path tweak, for a plain checkout
from adapter.store.postgres import PostgresStore

DSN = "postgresql://postgres@127.0.0.1:5432/test"
LEASE = timedelta(seconds=60)


def quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))   # errors only


def new(i: int, key: str, tag: str = "") -> NewEnvelope:
    return NewEnvelope(source=Source.MLLP, kind="ADT^A08", ordering_key=f"patient:{key}",
                       dedup_key=f"bench:{tag}{i}", payload=b"MSH|^~\\&|EMR|FAC|" + str(i).encode() * 40)


def drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def with_store(dsn: str, fn: Callable[[PostgresStore], Awaitable[Any]], **opts: Any) -> Any:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(dsn, schema=schema, **opts)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()
        drop(dsn, schema)


async def appends(dsn: str, *, appenders: int, total: int, batch: int, group_commit: bool) -> float:
    async def run(store: PostgresStore) -> float:
        per = total // appenders

        async def appender(a: int) -> None:
            for start in range(0, per, batch):
                items = [new(a * per + i, f"K{(a * per + i) % 500}") for i in range(start, start + batch)]
                if batch == 1:
                    await store.append(items[0])
                else:
                    await store.append_many(items)

        t0 = time.perf_counter()
        await asyncio.gather(*(appender(a) for a in range(appenders)))
        return per * appenders / (time.perf_counter() - t0)
    return float(await with_store(dsn, run, group_commit=group_commit, max_size=max(appenders, 2)))


def preload(dsn: str, schema: str, total: int, keys: int) -> None:
    """Queue `total` envelopes over `keys` keys straight in SQL (fast; the claim is what is measured)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("""
            INSERT INTO envelopes (source, kind, ordering_key, dedup_key, payload, content_hash, received_at,
                                   state, meta, updated_at)
            SELECT 'mllp', 'ADT^A08', 'patient:K' || (g %% %(keys)s), 'pre:' || g, 'MSH|x'::bytea,
                   md5(g::text), now(), 'queued', '{}', now()
            FROM generate_series(1, %(total)s) AS g""", {"keys": keys, "total": total})
        conn.execute("UPDATE envelopes SET head = true WHERE id IN "
                     "(SELECT min(id) FROM envelopes GROUP BY ordering_key)")   # what append() maintains
        conn.execute("ANALYZE envelopes")


async def claim_latency(dsn: str, *, queued: int, keys: int, rounds: int,
                        hold_all: bool = False) -> tuple[float, float]:
    """Median and p95 of claim(limit=10) in ms, completing what was claimed between rounds.

    `hold_all`: another worker holds every key's head first, so each claim finds nothing (the
    case that would walk the whole backlog without the head column)."""
    async def run(store: PostgresStore) -> tuple[float, float]:
        preload(dsn, store._schema, queued, keys)
        if hold_all:
            await store.claim("holder", limit=keys, lease=LEASE)
        times = []
        for r in range(rounds):
            t0 = time.perf_counter()
            got = await store.claim(f"w{r}", limit=10, lease=LEASE)
            times.append((time.perf_counter() - t0) * 1000)
            for env in got:
                await store.complete(env.id, f"w{r}")
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.95) - 1]
    result: tuple[float, float] = await with_store(dsn, run)
    return result


def _node(dsn: str, schema: str, workers: int, total: int, ready: Any, go: Any, out: Any) -> None:
    quiet()

    async def main() -> int:
        store = PostgresStore(dsn, schema=schema, max_size=workers + 1)
        await store.open()
        done = 0

        async def worker(w: int) -> None:
            nonlocal done
            idle = 0
            while idle < 20:
                got = await store.claim(f"{mp.current_process().name}-{w}", limit=5, lease=LEASE)
                if not got:
                    idle += 1
                    await asyncio.sleep(0.005)   # queue empty or heads held by other nodes
                    continue
                idle = 0
                for env in got:
                    await store.complete(env.id, f"{mp.current_process().name}-{w}")
                    done += 1
        ready.set()
        go.wait()
        await asyncio.gather(*(worker(w) for w in range(workers)))
        await store.close()
        return done
    out.put(asyncio.run(main()))


def claim_throughput(dsn: str, *, nodes: int, workers: int, total: int, keys: int) -> float:
    """Envelopes claimed and completed per second by `nodes` processes of `workers` tasks each."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create(dsn, schema))
    try:
        preload(dsn, schema, total, keys)
        ctx = mp.get_context("spawn")
        go, out = ctx.Event(), ctx.Queue()
        readies = [ctx.Event() for _ in range(nodes)]
        procs = [ctx.Process(target=_node, args=(dsn, schema, workers, total, readies[n], go, out),
                             name=f"node{n}") for n in range(nodes)]
        for p in procs:
            p.start()
        for r in readies:
            r.wait(60)
        t0 = time.perf_counter()
        go.set()
        counts = [out.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join(60)
        assert sum(counts) == total, f"claimed {sum(counts)} of {total}"
        return total / elapsed
    finally:
        drop(dsn, schema)


async def _create(dsn: str, schema: str) -> None:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the script)")
    args = parser.parse_args()
    quiet()
    random.seed(1)
    n = 500 if args.quick else 4000
    print(f"PostgreSQL store benchmark ({args.dsn.split('@')[-1]})")
    cases = [(1, 1, True), (8, 1, False), (8, 1, True), (1, 100, True), (8, 100, True)]
    for appenders, batch, group in cases:
        rate = asyncio.run(appends(args.dsn, appenders=appenders, total=n * (4 if batch > 1 else 1),
                                   batch=batch, group_commit=group))
        how = f"append_many({batch})" if batch > 1 else f"append, group commit {'on' if group else 'off'}"
        print(f"  appends/s  {appenders} appender(s), {how:<28} {rate:9.0f}")
    queued = 10_000 if args.quick else 100_000
    for keys, hold in ((queued // 10, False), (10, False), (10, True)):
        med, p95 = asyncio.run(claim_latency(args.dsn, queued=queued, keys=keys, rounds=50, hold_all=hold))
        held = ", every head already held" if hold else ""
        print(f"  claim(limit=10) with {queued} queued over {keys} keys{held}: "
              f"median {med:.2f} ms, p95 {p95:.2f} ms")
    total = 600 if args.quick else 6000
    for nodes in (1, 2, 3):
        rate = claim_throughput(args.dsn, nodes=nodes, workers=4, total=total, keys=total // 10)
        print(f"  claim+complete/s  {nodes} node(s) x 4 workers, {total} envelopes: {rate:9.0f}")


if __name__ == "__main__":
    main()
