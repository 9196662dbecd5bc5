"""`oncall-adapter serve`: listeners, HTTP and workers in one process."""

from __future__ import annotations

import argparse

import anyio

from adapter.config import load_config
from adapter.logging import configure_logging
from adapter.runtime import run_serve

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(level=config.logging.level, fmt=config.logging.format, log_phi=config.logging.log_phi)
    # uvloop: +25-40% on the durable MLLP ACK path (benchmarks/README.md).
    anyio.run(lambda: run_serve(config, sandbox=args.sandbox), backend="asyncio",
              backend_options={"use_uvloop": _has_uvloop()})
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:   # not on every platform (Windows)
        return False
    return True


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="run the adapter: MLLP and HTTP listeners, workers",
        description="Run the MLLP listener, the HTTP endpoints (FHIR subscriptions, OnCall webhooks, "
                    "health, metrics) and the workers until SIGINT/SIGTERM. "
                    "SIGHUP reloads the mapping files.")
    parser.add_argument("--sandbox", action="store_true",
                        help="also run the local OnCall sandbox (127.0.0.1:8900 unless [sandbox] says "
                             "otherwise) in this process and send everything to it")
    parser.set_defaults(handler=_serve)
