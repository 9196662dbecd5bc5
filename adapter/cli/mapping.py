"""`oncall-adapter map` and `oncall-adapter mappings check|reference`.

`map` prints what each message would become, calling no one: JSON lines (one per message), or a
readable listing on a terminal. `--compare OLD NEW` prints the field-level differences between two
mapping folders instead, for files or the last N stored envelopes (`--stored N --store URL`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapter.errors import InputError
from adapter.mapping.compare import compare, outcome
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import SHIPPED_DIR, default_dirs, load_mapping_set

__all__ = ["register", "split_messages"]

_MLLP = re.compile(rb"[\x0b\x1c]")


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file: one JSON document, or HL7 messages (each starts at a line `MSH`;
    MLLP framing bytes and blank lines between messages are tolerated)."""
    stripped = data.strip()
    if stripped.startswith((b"{", b"[")):
        return [stripped]
    text = _MLLP.sub(b"\r", data)
    starts = [m.start() for m in re.finditer(rb"(?:^|[\r\n])MSH", text)]
    out = []
    for i, start in enumerate(starts):
        chunk = text[start:starts[i + 1] if i + 1 < len(starts) else len(text)].strip(b"\r\n \t")
        if chunk:
            out.append(chunk)
    return out or ([stripped] if stripped else [])


def _source_of(payload: bytes, forced: str | None) -> tuple[str, str]:
    if forced:
        return forced, ""
    if payload.startswith((b"{", b"[")):
        try:
            doc = json.loads(payload)
        except ValueError:
            return "oncall", ""
        if isinstance(doc, dict) and "resourceType" in doc:
            return "fhir", str(doc["resourceType"])
        return "oncall", str(doc.get("event", "")) if isinstance(doc, dict) else ""
    return "hl7v2", ""


def _config_defaults(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """mappings.dir and mappings.timezone from the configuration, unless given on the line."""
    user_dir, tz = getattr(args, "mappings", None), getattr(args, "timezone", None)
    if user_dir is None or tz is None:
        from adapter.config import load_config
        cfg = load_config(args.config)
        user_dir = user_dir or cfg.mappings.dir
        tz = tz or cfg.mappings.timezone
    return (Path(user_dir) if user_dir else None), tz


def _load(folder: Path | None, tz: str | None, *, alone: bool = False) -> MappingSet:
    if alone and folder is not None:
        return load_mapping_set([folder], timezone=tz)
    return load_mapping_set(default_dirs(folder), timezone=tz)


def _payloads(args: argparse.Namespace) -> Iterator[tuple[str, str, str, bytes]]:
    """(label, source, kind, payload) for every message of every file."""
    for name in args.files:
        path = Path(name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror})") from None
        for i, payload in enumerate(split_messages(data), start=1):
            source, kind = _source_of(payload, args.source)
            yield f"{name}#{i}", source, args.kind or kind, payload


def _stored(args: argparse.Namespace) -> list[tuple[str, str, str, bytes]]:
    import anyio

    from adapter.config import load_config
    from adapter.runtime import build_store
    from adapter.store import open_store

    async def fetch() -> list[tuple[str, str, str, bytes]]:
        store = open_store(args.store) if args.store else build_store(load_config(args.config))
        await store.open()
        try:
            envelopes = await store.list(limit=args.stored)
        finally:
            await store.close()
        return [(f"envelope {e.id}", str(e.source), e.kind, e.payload) for e in envelopes
                if e.payload is not None]
    return anyio.run(fetch)


def _map(args: argparse.Namespace) -> int:
    user_dir, tz = _config_defaults(args)
    items = _stored(args) if args.stored else list(_payloads(args))
    if not items:
        raise InputError("no messages given: name files, or use --stored N --store URL")
    if args.compare:
        old = _load(Path(args.compare[0]), tz)
        new = _load(Path(args.compare[1]), tz)
        changed = 0
        for label, source, kind, payload in items:
            diffs = compare(old, new, kind, payload, source)
            changed += bool(diffs)
            print(f"{label}: {'no change' if not diffs else f'{len(diffs)} difference(s)'}")
            for d in diffs:
                print(f"  {d.render()}")
        print(f"{changed} of {len(items)} message(s) map differently "
              f"(old {old.version}, new {new.version})")
        return 0
    mapping_set = _load(user_dir, tz)
    failed = 0
    tty = sys.stdout.isatty() and not args.json
    for label, source, kind, payload in items:
        result = outcome(mapping_set, kind, payload, source)
        failed += "error" in result
        _print(label, result, tty)
    return 1 if failed else 0


