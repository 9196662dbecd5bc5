"""FHIR resources as the adapter accepts them: JSON parsed, structure checked, mapped codes checked.

Structure is checked by `fhir.resources` (its R4B models read R4 Patient and Appointment; the
top-level models are R5). Those models do not enforce value sets (`gender: "x"` passes), so the
codes of every field the mappings read are checked here against the spec's value sets.

This module is the one choke point for pydantic's and json's exceptions on FHIR input: each becomes
a `FHIRValidationError` (a `FHIRInputError`) whose issues name the place as a FHIRPath-like
expression such as ``Appointment.participant[0].actor``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from fhir.resources import get_fhir_model_class as _r5_model
from fhir.resources.R4B import get_fhir_model_class as _r4b_model

from adapter.errors import FHIRInputError

__all__ = [
    "SUPPORTED_VERSIONS",
    "FHIRValidationError",
    "FHIRVersion",
    "Issue",
    "Resource",
    "canonical_bytes",
    "check_codes",
    "check_invariants",
    "content_key",
    "loc_to_expression",
    "parse_json",
    "validate_resource",
]

FHIRVersion = Literal["R4", "R4B", "R5"]
SUPPORTED_VERSIONS: tuple[FHIRVersion, ...] = ("R4", "R4B", "R5")


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue: FHIR issue-type `code`, `expression` (FHIRPath-like), message."""

    expression: str | None
    message: str
    code: str = "invalid"            # http://hl7.org/fhir/issue-type: invalid, structure, code-invalid, ...
    severity: str = "error"


class FHIRValidationError(FHIRInputError):
    """A resource failed validation; `issues` lists every problem found (the first one is in the message)."""

    def __init__(self, issues: Sequence[Issue], *, status: int = 422, hint: str | None = None) -> None:
        self.issues = list(issues)
        first = self.issues[0]
        more = f" (and {len(self.issues) - 1} more issue(s))" if len(self.issues) > 1 else ""
        super().__init__(first.message + more, expression=first.expression, status=status, hint=hint)


@dataclass(frozen=True, slots=True)
class Resource:
    """A validated resource: its JSON object plus what dedup and ordering need."""

    resource_type: str
    id: str | None
    version_id: str | None
    data: dict[str, Any]
    version: FHIRVersion


# -- value sets of the fields the mappings read (hl7.org/fhir/R4 and R5, required bindings) --------
GENDER = frozenset({"male", "female", "other", "unknown"})
APPOINTMENT_STATUS = frozenset({"proposed", "pending", "booked", "arrived", "fulfilled", "cancelled",
                                "noshow", "entered-in-error", "checked-in", "waitlist"})
CONTACT_POINT_SYSTEM = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
CONTACT_POINT_USE = frozenset({"home", "work", "temp", "old", "mobile"})
PARTICIPATION_STATUS = frozenset({"accepted", "declined", "tentative", "needs-action"})
PARTICIPANT_REQUIRED = frozenset({"required", "optional", "information-only"})   # R4/R4B; R5 made it boolean

# (path, value set name, value set); a path is dotted field names, `[]` marks a list.
_CODE_FIELDS: dict[str, tuple[tuple[str, str, frozenset[str]], ...]] = {
    "Patient": (
        ("gender", "administrative-gender", GENDER),
        ("telecom[].system", "contact-point-system", CONTACT_POINT_SYSTEM),
        ("telecom[].use", "contact-point-use", CONTACT_POINT_USE),
        ("contact[].gender", "administrative-gender", GENDER),
        ("contact[].telecom[].system", "contact-point-system", CONTACT_POINT_SYSTEM),
        ("contact[].telecom[].use", "contact-point-use", CONTACT_POINT_USE),
    ),
    "Appointment": (
        ("status", "appointmentstatus", APPOINTMENT_STATUS),
        ("participant[].status", "participationstatus", PARTICIPATION_STATUS),
        ("participant[].required", "participantrequired", PARTICIPANT_REQUIRED),
    ),
}


