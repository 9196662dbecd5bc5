"""`oncall-adapter scrape contacts`: page through OnCall's roster contacts now and queue the new and
changed ones for the EMR (the same work the scheduled scrape does; a running `serve` applies them).
"""

from __future__ import annotations

import argparse
import json

import anyio

from adapter.errors import AdapterError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    scrape = subparsers.add_parser("scrape", help="find changes OnCall sends no webhook for",
                                   description="Find changes in OnCall that no webhook announces.")
    sub = scrape.add_subparsers(dest="scrape_command", metavar="WHAT", required=True)
    contacts = sub.add_parser(
        "contacts", help="scrape roster contacts now; queue new and changed ones for the EMR",
        description="Page through GET /contacts/, compare each contact with the hash seen last time "
                    "and queue the new and changed ones (source contacts_scrape) for delivery to the EMR. "
                    "Prints counts only, never contact data.")
    contacts.add_argument("--json", action="store_true", help="print the counts as JSON")
    contacts.set_defaults(handler=_contacts)


def _contacts(args: argparse.Namespace) -> int:
    from adapter.config import load_config
    from adapter.oncall.client import OnCallClient
    from adapter.runtime import build_store
    from listeners.scrape import scrape_contacts_once

    config = load_config(args.config)
    api_key = config.secret("oncall", "api_key")
    if not api_key:
        raise AdapterError("no OnCall API key",
                           hint="set ONCALL_ADAPTER_ONCALL__API_KEY or oncall.api_key_file")

    async def main() -> int:
        store = build_store(config)   # the same store, schema and options as `serve`
        await store.open()
        try:
            oncall = config.oncall
            async with OnCallClient(api_key=api_key, region=oncall.region, base_url=oncall.base_url,
                                    auth_scheme=config.oncall.auth_scheme,
                                    read_timeout=config.oncall.timeout_seconds,
                                    max_in_flight=config.oncall.max_in_flight) as client:
                report = await scrape_contacts_once(store, client)
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()
        counts = {"seen": report.seen, "new": report.new, "changed": report.changed,
                  "unchanged": report.unchanged, "queued": report.queued, "elapsed_ms": report.elapsed_ms}
        if args.json:
            print(json.dumps(counts))
        else:
            print(f"contacts: {report.seen} seen, {report.new} new, {report.changed} changed, "
                  f"{report.unchanged} unchanged; {report.queued} queued for the EMR "
                  f"({report.elapsed_ms:.0f} ms)")
        return 0

    return anyio.run(main)