def _print(label: str, result: dict[str, Any], tty: bool) -> None:
    if not tty:
        print(json.dumps({"message": label, **result}, ensure_ascii=False, sort_keys=False))
        return
    print(f"== {label}  route: {result.get('route') or '(none)'}")
    if "error" in result:
        print(f"   ERROR {result['error']}")
    for op in result.get("operations", []):
        print(f"   {op['kind']}")
        for key, value in op.items():
            if key != "kind":
                print(f"     {key:<26} {json.dumps(value, ensure_ascii=False)}")


def _check(args: argparse.Namespace) -> int:
    tz = args.timezone
    mapping_set = _load(Path(args.dir), tz, alone=args.alone)
    by_lang: dict[str, int] = {}
    for route in mapping_set.routes:
        by_lang[route.language] = by_lang.get(route.language, 0) + 1
    counts = ", ".join(f"{n} {lang}" for lang, n in sorted(by_lang.items()))
    print(f"mappings are valid: {len(mapping_set.files)} file(s), {len(mapping_set.routes)} route(s) "
          f"({counts}), version {mapping_set.version}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from adapter.mapping.reference import render_reference
    text = render_reference()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}")
    else:
        print(text, end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    m = subparsers.add_parser(
        "map", help="show the operations messages would produce (calls no one)",
        description="Map messages through the mapping files and print the operations, as JSON lines "
                    "(or a readable listing on a terminal). Exit status 1 when a message does not map.")
    m.add_argument("files", nargs="*", metavar="FILE", help="HL7 v2 files (several messages each allowed), "
                   "FHIR resources or OnCall JSON")
    m.add_argument("--mappings", metavar="DIR", help="user mapping folder (default: mappings.dir); "
                   "it overrides the shipped files one by one")
    m.add_argument("--timezone", metavar="TZ", help="time zone for times without offset "
                   "(default: mappings.timezone)")
    m.add_argument("--source", choices=["hl7v2", "fhir", "oncall"], help="force the source language")
    m.add_argument("--kind", help="envelope kind when the payload does not say it (e.g. appointment_updated)")
    m.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    m.add_argument("--compare", nargs=2, metavar=("OLD_DIR", "NEW_DIR"),
                   help="print the field-level differences between two mapping folders")
    m.add_argument("--stored", type=int, metavar="N", help="use the last N stored envelopes instead of files")
    m.add_argument("--store", metavar="URL",
                   help="store URL for --stored (sqlite:///path, postgresql://...); default: [store] url")
    m.set_defaults(handler=_map)

    ms = subparsers.add_parser("mappings", help="validate mapping folders, print the mapping reference",
                               description="Work with mapping files without running the adapter.")
    cmds = ms.add_subparsers(dest="mappings_command", metavar="ACTION", required=True)
    check = cmds.add_parser("check", help="validate a mapping folder (over the shipped files); exit 1 "
                            "with file:line:column on the first error")
    check.add_argument("dir", metavar="DIR", nargs="?", default=str(SHIPPED_DIR),
                       help="the folder (default: the shipped mappings)")
    check.add_argument("--alone", action="store_true", help="check the folder by itself, without the "
                       "shipped files under it")
    check.add_argument("--timezone", metavar="TZ", help="time zone to validate with (default UTC)")
    check.set_defaults(handler=_check)
    ref = cmds.add_parser("reference", help="print (or --write) the generated mapping file reference")
    ref.add_argument("--write", metavar="PATH", help="write it to PATH (docs/mapping-reference.md)")
    ref.set_defaults(handler=_reference)


