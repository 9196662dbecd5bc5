"""The mapping file format, defined once: these models validate every file and generate
docs/mapping-reference.md (see `adapter.mapping.reference`).

Expressions (the values under `fields:`) are kept as plain data here and compiled by
`adapter.mapping.expressions`, which knows the source language of the route; their forms are the
`*Form` models below.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from adapter.errors import MappingFileError
from adapter.mapping.marks import MarkedDocument

__all__ = [
    "NAME_PATTERN",
    "ConcatForm",
    "Condition",
    "ConstForm",
    "EachForm",
    "FhirMatch",
    "Hl7v2Match",
    "MappingFileSpec",
    "Match",
    "OncallMatch",
    "OperationSpec",
    "RouteSpec",
    "Settings",
    "WhenForm",
    "validate_file",
]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str | int | float) else value


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


StrList = Annotated[list[Annotated[str, BeforeValidator(_text)]], BeforeValidator(_listify)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Hl7v2Match(_Strict):
    """Which HL7 v2 messages a route takes (MSH-9)."""

    type: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{2}$",
                               description="MSH-9-1 message type, e.g. `ADT`, `SIU`")]
    trigger: Annotated[StrList, Field(min_length=1,
                                      description="MSH-9-2 trigger event(s), e.g. `[A01, A04]`")]
    versions: StrList | None = Field(
        None, description="HL7 versions the paths are checked against at load (default: 2.3 to 2.8.2; "
                          "a path is accepted when one of them has the field)")


class FhirMatch(_Strict):
    """Which FHIR resources a route takes."""

    resource: Annotated[StrList, Field(min_length=1, description="resource type(s), e.g. `Patient`")]


class OncallMatch(_Strict):
    """Which OnCall events a route takes."""

    event: Annotated[StrList, Field(min_length=1, description="event(s), e.g. `appointment_updated`")]


class Match(_Strict):
    """The source language and what a route applies to: exactly one of the keys."""

    hl7v2: Hl7v2Match | None = Field(None, description="HL7 v2 message type and trigger")
    fhir: FhirMatch | None = Field(None, description="FHIR resource type")
    oncall: OncallMatch | None = Field(None, description="OnCall webhook event or scrape kind")

    @model_validator(mode="after")
    def _one(self) -> Match:
        if sum(x is not None for x in (self.hl7v2, self.fhir, self.oncall)) != 1:
            raise ValueError("give exactly one of hl7v2, fhir, oncall")
        return self

    @property
    def language(self) -> str:
        return "hl7v2" if self.hl7v2 else "fhir" if self.fhir else "oncall"


class Condition(_Strict):
    """A structured test: `{path: P, equals: V}`, `{path: P, in: [..]}`, `{path: P, exists: true}`,
    `{not: C}`, `{all: [C, ..]}` or `{any: [C, ..]}`. `path` is an expression (pipes allowed);
    a list value matches when one of its items does; comparisons are on text (booleans as `true`/`false`)."""

    path: str | None = Field(None, description="the value tested (source path, pipes allowed)")
    equals: Annotated[str | None, BeforeValidator(_text)] = Field(None, description="value equals this")
    in_: StrList | None = Field(None, alias="in", description="value is one of these")
    exists: bool | None = Field(None, description="value is (true) or is not (false) non-empty")
    not_: Condition | None = Field(None, alias="not", description="negation of a condition")
    all: list[Condition] | None = Field(None, description="every condition holds")
    any: list[Condition] | None = Field(None, description="at least one condition holds")

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        tests = [k for k in ("equals", "in_", "exists") if getattr(self, k) is not None]
        logic = [k for k in ("not_", "all", "any") if getattr(self, k) is not None]
        if logic and (tests or self.path is not None or len(logic) > 1):
            raise ValueError("not/all/any stand alone: one of them, without path or tests")
        if not logic and (self.path is None or len(tests) != 1):
            raise ValueError("a test is `path:` with exactly one of equals, in, exists")
        return self


class ConstForm(_Strict):
    """`{const: V}`: a constant (text, number, boolean or null)."""

    const: str | int | float | bool | None = Field(description="the constant value")


class WhenForm(_Strict):
    """`{when: C, value: E}`: E when condition C holds, else empty (so the next alternative is tried)."""

    when: Condition = Field(description="the condition")
    value: Any = Field(description="the expression used when it holds")


class ConcatForm(_Strict):
    """`{concat: [E1, E2, ..], sep: " "}`: the non-empty values joined with `sep` (first item of lists)."""

    concat: Annotated[list[Any], Field(min_length=1, description="the expressions, in order")]
    sep: str = Field(" ", description="the separator")


class EachForm(_Strict):
    """`{each: GROUP, fields: {..}}`: a list, one object per group (HL7: per segment occurrence, the
    segments up to the next one of that name; FHIR: per FHIRPath result; OnCall: per list item)."""

    each: str = Field(description="HL7 segment name, FHIRPath or dotted path of the repeating group")
    when: Condition | None = Field(None, description="keep only the groups where this holds")
    include: StrList = Field(default_factory=list, description="fragments whose fields are used")
    fields: dict[str, Any] = Field(default_factory=dict, description="target field -> expression")


class OperationSpec(_Strict):
    """One operation a route produces."""

    kind: str = Field(description="operation kind (see Operations below)")
    when: Condition | None = Field(None, description="produce it only when this holds")
    include: StrList = Field(default_factory=list,
                             description="fragments (by name) whose fields are merged in; `fields` win")
    fields: dict[str, Any] = Field(default_factory=dict, description="target field -> expression")


class RouteSpec(_Strict):
    """A route: when it applies and the operations it yields. Name it with the standard's id
    (`ADT_A04`, `SIU_S12`, `Patient`, `appointment_updated`)."""

    description: str | None = Field(None, description="what the route does, for people")
    match: Match = Field(description="source and message kind")
    when: Condition | None = Field(None, description="narrows the match (e.g. a sending facility)")
    operations: Annotated[list[OperationSpec], Field(min_length=1, description="what it produces")]


class Settings(_Strict):
    """Site settings (usually in `site.yaml`)."""

    timezone: str | None = Field(None, description="IANA zone for source times without an offset, "
                                                   "e.g. `America/Toronto` (default: configuration, UTC)")


class MappingFileSpec(_Strict):
    """One mapping file. Names (routes, fragments, tables) are global to the mapping set."""

    description: str | None = Field(None, description="what the file holds")
    settings: Settings | None = Field(None, description="site settings")
    tables: dict[Name, dict[str, Annotated[str, BeforeValidator(_text)]]] = Field(
        default_factory=dict, description="code tables keyed by concept: name -> {code: value}")
    fragments: dict[Name, dict[str, Any]] = Field(
        default_factory=dict, description="reusable field blocks: name -> {target field: expression}")
    routes: dict[Name, RouteSpec] = Field(default_factory=dict, description="name -> route")


def validate_file(doc: MarkedDocument) -> MappingFileSpec:
    """Validate a file against the schema; the first problem raises MappingFileError at its line."""
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        raise doc.error((), "a mapping file must be a YAML mapping (routes:, tables:, fragments:, ...)")
    try:
        return MappingFileSpec.model_validate(data)
    except ValidationError as exc:
        raise _translate(doc, exc) from None


def _translate(doc: MarkedDocument, exc: ValidationError) -> MappingFileError:
    # an unknown key explains a "missing" one (a misspelling), so it is reported first
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    count = exc.error_count()
    more = f" ({count - 1} more problem(s) after fixing this one)" if count > 1 else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return doc.error(loc, f"unknown key {loc[-1]!r}{more}", key=True,
                         hint=f"expected one of: {', '.join(allowed)}" if allowed else None)
    if err["type"] == "missing":
        return doc.error(loc[:-1], f"missing required key {loc[-1]!r}{more}")
    msg = err["msg"].removeprefix("Value error, ")
    return doc.error(loc, f"{msg}{more}")


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    """The keys the schema allows at `loc` (for 'unknown key' hints)."""
    tp: Any = MappingFileSpec
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return []
            tp = field.annotation
        else:
            args = typing.get_args(tp)
            tp = args[-1] if args else Any
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp
