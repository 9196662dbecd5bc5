"""Roster contacts: create and PATCH, with custom field values merged per key."""

from __future__ import annotations

from functools import partial
from typing import Any

from adapter.oncall.sandbox.db import now_iso
from adapter.oncall.sandbox.http import Principal
from adapter.oncall.sandbox.service import Service, expect_object
from adapter.oncall.sandbox.validation import (
    REQUIRED,
    Errors,
    Invalid,
    clean_date,
    clean_email,
    clean_hyperlink,
    clean_str,
    type_name,
)

__all__ = ["create_contact", "patch_contact"]


def _custom_values(service: Service, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f'Expected a dictionary of items but got type "{type_name(value)}".')
    known = service.settings.custom_fields
    problems = [f'Unknown custom field id "{key}".' for key in value if str(key) not in known]
    problems += [f'Value of custom field "{key}" must be a string or a boolean.'
                 for key, item in value.items() if item is not None and not isinstance(item, str | bool)]
    if problems:
        raise Invalid(problems)
    return {str(k): v for k, v in value.items()}


def _clean(service: Service, data: dict[str, Any], errors: Errors) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for name in ("first_name", "last_name"):
        if name in data:
            cols[name] = errors.run(name, partial(clean_str, data[name], allow_blank=False,
                                                     max_length=255))
    if "email" in data:
        cols["email"] = errors.run("email", lambda: clean_email(data["email"]) or None)
    if "phone" in data:
        cols["phone"] = errors.run("phone", lambda: clean_str(data["phone"] or "", max_length=40) or None)
    if "notes" in data:
        cols["notes"] = errors.run("notes", lambda: clean_str(data["notes"] or ""))
    if "sex" in data and data["sex"] not in (None, ""):
        if data["sex"] in service.settings.sex_choices:
            cols["sex"] = data["sex"]
        else:
            errors.add("sex", f'"{data["sex"]}" is not a valid choice.')
    if "date_of_birth" in data:
        cols["date_of_birth"] = errors.run("date_of_birth", lambda: clean_date(data["date_of_birth"]))
    if "division" in data:
        cols["division_id"] = errors.run("division", lambda: clean_hyperlink(
            data["division"], "divisions", lambda i: service.db.get("divisions", i) is not None))
    return cols


def create_contact(service: Service, data: Any, who: Principal) -> int:
    data = expect_object(data)
    errors = Errors()
    for name in ("first_name", "last_name"):
        if name not in data:
            errors.add(name, REQUIRED)
    cols = _clean(service, data, errors)
    cols["provider_id"] = service.provider_for(data, who, errors, required=True)
    values = errors.run("custom_field_values", lambda: _custom_values(
        service, data.get("custom_field_values") or {}))
    errors.raise_if_any()
    if "division_id" not in cols:
        provider = service.db.get("providers", cols["provider_id"])
        cols["division_id"] = provider["divisions"][0] if provider else 1
    stamp = now_iso()
    return service.db.insert("contacts", **cols, custom_field_values=values or {}, created_at=stamp,
                             updated_at=stamp)


def patch_contact(service: Service, contact_id: int, data: Any, who: Principal) -> None:
    row = service.contact(contact_id, who)
    data = expect_object(data)
    errors = Errors()
    cols = _clean(service, data, errors)
    if "provider" in data:
        cols["provider_id"] = service.provider_for(data, who, errors, required=False)
    if (service.settings.contact_email_immutable and "email" in cols
            and (cols["email"] or "").casefold() != (row["email"] or "").casefold()):
        errors.add("email", "This field cannot be changed after the contact is created.")
    if "custom_field_values" in data:
        values = errors.run("custom_field_values",
                            lambda: _custom_values(service, data["custom_field_values"]))
        if values is not None:
            # Merged per key: PATCHing one id leaves the others as they were (doc).
            cols["custom_field_values"] = {**row["custom_field_values"], **values}
    errors.raise_if_any()
    service.db.update("contacts", contact_id, **cols, updated_at=now_iso())
