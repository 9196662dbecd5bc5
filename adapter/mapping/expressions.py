"""The expression language, compiled at load into small node objects.

Forms (closed on purpose: no hook for arbitrary code):
- `"SOURCE | pipe | pipe(arg)"`   a path in the route's source language, then pipes
- `42`, `true`, `null`, `{const: "text"}`   constants
- `[E1, E2, ...]`   ordered alternatives: the first that is not empty
- `{when: CONDITION, value: E}`   E when the condition holds, else empty
- `{concat: [E1, E2], sep: " "}`   the non-empty values joined (a full name from given + family)
- `{each: GROUP, fields: {...}, include: [...]}`   a list of objects, one per repeating group
- a mapping of keys to expressions, for targets that are objects (`metadata`)
Conditions: `{path, equals|in|exists}`, `{not}`, `{all}`, `{any}` (see schema.Condition).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from adapter.mapping.languages import Compiled, PathLanguage, Value
from adapter.mapping.marks import Loc, MarkedDocument
from adapter.mapping.pipes import Pipe, PipeContext, PipeError, is_empty, parse_pipe, split_pipes
from adapter.mapping.schema import ConcatForm, Condition, ConstForm, EachForm, Match, WhenForm

__all__ = ["Compiler", "Cond", "Env", "EvalError", "Fragment", "Node", "Resolver", "Target"]


Resolver = Callable[[str], "Target"]
Target = Any   # "scalar" | "object" | Resolver (the item fields of a list of objects)


class EvalError(Exception):
    """A value could not be computed; the engine adds route and target (message has no values)."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class Env:
    ctx: Any                  # the language's context (HL7 Scope, FHIR resource, JSON document)
    pipes: PipeContext


class Node:
    source: str = ""

    def eval(self, env: Env) -> Value:
        raise NotImplementedError


@dataclass(eq=False)
class PathNode(Node):
    path: Compiled
    pipes: list[Pipe]
    source: str = ""

    def eval(self, env: Env) -> Value:
        value = self.path.read(env.ctx)
        for pipe in self.pipes:
            try:
                value = pipe.apply(value, env.pipes)
            except PipeError as exc:
                raise EvalError(self.source, f"the value {exc} (pipe {pipe.name})") from None
        return value


@dataclass(eq=False)
class ConstNode(Node):
    value: Any
    source: str = ""

    def eval(self, env: Env) -> Value:
        return self.value


@dataclass(eq=False)
class AltNode(Node):
    items: list[Node]
    source: str = ""

    def eval(self, env: Env) -> Value:
        for item in self.items:
            value = item.eval(env)
            if not is_empty(value):
                return value
        return ""


@dataclass(eq=False)
class WhenNode(Node):
    cond: Cond
    value: Node
    source: str = ""

    def eval(self, env: Env) -> Value:
        return self.value.eval(env) if self.cond.test(env) else ""


@dataclass(eq=False)
class ConcatNode(Node):
    items: list[Node]
    sep: str = " "
    source: str = ""

    def eval(self, env: Env) -> Value:
        texts = []
        for item in self.items:
            value = item.eval(env)
            if isinstance(value, list):
                value = next((v for v in value if not is_empty(v)), "")
            if not is_empty(value):
                texts.append(str(value))
        return self.sep.join(texts)


@dataclass(eq=False)
class ObjectNode(Node):
    fields: dict[str, Node]
    source: str = ""

    def eval(self, env: Env) -> Value:
        return {k: v.eval(env) for k, v in self.fields.items()}


@dataclass(eq=False)
class EachNode(Node):
    groups: Callable[[Any], list[Any]]
    fields: dict[str, Node]
    cond: Cond | None = None
    source: str = ""

    def eval(self, env: Env) -> Value:
        out = []
        for ctx in self.groups(env.ctx):
            sub = Env(ctx, env.pipes)
            if self.cond is None or self.cond.test(sub):
                out.append({k: v.eval(sub) for k, v in self.fields.items()})
        return out


