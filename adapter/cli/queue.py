"""`oncall-adapter queue`: depths, retries and dead letters; show, retry, drop and prune envelopes.

Nothing here shows patient data unless asked: `queue show ID --show-phi` prints the payload, the
ordering key (it holds the EMR patient id) and the operations the payload maps to today.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import anyio

from adapter.envelope import Envelope, State, utcnow
from adapter.logging import hash_value
from adapter.store.base import Store

__all__ = ["register"]

_SCAN_LIMIT = 10_000   # queued envelopes scanned to say which wait behind a dead letter


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _decode_payload(envelope: Envelope) -> str:
    """The payload as text, for display: an HL7 v2 message in its MSH-18 charset, anything else as
    UTF-8 (JSON), with Latin-1 as the fallback that always decodes."""
    payload = envelope.payload or b""
    if payload.startswith(b"MSH"):
        from adapter.hl7.er7 import decode_bytes

        return decode_bytes(payload)[0]
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def _with_store(args: argparse.Namespace, body: Callable[[Store, Any], Awaitable[int]]) -> int:
    from adapter.config import load_config
    from adapter.runtime import build_store

    config = load_config(args.config)

    async def main() -> int:
        store = build_store(config)   # the same backend options as serve (PostgreSQL schema, pool)
        await store.open()
        try:
            return await body(store, config)
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()

    return anyio.run(main)


# -- queue (summary) ---------------------------------------------------------------------------
async def _summary(store: Store, _config: Any, *, as_json: bool, limit: int) -> int:
    now = utcnow()
    stats = await store.stats(now=now)
    dead = await store.list(states=[State.DEAD], limit=limit, newest_first=False)
    waiting = await store.list(states=[State.QUEUED], limit=_SCAN_LIMIT, newest_first=False)
    behind = Counter(e.ordering_key for e in waiting)
    rows = [{"id": e.id, "kind": e.kind, "source": str(e.source), "attempts": e.attempts,
             "age": _age(e.received_at, now), "waiting_behind": behind.get(e.ordering_key, 0),
             "reason": e.reason or ""} for e in dead]
    if as_json:
        print(json.dumps({
            "by_state": stats.by_state, "oldest_waiting": stats.oldest_waiting.isoformat()
            if stats.oldest_waiting else None, "retrying": stats.retrying, "blocked_keys": stats.blocked_keys,
            "size_bytes": stats.size_bytes, "dead_letters": rows}, indent=2))
        return 0
    states = "  ".join(f"{s.value} {stats.by_state.get(s.value, 0)}" for s in State)
    print(f"envelopes: {states}")
    print(f"oldest waiting: {_age(stats.oldest_waiting, now)}   retrying: {stats.retrying}   "
          f"store size: {stats.size_bytes / 1e6:.1f} MB")
    if stats.by_source_kind_state:
        print("\nby source and kind:")
        for (source, kind, state), count in sorted(stats.by_source_kind_state.items()):
            print(f"  {source:<16} {kind:<22} {state:<12} {count}")
    print(f"\ndead letters: {stats.by_state.get(State.DEAD.value, 0)}   patients waiting behind one: "
          f"{stats.blocked_keys}")
    for row in rows:
        wait = f", {row['waiting_behind']} later envelope(s) of this patient wait behind it" \
            if row["waiting_behind"] else ""
        print(f"  #{row['id']} {row['kind']} ({row['source']}, {row['attempts']} attempts, "
              f"{row['age']} old{wait})\n      {row['reason']}")
    if rows:
        print("\nfix the cause, then `oncall-adapter queue retry ID|--all`, or "
              "`oncall-adapter queue drop ID --reason TEXT` to unblock the patient")
    return 0


# -- queue show --------------------------------------------------------------------------------
async def _blocker(store: Store, envelope: Envelope) -> Envelope | None:
    """The dead letter this envelope waits behind, if any (an earlier DEAD envelope of its key)."""
    if envelope.state != State.QUEUED:
        return None
    for dead in await store.list(states=[State.DEAD], limit=_SCAN_LIMIT, newest_first=False):
        if dead.ordering_key == envelope.ordering_key and dead.id < envelope.id:
            return dead
    return None


async def _show(store: Store, config: Any, *, envelope_id: int, show_phi: bool) -> int:
    envelope = await store.get(envelope_id)
    if envelope is None:
        print(f"oncall-adapter: no envelope {envelope_id} in the store", file=sys.stderr)
        return 1
    key = envelope.ordering_key if show_phi else hash_value(envelope.ordering_key)
    print(f"envelope #{envelope.id}  {envelope.kind}  from {envelope.source}  state {envelope.state}")
    print(f"  received {envelope.received_at.isoformat()}  attempts {envelope.attempts}  "
          f"ordering key {key}  content sha256 {envelope.content_hash[:16]}")
    for label, value in (("not before", envelope.not_before), ("lease owner", envelope.lease_owner),
                         ("lease until", envelope.lease_until), ("mapping version", envelope.mapping_version),
                         ("reason", envelope.reason)):
        if value:
            print(f"  {label}: {value.isoformat() if isinstance(value, datetime) else value}")
    if envelope.meta:
        print(f"  meta: {json.dumps(envelope.meta, sort_keys=True)}")
    blocker = await _blocker(store, envelope)
    if blocker is not None:
        print(f"  waits behind dead letter #{blocker.id} of the same patient ({blocker.kind})")
    print("history:")
    for entry in await store.history(envelope.id):
        detail = f"  {json.dumps(entry.detail, sort_keys=True, default=str)}" if entry.detail else ""
        print(f"  {entry.at.isoformat()}  {entry.event}{detail}")
    if not show_phi:
        print("(payload and mapped operations hidden: they hold patient data; add --show-phi to see them)")
        return 0
    print("payload (PHI):")
    if envelope.payload is None:
        print("  (purged by retention)")
        return 0
    text = _decode_payload(envelope)
    print("  " + text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\n  ").rstrip())
    await _print_operations(config, envelope, text)
    return 0


async def _print_operations(config: Any, envelope: Envelope, text: str) -> None:
    try:
        from adapter.cli.replay import configured_mappings

        result = configured_mappings(config).map(envelope.kind, envelope.payload or b"",
                                                 source=str(envelope.source))
        ops = [op.to_json() if hasattr(op, "to_json") else op for op in result.operations]
        print(f"operations with the current mappings ({result.mapping_version}) (PHI):")
        print(json.dumps(ops, indent=2, default=str))
    except Exception as exc:   # showing is best effort: the error itself is what the operator needs
        print(f"mapping with the current mappings fails: {type(exc).__name__}: {exc}")


# -- retry, drop, prune ------------------------------------------------------------------------
async def _retry(store: Store, _config: Any, *, envelope_id: int | None, everything: bool) -> int:
    if everything:
        ids = [e.id for e in await store.list(states=[State.DEAD], limit=1_000_000, newest_first=False)]
    else:
        assert envelope_id is not None
        ids = [envelope_id]
    failed = [i for i in ids if not await store.requeue(i, reason="requeued by operator (queue retry)")]
    for envelope_id_ in failed:
        print(f"oncall-adapter: envelope {envelope_id_} is not a dead letter (or quarantined): not requeued",
              file=sys.stderr)
    print(f"requeued {len(ids) - len(failed)} envelope(s)")
    return 1 if failed else 0


async def _drop(store: Store, _config: Any, *, envelope_id: int, reason: str) -> int:
    if await store.drop(envelope_id, reason):
        print(f"dropped envelope {envelope_id}; later envelopes of its patient are no longer blocked by it")
        return 0
    print(f"oncall-adapter: envelope {envelope_id} cannot be dropped (unknown, already done, "
          "or being applied now: try again once it finishes)",
          file=sys.stderr)
    return 1


async def _prune(store: Store, config: Any, *, days: float | None) -> int:
    keep = timedelta(days=days if days is not None else config.retention.completed_days)
    purged = await store.prune(older_than=utcnow() - keep)
    print(f"purged the payloads of {purged} envelope(s) finished more than {keep.days} day(s) ago "
          f"(audit and crosswalk kept; dead letters kept until acted on)")
    return 0


def _positive_days(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("DAYS must be zero or more")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "queue", help="show queue depths, retries and dead letters; show, retry, drop or prune envelopes",
        description="Without an action: depths by state, oldest waiting age, retries and dead letters "
                    "(with the patients waiting behind them). No patient data is shown unless asked.")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--limit", type=int, default=50, help="dead letters listed (default 50)")
    parser.set_defaults(handler=lambda a: _with_store(
        a, lambda s, c: _summary(s, c, as_json=a.json, limit=a.limit)))
    actions = parser.add_subparsers(dest="queue_command", metavar="ACTION")

    show = actions.add_parser("show", help="one envelope: state, reason and history (no PHI by default)")
    show.add_argument("id", type=int, help="envelope id")
    show.add_argument("--show-phi", action="store_true",
                      help="ALSO PRINT PATIENT DATA (PHI): the payload, the ordering key and the "
                           "mapped operations")
    show.set_defaults(handler=lambda a: _with_store(
        a, lambda s, c: _show(s, c, envelope_id=a.id, show_phi=a.show_phi)))

    retry = actions.add_parser("retry", help="requeue a dead letter (attempts reset), or all of them")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?", help="envelope id")
    target.add_argument("--all", action="store_true", help="requeue every dead letter")
    retry.set_defaults(handler=lambda a: _with_store(
        a, lambda s, c: _retry(s, c, envelope_id=a.id, everything=a.all)))

    drop = actions.add_parser("drop", help="give up on an envelope (recorded with a reason); "
                                           "unblocks its patient")
    drop.add_argument("id", type=int, help="envelope id")
    drop.add_argument("--reason", required=True, help="why it is dropped (kept in the audit)")
    drop.set_defaults(handler=lambda a: _with_store(
        a, lambda s, c: _drop(s, c, envelope_id=a.id, reason=a.reason)))

    prune = actions.add_parser("prune", help="purge payloads of finished envelopes "
                                             "(audit and crosswalk kept)")
    prune.add_argument("--older-than", type=_positive_days, metavar="DAYS", dest="days",
                       help="age in days (default: retention.completed_days, 30)")
    prune.set_defaults(handler=lambda a: _with_store(a, lambda s, c: _prune(s, c, days=a.days)))
