"""Source languages: how a route's paths read its kind of payload.

One engine, one file format, three sources. Each `PathLanguage` parses a payload into a context,
compiles path texts at load (raising ValueError with what was expected), and splits a context into
repeating groups for `each:`. Paths return a value ('' when absent) or a list for multi-valued paths.

- `hl7v2`: terser paths over the light ER7 tokenisation (adapter.hl7.path)
- `fhir`: FHIRPath via fhirpathpy (adapter.mapping.fhirpath)
- `oncall`: dotted JSON paths such as `participants[0].email` or `participants[*].email`
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adapter.errors import HL7InputError, InputError
from adapter.hl7.er7 import Message, codec_for, decode_bytes
from adapter.hl7.path import KNOWN_VERSIONS, Hl7Path, Scope, check_path
from adapter.mapping.schema import Match

__all__ = ["LANGUAGES", "Compiled", "DottedJson", "Hl7v2", "PathLanguage", "Value", "json_payload",
           "language_for_source"]

Value = Any   # str | list[str] | JSON scalars | list[dict] (from `each`) | None


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled path: its text (for error messages) and its reader."""

    text: str
    read: Callable[[Any], Value]
    is_list: bool = False


class PathLanguage(Protocol):
    name: str

    def keys(self, match: Match) -> list[str]:
        """The route-index keys a match covers (e.g. `ADT^A01`)."""

    def compile(self, text: str, match: Match) -> Compiled:
        """Compile a path for routes of this match; ValueError says what is wrong."""

    def compile_group(self, text: str, match: Match) -> Callable[[Any], list[Any]]:
        """Compile the target of an `each:` (repeating group); ValueError when impossible."""

    def parse(self, kind: str, payload: str | bytes) -> tuple[Any, str]:
        """The evaluation context and the route-index key for a payload; InputError when unusable."""


class Hl7v2:
    name = "hl7v2"

    def keys(self, match: Match) -> list[str]:
        assert match.hl7v2 is not None
        return [f"{match.hl7v2.type}^{t}" for t in match.hl7v2.trigger]

    def compile(self, text: str, match: Match) -> Compiled:
        path = Hl7Path.parse(text)
        problem = check_path(path, self._versions(match))
        if problem:
            raise ValueError(problem)
        return Compiled(text, path.read, path.is_list)

    def compile_group(self, text: str, match: Match) -> Callable[[Any], list[Any]]:
        name = text.strip()
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
            raise ValueError(f"`each` takes an HL7 segment name such as PID or AIP, not {text!r}")
        problem = check_path(Hl7Path(name, 1), self._versions(match))
        if problem:
            raise ValueError(problem)
        return lambda scope: scope.groups(name)

    def parse(self, kind: str, payload: str | bytes) -> tuple[Any, str]:
        text = decode_bytes(payload)[0] if isinstance(payload, bytes) else payload
        msg = Message.parse(text)
        mtype, trigger = msg.message_type, msg.trigger
        if not (mtype and trigger):
            parts = kind.split("^")
            if len(parts) < 2:
                raise HL7InputError("MSH-9 has no message type and trigger", location="MSH-9", code="101",
                                    hint="send MSH-9 as TYPE^TRIGGER, e.g. ADT^A04")
            mtype, trigger = parts[0], parts[1]
        return Scope(msg, charset=codec_for(msg.charset, "latin-1")), f"{mtype}^{trigger}"

    @staticmethod
    def _versions(match: Match) -> Sequence[str]:
        assert match.hl7v2 is not None
        return tuple(match.hl7v2.versions or KNOWN_VERSIONS)


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[(\d+|\*)\])?(\.[A-Za-z_][A-Za-z0-9_]*(\[(\d+|\*)\])?)*$")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+|\*)\])?")


class DottedJson:
    """OnCall JSON: `title`, `participants[0].email`, `participants[*].email`, `metadata.emr_id`."""

    name = "oncall"

    def keys(self, match: Match) -> list[str]:
        assert match.oncall is not None
        return list(match.oncall.event)

    def compile(self, text: str, match: Match) -> Compiled:
        steps = self._steps(text)
        many = any(i == "*" for _, i in steps)

        def read(doc: Any) -> Value:
            nodes = _walk([doc], steps)
            if many:
                return ["" if n is None else n for n in nodes]
            return "" if not nodes or nodes[0] is None else nodes[0]
        return Compiled(text, read, many)

    def compile_group(self, text: str, match: Match) -> Callable[[Any], list[Any]]:
        steps = self._steps(text)

        def groups(doc: Any) -> list[Any]:
            out: list[Any] = []
            for node in _walk([doc], steps):
                out.extend(node if isinstance(node, list) else [node])
            return [n for n in out if isinstance(n, dict)]
        return groups

    def parse(self, kind: str, payload: str | bytes) -> tuple[Any, str]:
        doc = json_payload(payload)
        if not kind and isinstance(doc, dict):
            kind = str(doc.get("event", ""))
        return doc, kind

    @staticmethod
    def _steps(text: str) -> list[tuple[str, str | None]]:
        if not _DOTTED.match(text.strip()):
            raise ValueError(f"{text!r} is not a dotted JSON path: expected name[.name][N|*]..., "
                             "e.g. participants[0].email or participants[*].email")
        return [(m[1], m[2]) for m in _STEP.finditer(text.strip())]


def _walk(nodes: list[Any], steps: list[tuple[str, str | None]]) -> list[Any]:
    for key, index in steps:
        nxt: list[Any] = []
        for node in nodes:
            value = node.get(key) if isinstance(node, dict) else None
            if index is None:
                nxt.append(value)
            elif isinstance(value, list):
                if index == "*":
                    nxt.extend(value)
                elif int(index) < len(value):
                    nxt.append(value[int(index)])
        nodes = nxt
    return nodes


def json_payload(payload: str | bytes, error: type[InputError] = InputError) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"the payload is not JSON: {type(exc).__name__} at position {getattr(exc, 'pos', '?')}",
                    hint="send a JSON object") from None


def _fhir() -> PathLanguage:
    from adapter.mapping.fhirpath import FhirPath  # fhirpathpy/antlr load only when a FHIR route exists
    return FhirPath()


LANGUAGES: dict[str, Callable[[], PathLanguage]] = {"hl7v2": Hl7v2, "fhir": _fhir, "oncall": DottedJson}

# Envelope sources (adapter.envelope.Source values) -> source language.
_SOURCES = {"mllp": "hl7v2", "hl7v2": "hl7v2", "fhir": "fhir", "oncall_webhook": "oncall",
            "contacts_scrape": "oncall", "oncall": "oncall"}


def language_for_source(source: str) -> str:
    """The language name for an envelope source (`mllp` -> `hl7v2`) or a language name."""
    try:
        return _SOURCES[str(source)]
    except KeyError:
        known = ", ".join(sorted(_SOURCES))
        raise ValueError(f"unknown source {source!r}; expected one of {known}") from None