@dataclass(eq=False)
class Cond:
    op: str                                   # equals, in, exists, not, all, any
    node: Node | None = None
    operand: Any = None
    children: list[Cond] = field(default_factory=list)

    def test(self, env: Env) -> bool:
        if self.op == "not":
            return not self.children[0].test(env)
        if self.op == "all":
            return all(c.test(env) for c in self.children)
        if self.op == "any":
            return any(c.test(env) for c in self.children)
        assert self.node is not None
        value = self.node.eval(env)
        if self.op == "exists":
            return (not is_empty(value)) == self.operand
        items = value if isinstance(value, list) else [value]
        texts = {_as_text(v) for v in items}
        if self.op == "equals":
            return self.operand in texts
        return bool(texts & self.operand)


def _as_text(value: Any) -> str:
    """A value as `when` compares it: booleans spelt as in JSON and FHIR (`true`), not Python."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Fragment:
    """A named block of fields, kept raw and compiled where it is included (its paths are read in
    the including route's language); errors point at the fragment's own file and line."""

    name: str
    doc: MarkedDocument
    loc: Loc
    fields: dict[str, Any]


class Compiler:
    """Compiles expressions for one route (one source language and match)."""

    def __init__(self, language: PathLanguage, match: Match, tables: Mapping[str, Any],
                 fragments: Mapping[str, Fragment]) -> None:
        self.language = language
        self.match = match
        self.tables = tables
        self.fragments = fragments

    def fields(self, doc: MarkedDocument, loc: Loc, include: list[str], fields: dict[str, Any],
               target: Resolver, *, including: tuple[str, ...] = ()) -> dict[str, Node]:
        """Compile included fragments then `fields` (which win). `target(name)` says what the target
        field holds ("scalar", "object", or a Resolver for the items of a list of objects) or raises
        KeyError with a hint (unknown target)."""
        out: dict[str, Node] = {}
        for i, name in enumerate(include):
            frag = self.fragments.get(name)
            if frag is None:
                raise doc.error((*loc, "include", i), f"no fragment named {name!r}",
                                hint=f"fragments: {', '.join(sorted(self.fragments)) or 'none defined'}")
            if name in including:
                raise doc.error((*loc, "include", i), f"fragment {name!r} includes itself")
            out.update(self.fields(frag.doc, frag.loc, [], frag.fields, target, including=(*including, name)))
        for key, raw in fields.items():
            try:
                ttype = target(key)
            except KeyError as exc:
                raise doc.error((*loc, "fields", key) if not including else (*loc, key),
                                f"unknown target field {key!r}", key=True, hint=str(exc.args[0])) from None
            floc = (*loc, "fields", key) if not including else (*loc, key)
            out[key] = self.expr(doc, floc, raw, target=ttype)
        return out

    def expr(self, doc: MarkedDocument, loc: Loc, raw: Any, *, target: Target = "scalar") -> Node:
        if raw is None or isinstance(raw, bool | int | float):
            return ConstNode(raw, source=repr(raw))
        if isinstance(raw, str):
            return self._path(doc, loc, raw)
        if isinstance(raw, list):
            if not raw:
                raise doc.error(loc, "an empty list of alternatives")
            items = []
            for i, item in enumerate(raw):
                if isinstance(item, list):
                    raise doc.error((*loc, i), "alternatives cannot be nested lists")
                items.append(self.expr(doc, (*loc, i), item, target=target))
            return AltNode(items, source=" / ".join(n.source for n in items))
        if isinstance(raw, dict):
            return self._form(doc, loc, raw, target)
        raise doc.error(loc, f"unsupported expression of type {type(raw).__name__}")

    def cond(self, doc: MarkedDocument, loc: Loc, raw: Any) -> Cond:
        try:
            spec = Condition.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            sub = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
            raise doc.error((*loc, *sub), f"invalid condition: {err['msg'].removeprefix('Value error, ')}",
                            key=err["type"] == "extra_forbidden",
                            hint="forms: {path, equals|in|exists}, {not}, {all}, {any}") from None
        return self._cond(doc, loc, spec)

    def _cond(self, doc: MarkedDocument, loc: Loc, spec: Condition) -> Cond:
        if spec.not_ is not None:
            return Cond("not", children=[self._cond(doc, (*loc, "not"), spec.not_)])
        if spec.all is not None or spec.any is not None:
            op = "all" if spec.all is not None else "any"
            items = spec.all if spec.all is not None else spec.any
            return Cond(op, children=[self._cond(doc, (*loc, op, i), c) for i, c in enumerate(items or [])])
        assert spec.path is not None
        node = self._path(doc, (*loc, "path"), spec.path)
        if spec.exists is not None:
            return Cond("exists", node, spec.exists)
        if spec.equals is not None:
            return Cond("equals", node, spec.equals)
        return Cond("in", node, frozenset(spec.in_ or ()))

    def _form(self, doc: MarkedDocument, loc: Loc, raw: dict[str, Any], target: Target) -> Node:
        try:
            if "const" in raw:
                return ConstNode(ConstForm.model_validate(raw).const, source=repr(raw["const"]))
            if "each" in raw:
                each = EachForm.model_validate(raw)
                if not callable(target):
                    raise doc.error((*loc, "each"), "`each` builds a list of objects; this target is not one")
                return self._each(doc, loc, each, target)
            if "concat" in raw:
                concat = ConcatForm.model_validate(raw)
                items = [self.expr(doc, (*loc, "concat", i), e) for i, e in enumerate(concat.concat)]
                return ConcatNode(items, concat.sep, source=" + ".join(n.source for n in items))
            if "when" in raw and "value" in raw:
                when = WhenForm.model_validate(raw)
                cond = self.cond(doc, (*loc, "when"), raw["when"])
                value = self.expr(doc, (*loc, "value"), when.value)
                return WhenNode(cond, value, source=f"when({value.source})")
        except ValidationError as exc:
            err = exc.errors()[0]
            raise doc.error((*loc, *err["loc"]), err["msg"].removeprefix("Value error, "),
                            key=err["type"] == "extra_forbidden") from None
        if target == "object":
            nodes = {str(k): self.expr(doc, (*loc, str(k)), v) for k, v in raw.items()}
            return ObjectNode(nodes, source="{" + ", ".join(nodes) + "}")
        raise doc.error(loc, "a mapping here must be one of {const}, {when, value}, {concat, sep} or "
                             f"{{each, fields}}, not keys {', '.join(map(str, raw))}",
                        hint="a plain text value is a source path; write {const: ...} for constant text")

    def _each(self, doc: MarkedDocument, loc: Loc, each: EachForm, item: Resolver) -> Node:
        try:
            groups = self.language.compile_group(each.each, self.match)
        except ValueError as exc:
            raise doc.error((*loc, "each"), str(exc)) from None
        cond = self._cond(doc, (*loc, "when"), each.when) if each.when else None
        fields = self.fields(doc, loc, each.include, each.fields, item)
        return EachNode(groups, fields, cond, source=f"each {each.each}")

    def _path(self, doc: MarkedDocument, loc: Loc, text: str) -> Node:
        source, pipe_texts = split_pipes(text)
        try:
            compiled = self.language.compile(source, self.match)
        except ValueError as exc:
            tail = source.rsplit("|", 1)[-1] if "|" in source else ""
            if tail and re.match(r"^\s*[a-z_]+\s*(\(.*\))?\s*$", tail):
                try:
                    parse_pipe(tail, self.tables)
                except ValueError as pipe_exc:
                    raise doc.error(loc, str(pipe_exc)) from None
            raise doc.error(loc, str(exc), hint="write {const: ...} for a constant text") from None
        pipes = []
        for p in pipe_texts:
            try:
                pipes.append(parse_pipe(p, self.tables))
            except ValueError as exc:
                raise doc.error(loc, str(exc)) from None
        return PathNode(compiled, pipes, source=text.strip())
