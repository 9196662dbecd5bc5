"""A small MLLP server process for tests/e2e/test_mllp_kill.py: serve_mllp on the real SQLiteStore,
accepting every kind. Prints ``PORT <n>`` on stdout once listening; logs go to stderr.

    python tests/e2e/mllp_server.py STORE.db
"""

from __future__ import annotations

import sys
from functools import partial

import anyio

from adapter.logging import configure_logging
from adapter.store.sqlite import SQLiteStore
from listeners.mllp import MessageHandler, serve_mllp


async def main(db: str) -> None:
    store = SQLiteStore(db)                   # synchronous=FULL: an AA survives a power cut, a kill too
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(partial(serve_mllp, MessageHandler(store), host="127.0.0.1", port=0))
            print(f"PORT {port}", flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)
    anyio.run(main, sys.argv[1])
