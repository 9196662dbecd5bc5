"""A process that uses the SQLite store and is then SIGKILLed by tests/integration/test_store_kill.py.

    python store_child.py claim DB LEASE_SECONDS   claim one envelope, print "claimed <id>", wait
    python store_child.py append DB                append forever from 4 tasks, print "<id>" after each
                                                   append returned (i.e. was acknowledged)
"""

from __future__ import annotations

import sys
from datetime import timedelta
from itertools import count

import anyio
import structlog

from adapter.envelope import NewEnvelope, Source
from adapter.store.sqlite import SQLiteStore


async def claim(path: str, lease_seconds: float) -> None:
    store = SQLiteStore(path)
    await store.open()
    [env] = await store.claim("child", limit=1, lease=timedelta(seconds=lease_seconds))
    print(f"claimed {env.id}", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)   # hold the claim until killed


async def append(path: str) -> None:
    store = SQLiteStore(path)
    await store.open()
    seq = count()

    async def appender(task: int) -> None:
        while True:
            n = next(seq)
            result = await store.append(NewEnvelope(
                source=Source.MLLP, kind="ADT^A08", ordering_key=f"patient:{n % 13}",
                dedup_key=f"mllp:CHILD|{n}", payload=f"MSH|{n}".encode()))
            print(result.envelope.id, flush=True)

    async with anyio.create_task_group() as tg:
        for task in range(4):
            tg.start_soon(appender, task)


def main() -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())   # stdout carries only results
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "claim":
        anyio.run(claim, path, float(sys.argv[3]))
    else:
        anyio.run(append, path)


if __name__ == "__main__":
    main()
