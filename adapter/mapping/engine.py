"""The mapping engine: a pure function from (kind, payload) to typed operations. No I/O.

A `MappingSet` is built by `adapter.mapping.loader.load_mapping_set`; it indexes compiled routes by
(source language, key) and, for a payload, runs the first route whose `when` holds. A payload that
no route takes maps to one `ignore` operation saying so (it must not dead-letter and block its
ordering key). Values are checked against the operation models here, before anything is sent.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from adapter.errors import MappingError
from adapter.mapping.expressions import AltNode, Cond, EachNode, Env, EvalError, Node, Resolver, Target
from adapter.mapping.languages import PathLanguage, language_for_source
from adapter.mapping.operations import OPERATIONS, Ignore, Operation
from adapter.mapping.pipes import PipeContext, is_empty

__all__ = ["CompiledOperation", "CompiledRoute", "MappingResult", "MappingSet", "each_nodes",
           "operation_kinds", "required_fields", "resolver", "unwrap_type"]


@dataclass(frozen=True)
class MappingResult:
    route: str | None                     # None when no route took the payload
    operations: list[Operation]
    mapping_version: str

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "mapping_version": self.mapping_version,
                "operations": [op.to_json() for op in self.operations]}


@dataclass(eq=False)
class CompiledOperation:
    kind: str
    model: type[BaseModel]
    fields: dict[str, Node]
    when: Cond | None = None


@dataclass(eq=False)
class CompiledRoute:
    name: str
    language: str
    keys: list[str]
    file: str
    line: int | None
    operations: list[CompiledOperation]
    when: Cond | None = None
    description: str | None = None

    def build(self, env: Env) -> list[Operation]:
        out: list[Operation] = []
        for op in self.operations:
            if op.when is not None and not self._test(op.when, env):
                continue
            values = _evaluate(self.name, op.fields, env, resolver(op.model))
            try:
                built = op.model.model_validate({"kind": op.kind, **values})
            except ValidationError as exc:
                raise _validation_error(self.name, op, exc) from None
            assert isinstance(built, Operation)
            out.append(built)
        return out

    def _test(self, cond: Cond, env: Env) -> bool:
        try:
            return cond.test(env)
        except EvalError as exc:
            raise MappingError(exc.message, route=self.name, target="when", source=exc.source,
                               hint=_EVAL_HINT) from None


_EVAL_HINT = ("fix the value at its source (then `oncall-adapter queue retry`), or give the route's field "
              "a fallback that skips it")


def _evaluate(route: str, fields: dict[str, Node], env: Env, target: Resolver,
              prefix: str = "") -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, node in fields.items():
        try:
            raw = node.eval(env)
        except EvalError as exc:
            raise MappingError(exc.message, route=route, target=prefix + name, source=exc.source,
                               hint=_EVAL_HINT) from None
        value = _coerce(raw, target(name))
        if value is not None:
            values[name] = value
    return values


def _coerce(value: Any, target: Target) -> Any:
    """Fit an evaluated value to its target: first non-empty item for scalars, flat objects, lists."""
    if callable(target):
        items = value if isinstance(value, list) else []
        return [{k: c for k, v in item.items() if (c := _coerce(v, target(k))) is not None}
                for item in items if isinstance(item, dict)] or None
    if target == "object":
        if not isinstance(value, dict):
            return None
        flat = {k: ",".join(str(x) for x in v if not is_empty(x)) if isinstance(v, list) else v
                for k, v in value.items()}
        return {k: v for k, v in flat.items() if not is_empty(v)}
    if isinstance(value, list):
        value = next((v for v in value if not is_empty(v)), None)
    if isinstance(value, dict) or is_empty(value):
        return None
    return value.strip() if isinstance(value, str) else value


def _validation_error(route: str, op: CompiledOperation, exc: ValidationError) -> MappingError:
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    target = ".".join(str(p) for p in loc) or None
    msg = "required value is empty" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
    named = msg.split(" ", 1)[0]
    if not loc and named in op.fields:
        # a whole-operation check ("datetime is required unless ...") names its field first
        loc, target = [named], named
    node = op.fields.get(str(loc[0])) if loc else None
    source = node.source if node is not None else None
    # the pydantic message never echoes the input value here: values may be PHI
    return MappingError(f"{op.kind}: {msg}", route=route, target=target, source=source,
                        hint="fix the message at its source, or the route's expression for this field")


def resolver(model: type[BaseModel]) -> Resolver:
    """What each field of an operation model holds: 'scalar', 'object', or a resolver for list items."""
    def target(name: str) -> Target:
        f = model.model_fields.get(name)
        if f is None or name == "kind":
            fields = ", ".join(n for n in model.model_fields if n != "kind")
            raise KeyError(f"the fields of {getattr(model, '__name__', model)} are: {fields}")
        ann = unwrap_type(f.annotation)
        origin = typing.get_origin(ann)
        if origin is list:
            (item,) = typing.get_args(ann) or (Any,)
            item = unwrap_type(item)
            if isinstance(item, type) and issubclass(item, BaseModel):
                return resolver(item)
        if origin is dict or ann is dict:
            return "object"
        return "scalar"
    return target


def unwrap_type(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
            continue
        return tp


def required_fields(model: type[BaseModel]) -> list[str]:
    return [n for n, f in model.model_fields.items() if f.is_required() and n != "kind"]


def each_nodes(node: Node) -> list[EachNode]:
    """The `each` nodes of an expression (directly or among alternatives), for load-time checks."""
    if isinstance(node, EachNode):
        return [node]
    if isinstance(node, AltNode):
        return [e for item in node.items for e in each_nodes(item)]
    return []


@dataclass
class MappingSet:
    """Every route, table and fragment of a mapping folder (shipped files overridden by the user's)."""

    version: str                                        # content hash of the effective files
    files: list[str]                                    # effective files, as loaded
    routes: list[CompiledRoute]
    tables: dict[str, dict[str, str]]
    timezone: str
    languages: dict[str, PathLanguage]
    pipes: PipeContext
    _index: dict[tuple[str, str], list[CompiledRoute]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for route in self.routes:
            for key in route.keys:
                self._index.setdefault((route.language, key), []).append(route)
        for routes in self._index.values():
            routes.sort(key=lambda r: r.when is None)   # conditional routes first, in load order

    def routes_for(self, source: str, kind: str) -> list[CompiledRoute]:
        return list(self._index.get((language_for_source(source), kind), []))

    def has_route(self, source: str, kind: str) -> bool:
        """True when some route takes this kind (e.g. `ADT^A04`); listeners may refuse the others."""
        return bool(self._index.get((language_for_source(source), kind)))

    def map(self, envelope_kind: str, payload_text: str | bytes, *, source: str) -> MappingResult:
        """The operations for one payload. Raises HL7InputError/FHIRInputError when the payload
        cannot be read, MappingError when a route's values are missing or invalid."""
        lang_name = language_for_source(source)
        language = self.languages.get(lang_name)
        if language is None:
            return MappingResult(None, [Ignore(reason=f"no {lang_name} routes are loaded")], self.version)
        ctx, key = language.parse(envelope_kind, payload_text)
        env = Env(ctx, self.pipes)
        for route in self._index.get((lang_name, key), []):
            if route.when is None or route._test(route.when, env):
                return MappingResult(route.name, route.build(env), self.version)
        reason = (f"no route takes {lang_name} {key}" if (lang_name, key) not in self._index
                  else f"no route for {lang_name} {key} matched its `when` conditions")
        ignore = Ignore(reason=f"{reason}; add or edit a route in a mapping file to act on it")
        return MappingResult(None, [ignore], self.version)


def operation_kinds() -> list[str]:
    return sorted(OPERATIONS)
