"""YAML read with its node marks, so every mapping-file error says file:line:column.

`yaml.compose` keeps each node's start mark; this module turns the node tree into plain Python
values and a table from the value's location (a tuple of keys and indices, like pydantic's `loc`)
to its line and column. Duplicate keys, which PyYAML silently collapses, are refused.
This is the one place where yaml's exceptions are translated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from adapter.errors import MappingFileError

__all__ = ["Loc", "MarkedDocument", "load_marked"]

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class MarkedDocument:
    """Plain data plus where each value (and each mapping key) starts in the file (1-based)."""

    file: str
    data: Any
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Sequence[str | int], *, key: bool = False) -> tuple[int | None, int | None]:
        """Line and column of `loc`, or of its nearest enclosing value when it has none."""
        loc = tuple(loc)
        if key and loc in self.keys:
            return self.keys[loc]
        while loc:
            if loc in self.values:
                return self.values[loc]
            if loc in self.keys:
                return self.keys[loc]
            loc = loc[:-1]
        return self.values.get((), (None, None))

    def error(self, loc: Sequence[str | int], message: str, *, key: bool = False,
              hint: str | None = None) -> MappingFileError:
        line, column = self.where(loc, key=key)
        dotted = ".".join(str(p) for p in loc) or None
        return MappingFileError(message, file=self.file, line=line, column=column, key=dotted, hint=hint)


def load_marked(text: str, file: str) -> MarkedDocument:
    """Parse one YAML document; syntax errors and duplicate keys raise MappingFileError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise MappingFileError(f"YAML syntax error: {exc.problem or exc.context}", file=file,
                               line=mark.line + 1 if mark else None,
                               column=mark.column + 1 if mark else None,
                               hint="check indentation and quoting (a value with ': ' or '|' needs quotes)"
                               ) from None
    except yaml.YAMLError as exc:
        raise MappingFileError(f"YAML error: {exc}", file=file) from None
    doc = MarkedDocument(file=file, data=None)
    if node is None:
        return doc
    constructor = yaml.SafeLoader("")  # used only for its scalar resolution (ints, bools, nulls)
    try:
        data = _convert(node, (), doc, constructor)
    finally:
        constructor.dispose()
    return MarkedDocument(file=file, data=data, values=doc.values, keys=doc.keys)


def _convert(node: yaml.Node, loc: Loc, doc: MarkedDocument, ctor: yaml.SafeLoader) -> Any:
    doc.values[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise doc.error(loc, "YAML merge keys (<<) are not supported; use `include:` fragments",
                                hint="fragments are listed under `fragments:` and included by name")
            if not isinstance(key_node, yaml.ScalarNode):
                raise doc.error(loc, "mapping keys must be plain scalars")
            skey = str(key_node.value)  # the text as written: code-table keys like Y, N, 01 stay codes
            doc.keys[(*loc, skey)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if skey in out:
                raise doc.error((*loc, skey), f"duplicate key {skey!r}", key=True,
                                hint="YAML keeps only the last one; remove or rename the duplicate")
            out[skey] = _convert(value_node, (*loc, skey), doc, ctor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), doc, ctor) for i, item in enumerate(node.value)]
    try:
        value = ctor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise doc.error(loc, f"cannot read this value: {exc}") from None
    if isinstance(value, bool) and str(node.value).lower() not in ("true", "false"):
        return str(node.value)  # YAML 1.2 booleans only: yes/no/on/off/Y/N stay text (HL7 codes)
    return value
