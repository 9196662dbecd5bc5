"""Load and validate a mapping set, all of it, before anything runs.

`load_mapping_set([SHIPPED_DIR, user_dir])` reads every `*.yaml`/`*.yml` under each folder; a file
in a later folder replaces the file with the same relative name in an earlier one (a user folder
overrides shipped files one by one). Every file is validated against the schema, every path is
compiled (HL7 paths checked against hl7apy's structure of the allowed versions), every table,
fragment and target field resolved. The first problem raises MappingFileError with file:line:column.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

import mappings as _shipped
from adapter.errors import ConfigError, MappingFileError
from adapter.mapping.engine import (
    CompiledOperation,
    CompiledRoute,
    MappingSet,
    each_nodes,
    required_fields,
    resolver,
    unwrap_type,
)
from adapter.mapping.expressions import Compiler, Fragment
from adapter.mapping.languages import LANGUAGES, PathLanguage
from adapter.mapping.marks import MarkedDocument, load_marked
from adapter.mapping.operations import OPERATIONS, load_extensions
from adapter.mapping.pipes import PipeContext
from adapter.mapping.schema import MappingFileSpec, validate_file

__all__ = ["SHIPPED_DIR", "default_dirs", "load_mapping_set"]

log = structlog.get_logger(__name__)

SHIPPED_DIR = Path(_shipped.__file__).parent


def default_dirs(user_dir: str | Path | None = None) -> list[Path]:
    """The shipped folder, then the user's folder (which overrides it file by file)."""
    return [SHIPPED_DIR] + ([Path(user_dir)] if user_dir else [])


@dataclass(frozen=True)
class _Loaded:
    rel: str
    doc: MarkedDocument
    spec: MappingFileSpec
    content: bytes


def load_mapping_set(dirs: Sequence[str | Path] | str | Path, *, timezone: str | None = None) -> MappingSet:
    """Load the folders in order (later ones override files of earlier ones by relative name).

    `timezone` (IANA name) is used for source times without an offset unless a file's
    `settings.timezone` sets it; UTC when neither does.
    """
    load_extensions()
    folders = [Path(dirs)] if isinstance(dirs, str | Path) else [Path(d) for d in dirs]
    effective: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise MappingFileError("mapping folder does not exist or is not a folder", file=str(folder),
                                   hint="check mappings.dir in the configuration")
        for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
            rel = path.relative_to(folder).as_posix()
            if not any(part.startswith(".") for part in Path(rel).parts):
                effective[rel] = path
    loaded = [_load_file(rel, effective[rel]) for rel in sorted(effective)]
    digest = hashlib.sha256()
    for item in loaded:
        digest.update(item.rel.encode() + b"\0" + item.content + b"\0")
    tz_name, tz = _timezone(loaded, timezone)
    digest.update(tz_name.encode())
    tables = _collect_raw(loaded, "tables")
    fragments = {name: Fragment(name, doc, ("fragments", name), fields)
                 for name, (doc, fields) in _collect_raw(loaded, "fragments").items()}
    plain_tables = {name: dict(table) for name, (_, table) in tables.items()}
    languages: dict[str, PathLanguage] = {}
    routes: list[CompiledRoute] = []
    seen: dict[str, MarkedDocument] = {}
    for item in loaded:
        for name, route in item.spec.routes.items():
            if name in seen:
                line, _ = seen[name].where(("routes", name), key=True)
                raise item.doc.error(("routes", name), f"route {name!r} is already defined in "
                                     f"{seen[name].file}:{line}", key=True,
                                     hint="route names are global; rename one (or override the whole file)")
            seen[name] = item.doc
            lang = languages.get(route.match.language)
            if lang is None:
                lang = languages[route.match.language] = LANGUAGES[route.match.language]()
            routes.append(_compile_route(item.doc, name, route, lang, plain_tables, fragments))
    _check_ambiguous(routes)
    mapping_set = MappingSet(version=digest.hexdigest()[:16], files=[str(i.doc.file) for i in loaded],
                             routes=routes, tables=plain_tables, timezone=tz_name, languages=languages,
                             pipes=PipeContext(plain_tables, tz))
    log.info("mapping_set_loaded", mapping_version=mapping_set.version, files=len(loaded),
             routes=len(routes), tables=len(tables))
    return mapping_set


