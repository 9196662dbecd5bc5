"""`oncall-adapter sandbox`: run the local OnCall API (tests, demos, benchmarks)."""

from __future__ import annotations

import argparse
import functools

import anyio

from adapter.oncall.sandbox.server import serve_sandbox

__all__ = ["register", "run", "serve_sandbox"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sandbox", help="run a local OnCall API sandbox (same endpoints, paging, errors, webhooks)",
        description="A faithful local OnCall API with a control API under /__sandbox__/ (state, "
                    "e-mails, reset, seed, changes made inside OnCall, fault injection). Keys: a "
                    "provider key (--token) and a coordinator key (--coordinator-token).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8900, help="port to bind, 0 for any (default: 8900)")
    parser.add_argument("--db", default=":memory:", metavar="PATH",
                        help="SQLite file keeping the sandbox state (default: in memory)")
    parser.add_argument("--page-size", type=int, default=5, metavar="N",
                        help="items per page of every list (default: 5)")
    parser.add_argument("--webhook-url", metavar="URL",
                        help="where to POST appointment_created / appointment_updated webhooks")
    parser.add_argument("--webhook-secret-header", metavar="'NAME: VALUE'",
                        help="a header sent with every webhook (the receiver's shared secret)")
    parser.add_argument("--token", default="sandbox-token",
                        help="the provider API key (default: sandbox-token)")
    parser.add_argument("--coordinator-token", default="sandbox-coordinator-token",
                        help="the coordinator API key (default: sandbox-coordinator-token)")
    parser.add_argument("--base-url", metavar="URL",
                        help="public base URL in emitted links (default: http://HOST:PORT)")
    parser.add_argument("--admin-token", metavar="T",
                        help="require X-Sandbox-Admin-Token: T on the /__sandbox__/ control API")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    opts = {"db_path": args.db, "page_size": args.page_size, "webhook_url": args.webhook_url,
            "webhook_secret_header": args.webhook_secret_header, "base_url": args.base_url,
            "admin_token": args.admin_token}
    keys = {"token": args.token, "coordinator_token": args.coordinator_token}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(functools.partial(
                serve_sandbox, args.host, args.port, handle_signals=True, **keys,
                **{k: v for k, v in opts.items() if v is not None}))
            print(f"OnCall sandbox on http://{args.host}:{port} (provider key {args.token!r}, "
                  f"coordinator key {args.coordinator_token!r}); Ctrl-C to stop", flush=True)

    anyio.run(main)
    return 0
