"""Field-level differences between what two mapping sets make of the same payload.

Used by `oncall-adapter map --compare OLD NEW`: before deploying a mapping change, run recent
messages through both sets and read what would change, field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapter.errors import InputError
from adapter.mapping.engine import MappingResult, MappingSet

__all__ = ["FieldDiff", "compare", "diff_json", "outcome"]

_MISSING = object()


@dataclass(frozen=True)
class FieldDiff:
    path: str           # e.g. "route", "operations[0].participants[1].email"
    old: Any            # _MISSING shown as "(absent)"
    new: Any

    def render(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    return repr(value)


def outcome(mapping_set: MappingSet, kind: str, payload: str | bytes, source: str) -> dict[str, Any]:
    """The result as JSON, or `{"error": ...}` when the payload does not map (an input problem)."""
    try:
        result: MappingResult = mapping_set.map(kind, payload, source=source)
    except InputError as exc:
        return {"route": None, "error": f"{type(exc).__name__}: {exc}"}
    out = result.to_json()
    out.pop("mapping_version", None)
    return out


def compare(old: MappingSet, new: MappingSet, kind: str, payload: str | bytes,
            source: str) -> list[FieldDiff]:
    """Differences between the two sets' outcomes for one payload ([] when identical)."""
    return diff_json(outcome(old, kind, payload, source), outcome(new, kind, payload, source))


def diff_json(old: Any, new: Any, path: str = "") -> list[FieldDiff]:
    """Leaf-by-leaf differences of two JSON values, with paths like `operations[0].email`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldDiff] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            out.extend(diff_json(old.get(key, _MISSING), new.get(key, _MISSING), sub))
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            out.extend(diff_json(old[i] if i < len(old) else _MISSING,
                                 new[i] if i < len(new) else _MISSING, f"{path}[{i}]"))
        return out
    if old is _MISSING and new is _MISSING:
        return []
    return [] if old == new and type(old) is type(new) else [FieldDiff(path or "(value)", old, new)]
