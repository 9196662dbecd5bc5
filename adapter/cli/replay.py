"""`oncall-adapter replay PATH...`: send sample or exported files to a running adapter over its listeners.

HL7 v2 files (`.hl7`, `.txt`; one or many messages; CR, LF or CRLF segment ends; MLLP framing bytes
and FHS/BHS batch envelopes tolerated) go over MLLP on one connection, each message waiting for its
ACK. FHIR files (`.json`: a resource or a Bundle; `.ndjson`: one resource a line) go over HTTP as a
rest-hook delivers them (PUT {base}/{type}/{id}, a Bundle POSTed to {base}). `--dry-run` sends
nothing: it maps each message with the configured mappings and prints the operations (which hold
patient data, like the files themselves).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

__all__ = ["Message", "configured_mappings", "read_messages", "register", "split_hl7"]

HL7_SUFFIXES = frozenset({".hl7", ".txt", ".er7"})
FHIR_SUFFIXES = frozenset({".json", ".ndjson"})
_SEGMENT_END = re.compile(rb"\r\n|\n|\r")
_BATCH = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(frozen=True, slots=True)
class Message:
    origin: str              # "file:index" for the summary
    kind: str                # "hl7v2" or "fhir"
    payload: bytes
    resource: dict[str, Any] | None = None


def split_hl7(data: bytes) -> list[bytes]:
    """Messages in a file: segments re-joined with CR, a new message at each MSH."""
    data = data.replace(b"\x0b", b"\n").replace(b"\x1c", b"\n")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    messages: list[list[bytes]] = []
    for line in _SEGMENT_END.split(data):
        segment = line.lstrip(b" \t")   # indentation is never HL7; trailing blanks may be data
        if not segment.strip() or segment[:3] in _BATCH:
            continue
        if segment.startswith(b"MSH"):
            messages.append([])
        if messages:
            messages[-1].append(segment)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def _fhir_resources(path: Path, data: bytes) -> list[dict[str, Any]]:
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    return [json.loads(data)]


def read_messages(paths: list[Path]) -> list[Message]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in HL7_SUFFIXES | FHIR_SUFFIXES))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    out: list[Message] = []
    for file in files:
        data = file.read_bytes()
        if file.suffix in FHIR_SUFFIXES:
            try:
                resources = _fhir_resources(file, data)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg})") from None
            out.extend(Message(f"{file}:{i + 1}", "fhir", json.dumps(r).encode(), r)
                       for i, r in enumerate(resources))
        else:
            out.extend(Message(f"{file}:{i + 1}", "hl7v2", m) for i, m in enumerate(split_hl7(data)))
    return out


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 0

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _ack_outcome(ack: bytes) -> tuple[str, str]:
    """(MSA-1, reason) of an ACK: MSA-3 text and ERR locations/codes when present."""
    from adapter.hl7.er7 import Message as Er7

    try:
        parsed = Er7.parse(ack.decode("utf-8", errors="replace"))
    except Exception:
        return "??", "unreadable ACK"
    msa = parsed.segment("MSA")
    if msa is None:
        return "??", "ACK without MSA"
    reasons = [msa.value(3)] if msa.value(3) else []
    for err in parsed.all("ERR"):
        where = "-".join(p for p in (err.value(2, component=1), err.value(2, component=3)) if p)
        text = err.value(8) or err.value(3, component=2)
        reasons.append(" ".join(p for p in (where, text) if p))
    return msa.value(1), "; ".join(r for r in reasons if r)


async def _send_mllp(messages: list[Message], host: str, port: int, wait: float,
                     progress: _Progress) -> list[tuple[Message, str, str]]:
    from listeners.mllp.framing import FrameDecoder, encode_frame

    results: list[tuple[Message, str, str]] = []
    if not messages:
        return results
    async with await anyio.connect_tcp(host, port) as stream:
        decoder = FrameDecoder()
        for message in messages:
            await stream.send(encode_frame(message.payload))
            conditional = _accept_ack_type(message.payload) in _CONDITIONAL_ACKS
            frames: list[Any] = []
            # MSH-15 NE/ER/SU: the receiver may rightly answer nothing; wait briefly, then go on.
            with anyio.move_on_after(min(wait, _CONDITIONAL_WAIT)) if conditional else anyio.fail_after(wait):
                while not frames:
                    frames = decoder.feed(await stream.receive())
            if frames:
                code, reason = _ack_outcome(frames[0].payload)
            else:
                code, reason = _NO_ACK, f"MSH-15 = {_accept_ack_type(message.payload)} asks for no accept ACK"
            results.append((message, code, reason))
            progress.step()
    return results


_CONDITIONAL_ACKS = frozenset({"NE", "ER", "SU"})
_CONDITIONAL_WAIT = 2.0
_NO_ACK = "none"


def _accept_ack_type(payload: bytes) -> str:
    """MSH-15 of a raw message ('' when absent or unreadable)."""
    from adapter.hl7.er7 import Message as Er7

    try:
        return Er7.parse(payload.decode("latin-1")).accept_ack_type.upper()
    except Exception:
        return ""


async def _send_fhir(messages: list[Message], base: str, headers: dict[str, str], wait: float,
                     progress: _Progress) -> list[tuple[Message, str, str]]:
    import httpx

    results: list[tuple[Message, str, str]] = []
    async with httpx.AsyncClient(timeout=wait, headers={
            "Content-Type": "application/fhir+json", **headers}) as client:
        for message in messages:
            resource = message.resource or {}
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if rtype == "Bundle" or not rid:
                url = base if rtype == "Bundle" else f"{base}/{rtype}"
                response = await client.post(url, content=message.payload)
            else:
                response = await client.put(f"{base}/{rtype}/{rid}", content=message.payload)
            reason = ""
            if response.status_code >= 400:
                try:
                    issues = response.json().get("issue", [])
                    reason = "; ".join(" ".join(filter(None, [", ".join(i.get("expression", [])),
                                                              i.get("diagnostics")])) for i in issues)
                except ValueError:
                    reason = response.text[:200]
            results.append((message, str(response.status_code), reason))
            progress.step()
    return results


def configured_mappings(config: Any) -> Any:
    """The mapping set `serve` would load (shipped files overridden by the configured folder), able
    to show reconcile envelopes too, as the workers see them."""
    from adapter.reconcile.apply import ReconcileMappings
    from adapter.runtime import MappingHolder, mapping_dirs

    return ReconcileMappings(MappingHolder(mapping_dirs(config), config.mappings.timezone).get())


def _dry_run(args: argparse.Namespace, messages: list[Message]) -> int:
    from adapter.config import load_config
    from adapter.hl7.er7 import Message as Er7

    mapping_set = configured_mappings(load_config(args.config))
    failures = 0
    for message in messages:
        try:
            if message.kind == "hl7v2":
                parsed = Er7.parse(message.payload.decode("latin-1"))   # MSH is ASCII in any charset
                kind = f"{parsed.message_type}^{parsed.trigger}"
            else:
                kind = str((message.resource or {}).get("resourceType"))
            result = mapping_set.map(kind, message.payload, source=message.kind)
            ops = [op.to_json() if hasattr(op, "to_json") else op for op in result.operations]
            print(json.dumps({"message": message.origin, "kind": kind, "route": str(result.route),
                              "operations": ops}, default=str))
        except Exception as exc:
            failures += 1
            print(json.dumps({"message": message.origin, "error": f"{type(exc).__name__}: {exc}"}))
    print(f"mapped {len(messages) - failures} of {len(messages)} message(s), {failures} failed",
          file=sys.stderr)
    return 1 if failures else 0


def _summary(results: list[tuple[Message, str, str]], total: int) -> int:
    counts = Counter(code for _m, code, _r in results)
    shown = ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))
    print(f"sent {len(results)} of {total} message(s): {shown or 'nothing'}")
    bad = [(m, c, r) for m, c, r in results if c not in ("AA", "CA", _NO_ACK) and not c.startswith("2")]
    for message, code, reason in bad:
        print(f"  {message.origin}: {code} {reason}".rstrip())
    return 1 if bad or len(results) < total else 0


def _run(args: argparse.Namespace) -> int:
    try:
        messages = read_messages([Path(p) for p in args.paths])
    except (FileNotFoundError, ValueError) as exc:
        print(f"oncall-adapter: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(args, messages)
    host, _, port = args.mllp.rpartition(":")
    headers = dict([h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()] for h in args.header)
    progress = _Progress(len(messages))

    async def main() -> list[tuple[Message, str, str]]:
        hl7 = [m for m in messages if m.kind == "hl7v2"]
        fhir = [m for m in messages if m.kind == "fhir"]
        results = await _send_mllp(hl7, host or "127.0.0.1", int(port), args.timeout, progress)
        return results + await _send_fhir(fhir, args.http.rstrip("/"), headers, args.timeout, progress)

    try:
        results = anyio.run(main)
    except (OSError, TimeoutError) as exc:
        progress.close()
        print(f"oncall-adapter: replay stopped: {type(exc).__name__}: {exc} (is the adapter running and "
              f"listening on {args.mllp} / {args.http}?)", file=sys.stderr)
        return 1
    progress.close()
    return _summary(results, len(messages))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "replay", help="send HL7 v2 / FHIR files to a running adapter over its listeners",
        description="Send sample or exported files to a running adapter: HL7 v2 (.hl7/.txt, one or many "
                    "messages a file) over MLLP, FHIR (.json/.ndjson) over HTTP; prints a summary of "
                    "the ACKs / HTTP statuses with the reasons. Folders are searched recursively.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    parser.add_argument("--mllp", default="127.0.0.1:2575", metavar="HOST:PORT",
                        help="the adapter's MLLP listener (default 127.0.0.1:2575)")
    parser.add_argument("--http", default="http://127.0.0.1:8080/fhir", metavar="URL",
                        help="the adapter's FHIR endpoint (default http://127.0.0.1:8080/fhir)")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="an HTTP header for FHIR deliveries, e.g. the subscription channel secret")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer")
    parser.add_argument("--dry-run", action="store_true",
                        help="send nothing: map each message and print the operations "
                             "(they hold patient data)")
    parser.set_defaults(handler=_run)
