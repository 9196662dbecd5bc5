"""`oncall-adapter reconcile`: compare the crosswalk, OnCall and the EMR; report; queue safe fixes."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from adapter.errors import AdapterError, InputError

__all__ = ["parse_when", "register"]


_DESCRIPTION = """\
Compare the crosswalk, OnCall (every roster contact; the appointments in a time window) and, when
configured, the EMR (its FHIR server by search, or an export file given with --emr-export: a FHIR
Bundle .json, FHIR .ndjson, or .csv with a column mapping), and report: EMR patients missing in
OnCall, contacts without an EMR id, duplicates (one EMR id on several contacts, or one e-mail and
birth date), field mismatches (name, e-mail, phone, birth date, sex), appointments out of sync (time,
duration, cancelled) and crosswalk entries whose object is gone.

THE REPORT SHOWS PATIENT DATA (names, e-mails, phones, birth dates): it is printed on this terminal
or written to the file you name, nowhere else; keep it where patient records may be kept. The logs
carry only ids and counts.

--fix shows the safe corrections (set empty EMR id fields, patch mismatched fields from the EMR,
relink or forget crosswalk entries, create missing contacts through the feed's own look-up-first
upsert, reschedule or cancel as the EMR says); with --yes it queues them (source reconcile) for a
running `oncall-adapter serve` to apply. Duplicates and what needs judgement are left to a person."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconcile", help="report drift between OnCall, the crosswalk and the EMR (shows patient data)",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--since", metavar="WHEN", type=parse_when,
                        help="appointments starting from WHEN (YYYY-MM-DD or ISO datetime; "
                             "default: reconcile.window_past_days, 7, ago)")
    parser.add_argument("--until", metavar="WHEN", type=parse_when,
                        help="appointments starting before WHEN (default: reconcile.window_future_days, "
                             "90, from now)")
    parser.add_argument("--emr-export", metavar="PATH", type=Path,
                        help="read the EMR from an export file (.json Bundle, .ndjson, .csv) instead of "
                             "searching fhir.emr_base_url")
    parser.add_argument("--no-emr", action="store_true",
                        help="do not consult the EMR (compare OnCall with the crosswalk only)")
    parser.add_argument("--csv-columns", metavar="MAP",
                        help="CSV columns as field=Column,...; fields: id, first_name, last_name, email, "
                             "phone, sex, date_of_birth (default: the field names)")
    parser.add_argument("--csv-date-format", metavar="FMT", help="strptime format of CSV birth dates "
                        "(default ISO YYYY-MM-DD)")
    parser.add_argument("--csv-delimiter", metavar="CHAR", help="CSV delimiter (default ,)")
    parser.add_argument("--format", choices=("table", "json", "csv", "html"), default="table",
                        help="report format (default table)")
    parser.add_argument("--output", metavar="FILE", type=Path,
                        help="write the report to FILE (created readable by you only) instead of stdout")
    parser.add_argument("--concurrency", metavar="N", type=int,
                        help="OnCall requests in flight while collecting (default 4)")
    parser.add_argument("--sandbox", action="store_true",
                        help="reconcile against the local sandbox that `serve --sandbox` runs")
    parser.add_argument("--fix", action="store_true",
                        help="show the safe corrections (queue them with --yes)")
    parser.add_argument("--yes", action="store_true", help="with --fix: queue the corrections")
    parser.add_argument("--fix-email", action="store_true",
                        help="with --fix: also correct e-mails (OnCall may refuse to change a contact's "
                             "e-mail)")
    parser.set_defaults(handler=_reconcile)


