"""HL7 v2 paths in terser notation: a value that parses, formats and reads a tokenised message.

    PID-5-1         first component of the first repetition of PID-5 in the first PID
    PID-3(2)-1      component 1 of the second repetition of PID-3
    PID-13(*)-4     component 4 of every repetition of PID-13 (a list)
    AIP(2)-3-1      the second AIP segment; AIP(*)-3-1 every AIP segment (a list)
    ZPI-2           Z-segments are addressed like any other

Repetitions, occurrences, components and subcomponents count from 1 and default to 1.
Reading is tokenisation-only (adapter.hl7.er7); hl7apy's structure tables are consulted only by
`check_path`, at mapping load, to reject a field or component the segment cannot have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from adapter.hl7.er7 import Message, Segment, leaf

__all__ = ["KNOWN_VERSIONS", "Hl7Path", "Scope", "check_path", "segment_known"]

_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\((?P<occ>[1-9]\d*|\*)\))?"
    r"-(?P<field>[1-9]\d*)(?:\((?P<rep>[1-9]\d*|\*)\))?"
    r"(?:-(?P<comp>[1-9]\d*)(?:-(?P<sub>[1-9]\d*))?)?$"
)

# The versions whose structure hl7apy knows; a path is valid when one of the allowed versions has it.
KNOWN_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")


@dataclass(frozen=True, slots=True)
class Scope:
    """A message and the segment range [start, end) searched first (one group of an `each`)."""

    message: Message
    start: int = 0
    end: int | None = None
    charset: str = "latin-1"

    def segments(self, name: str) -> list[Segment]:
        """Occurrences of `name` inside the scope, or in the whole message if none is inside."""
        segs = self.message.segments
        if self.start or self.end is not None:
            inside = [s for s in segs[self.start:self.end] if s.name == name]
            if inside:
                return inside
        return [s for s in segs if s.name == name]

    def groups(self, name: str) -> list[Scope]:
        """One scope per `name` segment, running to the next `name` segment (SIU patient groups)."""
        segs = self.message.segments
        end = len(segs) if self.end is None else self.end
        starts = [i for i in range(self.start, end) if segs[i].name == name]
        return [Scope(self.message, s, starts[k + 1] if k + 1 < len(starts) else end, self.charset)
                for k, s in enumerate(starts)]


@dataclass(frozen=True, slots=True)
class Hl7Path:
    segment: str
    field: int
    occurrence: int | None = 1      # None: every occurrence
    repetition: int | None = 1      # None: every repetition
    component: int = 1
    subcomponent: int = 1

    @classmethod
    def parse(cls, text: str) -> Hl7Path:
        """Parse terser notation; raises ValueError saying what was expected."""
        m = _PATH.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not an HL7 path: expected SEG[(n|*)]-FIELD[(n|*)][-COMP[-SUB]], "
                             "e.g. PID-5-1, PID-3(2)-1, PID-13(*)-4, AIP(2)-3")
        def num(g: str | None, default: int | None = 1) -> int | None:
            return default if g is None else (None if g == "*" else int(g))
        return cls(segment=m["seg"], field=int(m["field"]), occurrence=num(m["occ"]),
                   repetition=num(m["rep"]), component=int(m["comp"] or 1), subcomponent=int(m["sub"] or 1))

    def __str__(self) -> str:
        occ = "" if self.occurrence == 1 else f"({self.occurrence or '*'})"
        rep = "" if self.repetition == 1 else f"({self.repetition or '*'})"
        tail = ""
        if self.component != 1 or self.subcomponent != 1:
            tail = f"-{self.component}" + (f"-{self.subcomponent}" if self.subcomponent != 1 else "")
        return f"{self.segment}{occ}-{self.field}{rep}{tail}"

    @property
    def is_list(self) -> bool:
        """True when the path can yield several values (a `*` occurrence or repetition)."""
        return self.occurrence is None or self.repetition is None

    def read(self, scope: Scope | Message) -> str | list[str]:
        """The decoded value ('' when absent), or a list of values for a `*` path."""
        if isinstance(scope, Message):
            scope = Scope(scope)
        segs = scope.segments(self.segment)
        if self.occurrence is not None:
            segs = segs[self.occurrence - 1:self.occurrence]
        values = [v for seg in segs for v in self._from_segment(seg, scope.charset)]
        if self.is_list:
            return values
        return values[0] if values else ""

    def _from_segment(self, seg: Segment, charset: str) -> Iterable[str]:
        if self.repetition is not None:
            return [seg.value(self.field, self.repetition, self.component, self.subcomponent,
                              charset=charset)]
        if seg.name == "MSH" and self.field <= 2:
            return [seg.value(self.field)]
        d = seg.delimiters
        return [leaf(rep, d, self.component, self.subcomponent, charset=charset)
                for rep in seg.repetitions(self.field)]


def segment_known(name: str, versions: Iterable[str] = KNOWN_VERSIONS) -> bool:
    """True for Z-segments and for segments one of the versions defines."""
    return name.startswith("Z") or any(_segment_fields(name, v) is not None for v in versions)


def check_path(path: Hl7Path, versions: Iterable[str] = KNOWN_VERSIONS) -> str | None:
    """Why the path is impossible in every given version (None when one version allows it).

    Z-segments are site-defined: any field number is accepted for them.
    """
    if path.segment.startswith("Z"):
        return None
    versions = tuple(versions)
    unknown = [v for v in versions if v not in KNOWN_VERSIONS]
    if unknown:
        return f"unknown HL7 version(s) {', '.join(unknown)}; known: {', '.join(KNOWN_VERSIONS)}"
    structures = [(v, s) for v in versions if (s := _segment_fields(path.segment, v)) is not None]
    if not structures:
        return (f"segment {path.segment} does not exist in HL7 v{'/'.join(versions)} "
                "(site-defined segments must start with Z)")
    best = max(len(s) for _, s in structures)
    if path.field > best:
        return (f"{path.segment} has at most {best} fields in HL7 v{'/'.join(versions)}, "
                f"so {path.segment}-{path.field} cannot exist")
    comps, subs = 0, 0
    for _, fields in structures:
        if path.field <= len(fields):
            children = _children(fields[path.field - 1])
            comps = max(comps, len(children) or 1)
            if path.component <= len(children):
                subs = max(subs, len(_children(children[path.component - 1])) or 1)
            elif path.component == 1:
                subs = max(subs, 1)
    if path.component > comps:
        return (f"{path.segment}-{path.field} has at most {comps} component(s), "
                f"so component {path.component} cannot exist")
    if path.subcomponent > max(subs, 1):
        return (f"{path.segment}-{path.field}-{path.component} has at most {max(subs, 1)} "
                f"subcomponent(s), so subcomponent {path.subcomponent} cannot exist")
    return None


def _children(node: Any) -> tuple[Any, ...]:
    """The sub-elements of a reference node ('sequence' nodes have some, 'leaf' nodes none)."""
    spec = node[1]
    return tuple(spec[1]) if spec[0] == "sequence" else ()


@lru_cache(maxsize=512)
def _segment_fields(name: str, version: str) -> tuple[Any, ...] | None:
    from hl7apy import load_reference  # load-time only: hl7apy is not on the hot path
    from hl7apy.exceptions import ChildNotFound, UnsupportedVersion

    try:
        ref = load_reference(name, "Segment", version)
    except (ChildNotFound, UnsupportedVersion):
        return None
    return tuple(ref[1])