def _load_file(rel: str, path: Path) -> _Loaded:
    try:
        content = path.read_bytes()
        text = content.decode("utf-8")
    except OSError as exc:
        raise MappingFileError(f"cannot read the file: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise MappingFileError(f"the file is not UTF-8 (byte {exc.start})", file=str(path),
                               hint="save it as UTF-8") from None
    doc = load_marked(text, str(path))
    return _Loaded(rel, doc, validate_file(doc), content)


def _timezone(loaded: list[_Loaded], param: str | None) -> tuple[str, ZoneInfo]:
    setters = [i for i in loaded if i.spec.settings and i.spec.settings.timezone]
    if len(setters) > 1:
        raise setters[1].doc.error(("settings", "timezone"), "timezone is already set in "
                                   f"{setters[0].doc.file}", hint="set it in one file only (site.yaml)")
    if setters:
        name = setters[0].spec.settings.timezone  # type: ignore[union-attr]
        try:
            return str(name), ZoneInfo(str(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise setters[0].doc.error(("settings", "timezone"), f"unknown time zone {name!r}",
                                       hint="use an IANA name such as America/Toronto") from None
    name = param or "UTC"
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("mappings.timezone", name, "an IANA time zone such as America/Toronto") from None


def _collect_raw(loaded: list[_Loaded], section: str) -> dict[str, tuple[MarkedDocument, Any]]:
    """Global names of a section across files; the same name in two files is an error."""
    out: dict[str, tuple[MarkedDocument, Any]] = {}
    for item in loaded:
        for name, value in getattr(item.spec, section).items():
            if name in out:
                other = out[name][0]
                line, _ = other.where((section, name), key=True)
                raise item.doc.error((section, name), f"{section[:-1]} {name!r} is already defined in "
                                     f"{other.file}:{line}", key=True,
                                     hint="names are global to the mapping set; rename or remove one")
            out[name] = (item.doc, value)
    return out


def _compile_route(doc: MarkedDocument, name: str, route: Any, lang: PathLanguage,
                   tables: dict[str, dict[str, str]], fragments: dict[str, Fragment]) -> CompiledRoute:
    loc = ("routes", name)
    compiler = Compiler(lang, route.match, tables, fragments)
    when = compiler._cond(doc, (*loc, "when"), route.when) if route.when else None
    ops: list[CompiledOperation] = []
    for i, spec in enumerate(route.operations):
        oloc = (*loc, "operations", i)
        model = OPERATIONS.get(spec.kind)
        if model is None:
            raise doc.error((*oloc, "kind"), f"unknown operation kind {spec.kind!r}",
                            hint=f"kinds: {', '.join(sorted(OPERATIONS))}")
        fields = compiler.fields(doc, oloc, spec.include, spec.fields, resolver(model))
        missing = [f for f in required_fields(model) if f not in fields]
        if missing:
            raise doc.error(oloc, f"operation {spec.kind} lacks required field(s) {', '.join(missing)}",
                            hint="add them under fields: (or in an included fragment)")
        for fname, node in fields.items():
            item = resolver(model)(fname)
            if callable(item):
                item_model = _item_model(model, fname)
                for each in each_nodes(node):
                    lack = [f for f in required_fields(item_model) if f not in each.fields]
                    if lack:
                        raise doc.error((*oloc, "fields", fname), f"each item of {fname} lacks required "
                                        f"field(s) {', '.join(lack)}")
        op_when = compiler._cond(doc, (*oloc, "when"), spec.when) if spec.when else None
        ops.append(CompiledOperation(spec.kind, model, fields, op_when))
    line, _ = doc.where(loc, key=True)
    return CompiledRoute(name=name, language=lang.name, keys=lang.keys(route.match), file=doc.file, line=line,
                         operations=ops, when=when, description=route.description)


def _item_model(model: Any, name: str) -> Any:
    ann = unwrap_type(model.model_fields[name].annotation)
    return unwrap_type(typing.get_args(ann)[0])


def _check_ambiguous(routes: list[CompiledRoute]) -> None:
    plain: dict[tuple[str, str], CompiledRoute] = {}
    for route in routes:
        if route.when is not None:
            continue
        for key in route.keys:
            other = plain.get((route.language, key))
            if other is not None:
                raise MappingFileError(
                    f"routes {other.name} ({other.file}:{other.line}) and {route.name} both take "
                    f"{route.language} {key} without a `when` condition", file=route.file, line=route.line,
                    key=f"routes.{route.name}", hint="narrow one with `when:` or remove one")
            plain[(route.language, key)] = route