def parse_when(text: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO 8601 datetime (UTC when it has no offset)."""
    try:
        if len(text) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM-DD or an ISO 8601 datetime") from None
    return value if value.utcoffset() is not None else value.replace(tzinfo=dt.UTC)


def _reconcile(args: argparse.Namespace) -> int:
    from adapter.config import load_config

    if args.yes and not args.fix:
        raise InputError("--yes confirms --fix", hint="add --fix to queue the corrections")
    if args.emr_export and args.no_emr:
        raise InputError("--emr-export and --no-emr contradict each other", hint="keep one")
    config = load_config(args.config)
    api_key = config.sandbox.token if args.sandbox else config.secret("oncall", "api_key")
    if args.sandbox:   # the sandbox `serve --sandbox` runs, as configured in [sandbox]
        config = config.model_copy(update={"oncall": config.oncall.model_copy(update={
            "base_url": f"http://{config.sandbox.host}:{config.sandbox.port}"})})
    if not api_key:
        raise AdapterError("no OnCall API key",
                           hint="set ONCALL_ADAPTER_ONCALL__API_KEY or oncall.api_key_file")
    rc = config.reconcile
    # The command line wins over [reconcile]; both default to the section's values.
    args.emr_export = args.emr_export or rc.emr_export
    args.csv_columns = args.csv_columns or rc.csv_columns
    args.csv_date_format = args.csv_date_format or rc.csv_date_format
    args.csv_delimiter = args.csv_delimiter or rc.csv_delimiter
    args.concurrency = args.concurrency or rc.concurrency
    now = dt.datetime.now(dt.UTC)
    since = args.since or now - dt.timedelta(days=rc.window_past_days)
    until = args.until or now + dt.timedelta(days=rc.window_future_days)
    if until <= since:
        raise InputError(f"--until ({until.isoformat()}) is not after --since ({since.isoformat()})",
                         hint="give a window that ends after it starts")
    return int(anyio.run(_main, args, config, api_key, since, until))


async def _main(args: argparse.Namespace, config: Any, api_key: str, since: dt.datetime,
                until: dt.datetime) -> int:
    from adapter.oncall.client import OnCallClient
    from adapter.reconcile import reconcile
    from adapter.reconcile.model import Window
    from adapter.reconcile.progress import Progress
    from adapter.runtime import build_store

    store = build_store(config)
    await store.open()
    closers: list[Any] = []
    try:
        oncall = config.oncall
        client = OnCallClient(api_key=api_key, region=oncall.region, base_url=oncall.base_url,
                              auth_scheme=oncall.auth_scheme, timeout=oncall.timeout_seconds,
                              max_in_flight=max(args.concurrency, 1))
        closers.append(client.aclose)
        emr = _emr_source(args, config, closers)
        snapshot, findings = await reconcile(
            store, client, window=Window(since, until), emr=emr, emr_id_label=oncall.emr_id_field_label,
            concurrency=args.concurrency, fix_email=args.fix_email, progress=Progress())
        _write_report(args, snapshot, findings)
        if args.fix:
            await _fix(args, store, findings)
    finally:
        with anyio.CancelScope(shield=True):
            for close in reversed(closers):
                await close()
            await store.close()
    return 0


def _emr_source(args: argparse.Namespace, config: Any, closers: list[Any]) -> Any:
    if args.no_emr or not (args.emr_export or config.fhir.emr_base_url):
        return None
    from adapter.mapping.loader import default_dirs, load_mapping_set
    from adapter.reconcile.emr_data import ExportSource, FHIRSearchSource
    from adapter.reconcile.emr_export import CsvColumns

    mapping_set = load_mapping_set(default_dirs(config.mappings.dir), timezone=config.mappings.timezone)
    if args.emr_export:
        columns = CsvColumns.parse(args.csv_columns, date_format=args.csv_date_format,
                                   delimiter=args.csv_delimiter)
        return ExportSource(args.emr_export, mapping_set, csv_columns=columns)
    from adapter.fhir.emr_client import EMRFHIRClient

    fhir = config.fhir
    password = config.secret("fhir", "emr_password")
    emr = EMRFHIRClient(fhir.emr_base_url, bearer_token=config.secret("fhir", "emr_token"),
                        basic=(fhir.emr_username, password) if fhir.emr_username and password else None,
                        page_limit=100_000)
    closers.append(emr.aclose)
    return FHIRSearchSource(emr, mapping_set)


def _write_report(args: argparse.Namespace, snapshot: Any, findings: list[Any]) -> None:
    from adapter.reconcile.report import ReportMeta, render, summary_line

    meta = ReportMeta(dt.datetime.now(dt.UTC), snapshot.window.since, snapshot.window.until,
                      snapshot.emr_source, len(snapshot.contacts), len(snapshot.appointments))
    text = render(findings, meta, args.format)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        # Patient data: readable by the operator only.
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    except OSError as exc:
        raise InputError(f"cannot write the report to {args.output}: {exc.strerror}",
                         hint="give --output a writable path") from None
    print(f"{summary_line(findings)}\nreport written to {args.output}", file=sys.stderr)


async def _fix(args: argparse.Namespace, store: Any, findings: list[Any]) -> None:
    from adapter.reconcile.fix import plan_fixes, queue_fixes

    plan = plan_fixes(findings)
    # The plan goes to stderr when stdout carries a machine-readable report.
    out = sys.stdout if args.format == "table" or args.output is not None else sys.stderr
    if not args.yes:
        out.write(plan.describe())
        if plan.envelopes:
            out.write("nothing queued: add --yes to queue these corrections\n")
        return
    stored = await queue_fixes(store, plan)
    out.write(f"queued {stored} envelopes ({plan.operations} operations) as run {plan.run_id}; "
              "a running `oncall-adapter serve` applies them (see `oncall-adapter queue`)\n")