def parse_json(body: bytes, *, what: str = "request body") -> dict[str, Any]:
    """The body as a JSON object, or a 400 FHIRInputError saying where the syntax broke."""
    if not body.strip():
        raise FHIRInputError(f"{what} is empty", status=400, hint="send a FHIR resource as JSON")
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise FHIRInputError(f"{what} is not UTF-8 (byte {exc.start})", status=400,
                             hint="FHIR JSON is always UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FHIRInputError(f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             status=400, hint="send application/fhir+json") from None
    if not isinstance(data, dict):
        raise FHIRInputError(f"{what} is JSON but not an object (a {type(data).__name__})", status=400,
                             hint="send one FHIR resource, a JSON object with resourceType")
    return data


def loc_to_expression(root: str, loc: Sequence[int | str]) -> str:
    """pydantic's error location as a FHIRPath-like expression: ``("participant", 0, "actor")`` ->
    ``Appointment.participant[0].actor``."""
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("resource_type", "resourceType"):
            out += ".resourceType"
        else:
            out += f".{part}"
    return out


def _model(version: FHIRVersion, resource_type: str) -> type[pydantic.BaseModel]:
    getter = _r5_model if version == "R5" else _r4b_model
    try:
        return getter(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        raise FHIRInputError(f"resourceType {resource_type!r} is not a FHIR {version} resource type",
                             expression="resourceType", status=400,
                             hint="check the resourceType and the configured FHIR version") from None


def validate_resource(data: dict[str, Any], *, version: FHIRVersion = "R4",
                      expected_type: str | None = None, where: str | None = None) -> Resource:
    """Check a resource's structure and mapped codes; raise FHIRValidationError listing every issue.

    `where` prefixes expressions when the resource sits inside something else,
    e.g. ``Bundle.entry[2].resource``.
    """
    resource_type = data.get("resourceType")
    root = where or (resource_type if isinstance(resource_type, str) else "Resource")
    if not isinstance(resource_type, str) or not resource_type:
        raise FHIRValidationError([Issue(f"{root}.resourceType" if where else "resourceType",
                                         "resourceType is missing", "required")], status=400,
                                  hint="a FHIR JSON resource names its type in resourceType")
    if expected_type is not None and resource_type != expected_type:
        raise FHIRValidationError([Issue(f"{root}.resourceType" if where else "resourceType",
                                         f"resourceType is {resource_type!r} but this URL takes "
                                         f"{expected_type!r}",
                                         "invalid")], status=400,
                                  hint=f"PUT/POST a {expected_type} to .../{expected_type}/<id>")
    model = _model(version, resource_type)
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = [Issue(loc_to_expression(root, err["loc"]), _message(err), _issue_code(err["type"]))
                  for err in exc.errors(include_url=False)]
        raise FHIRValidationError(issues, status=400,
                                  hint=_structure_hint(version, resource_type, data)) from None
    code_issues = check_codes(data, root=root, version=version) + check_invariants(data, root=root)
    if code_issues:
        codes_only = all(i.code == "code-invalid" for i in code_issues)
        hint = ("use a code of the value set the FHIR specification binds" if codes_only
                else "fix the elements each issue's expression names")
        raise FHIRValidationError(code_issues, status=422, hint=hint)
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    rid = data.get("id")
    vid = meta.get("versionId") if meta else None
    return Resource(resource_type, rid if isinstance(rid, str) else None,
                    vid if isinstance(vid, str) else None, data, version)


def check_codes(data: dict[str, Any], *, root: str | None = None, version: FHIRVersion = "R4") -> list[Issue]:
    """Issues for every mapped code field whose value is outside its value set."""
    resource_type = str(data.get("resourceType"))
    root = root or resource_type
    issues: list[Issue] = []
    for path, vs_name, allowed in _CODE_FIELDS.get(resource_type, ()):
        if path == "participant[].required" and version == "R5":
            continue                      # R5: a boolean, already checked by the model
        for expression, value in _walk(data, path.split("."), root):
            if value not in allowed:
                issues.append(Issue(expression,
                                    f"{value!r} is not a code of the {vs_name} value set "
                                    f"(allowed: {', '.join(sorted(allowed))})", "code-invalid"))
    return issues


def check_invariants(data: dict[str, Any], *, root: str | None = None) -> list[Issue]:
    """The spec's invariants on fields the mappings read (the models skip invariants)."""
    root = root or str(data.get("resourceType"))
    issues: list[Issue] = []
    if data.get("resourceType") == "Appointment":
        for i, part in enumerate(data.get("participant") or []):
            if isinstance(part, dict) and not part.get("actor") and not part.get("type"):
                issues.append(Issue(f"{root}.participant[{i}].actor",
                                    "app-1: a participant has neither an actor nor a type", "invariant"))
        if bool(data.get("start")) != bool(data.get("end")):
            issues.append(Issue(f"{root}.{'end' if data.get('start') else 'start'}",
                                "app-2: start and end are given together or not at all", "invariant"))
    return issues


def _walk(node: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
    if not parts:
        yield where, node
        return
    head, rest = parts[0], parts[1:]
    many = head.endswith("[]")
    name = head[:-2] if many else head
    if not isinstance(node, dict) or name not in node or node[name] is None:
        return
    value = node[name]
    if many and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, rest, f"{where}.{name}[{i}]")
    else:
        yield from _walk(value, rest, f"{where}.{name}")


def _structure_hint(version: FHIRVersion, resource_type: str, data: dict[str, Any]) -> str:
    """What to do about a structure error. R5 resources sent to an R4 endpoint are common (an R5
    Appointment's ``participant.required`` is a boolean, its ``class`` a list): say so when the
    resource is valid R5, so the fix (declare the version) is not mistaken for a data error."""
    if version != "R5":
        try:
            _model("R5", resource_type).model_validate(data)
        except (pydantic.ValidationError, FHIRInputError):
            pass
        else:
            return (f"the resource does not conform to FHIR {version} but is valid FHIR R5: send it with "
                    "Content-Type application/fhir+json; fhirVersion=5.0, or set fhir.version = \"R5\"")
    return f"the resource does not conform to FHIR {version}"


# fhir.resources' messages for FHIR primitive formats, which say neither the format nor an example.
_FORMAT_MESSAGES = {
    "Instant value string does not match spec regex.":
        "not a FHIR instant: give date, time and time zone, e.g. 2024-05-01T09:30:00Z or "
        "2024-05-01T09:30:00-05:00",
    "DateTime value string does not match spec regex.":
        "not a FHIR dateTime: YYYY, YYYY-MM, YYYY-MM-DD, or date and time with a time zone "
        "(2024-05-01T09:30:00Z)",
    "Date value string does not match spec regex.":
        "not a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD, without a time",
}


def _message(err: Any) -> str:
    # pydantic's messages can quote the input (PHI): keep the message, never the input value.
    msg = str(err.get("msg", "invalid value")).split("\n")[0].strip().removeprefix("Value error, ")
    return _FORMAT_MESSAGES.get(msg, msg)


def _issue_code(error_type: str) -> str:
    if error_type in ("missing",) or error_type.endswith(".missing"):
        return "required"
    if error_type == "extra_forbidden":
        return "structure"
    return "value"


def canonical_bytes(data: dict[str, Any]) -> bytes:
    """A resource serialized canonically (sorted keys, no spaces, UTF-8): stable for hashing and storing."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def content_key(data: dict[str, Any]) -> str:
    """A short content hash of a resource's canonical form, for dedup keys when there is no versionId."""
    return hashlib.sha256(canonical_bytes(data)).hexdigest()
