"""The corrections `reconcile --fix` queues, beside the mapping's own operation kinds.

A RECONCILE envelope's payload is a JSON list of operations: the mapping kinds (`contact_upsert`,
`appointment_cancel`) and the kinds below, which exist because a correction must act on what OnCall
holds NOW, not on the crosswalk's memory of what was last written (a `contact_upsert` whose values
equal the recorded hashes sends nothing, however OnCall drifted). Each kind is a compare-and-set:
it carries what the report saw (`expect`, `replaces`) and does nothing where the object changed since,
so a correction queued behind a newer feed update never overwrites it.

These kinds are deliberately NOT in the mapping registry (`OPERATIONS`): mapping files cannot
produce them, and `mappings reference` does not list them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError

from adapter.errors import InputError
from adapter.mapping.operations import Operation, operation_from_dict

__all__ = [
    "RECONCILE_OPERATIONS",
    "AppointmentPatch",
    "ContactPatch",
    "ContactSetEmrId",
    "XrefLink",
    "XrefUnlink",
    "parse_operations",
]

Url = Annotated[str, Field(min_length=8, max_length=2000)]
Id = Annotated[str, Field(min_length=1, max_length=200)]


class ContactSetEmrId(Operation):
    summary: ClassVar[str] = "Set a contact's empty EMR id custom field."
    kind: Literal["contact_set_emr_id"] = "contact_set_emr_id"
    contact_url: Url
    emr_patient_id: Id


class ContactPatch(Operation):
    summary: ClassVar[str] = "Patch contact fields that still hold the drifted value the report saw."
    kind: Literal["contact_patch"] = "contact_patch"
    contact_url: Url
    emr_patient_id: Id
    set: dict[str, Any]
    expect: dict[str, Any]


class AppointmentPatch(Operation):
    summary: ClassVar[str] = "Patch appointment start/duration that still hold what the report saw."
    kind: Literal["appointment_patch"] = "appointment_patch"
    appointment_url: Url
    emr_appointment_id: Id
    set: dict[str, Any]
    expect: dict[str, Any]


class XrefLink(Operation):
    summary: ClassVar[str] = "Point a crosswalk entry at a target, if it still points where the report saw."
    kind: Literal["xref_link"] = "xref_link"
    namespace: Id
    source_id: Id
    target: Url
    replaces: str | None = None


class XrefUnlink(Operation):
    summary: ClassVar[str] = "Delete a crosswalk entry, if it still points at the target the report saw."
    kind: Literal["xref_unlink"] = "xref_unlink"
    namespace: Id
    source_id: Id
    target: str


RECONCILE_OPERATIONS: dict[str, type[Operation]] = {
    cls.__pydantic_fields__["kind"].default: cls
    for cls in (ContactSetEmrId, ContactPatch, AppointmentPatch, XrefLink, XrefUnlink)
}


def parse_operations(payload: bytes | str, *, where: str = "reconcile payload") -> list[Operation]:
    """The operations of a RECONCILE envelope; InputError (dead letter) names the bad one."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: not JSON ({exc})", hint="reconcile payloads are JSON lists of "
                         "operations written by `reconcile --fix`; drop this envelope") from None
    if not isinstance(data, list):
        raise InputError(f"{where}: expected a JSON list of operations, got {type(data).__name__}",
                         hint="drop this envelope and run `reconcile --fix` again")
    ops: list[Operation] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise InputError(f"{where}[{index}]: an operation is a JSON object",
                             hint="drop this envelope and run `reconcile --fix` again")
        cls = RECONCILE_OPERATIONS.get(str(item.get("kind")))
        try:
            ops.append(cls.model_validate(item) if cls is not None else operation_from_dict(item))
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[:3]
            raise InputError(f"{where}[{index}] ({item.get('kind')}): {' '.join(first)}",
                             hint="drop this envelope and run `reconcile --fix` again") from None
    return ops
