"""What the sandbox does with appointments, participants and contacts (no HTTP here).

Writes log the e-mails the real service would send: an invitation to each participant on
create (and to a participant added or re-addressed later), a notice to everyone on cancel and
on reschedule, and to one participant when cancelled alone.
"""

from __future__ import annotations

import functools
from typing import Any

from adapter.oncall.sandbox.db import SandboxDB, now_iso
from adapter.oncall.sandbox.http import ApiError, Principal, not_found
from adapter.oncall.sandbox.settings import SandboxSettings
from adapter.oncall.sandbox.validation import (
    APPOINTMENT_TYPES,
    MAX_PARTICIPANTS,
    REQUIRED,
    Errors,
    Invalid,
    clean_bool,
    clean_datetime,
    clean_email,
    clean_fee,
    clean_hyperlink,
    clean_int,
    clean_metadata,
    clean_str,
    type_name,
)

__all__ = ["Service", "expect_object"]

_PARTICIPANT_FIELDS = ("name", "first_name", "last_name", "email", "fee", "cancelled")


def expect_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, {"non_field_errors": [
            f"Invalid data. Expected a dictionary, but got {type_name(data)}."]})
    return data


def _digits(text: str | None) -> str:
    return "".join(ch for ch in text or "" if ch.isdigit())


class Service:
    def __init__(self, db: SandboxDB, settings: SandboxSettings) -> None:
        self.db = db
        self.settings = settings

    # -- visibility -------------------------------------------------------------------------
    @staticmethod
    def _visible(row: dict[str, Any] | None, who: Principal) -> bool:
        return row is not None and (who.is_coordinator or row["provider_id"] == who.provider_id)

    def appointment(self, appointment_id: int, who: Principal) -> dict[str, Any]:
        row = self.db.get("appointments", appointment_id)
        if row is None or not self._visible(row, who):
            raise not_found()
        return row

    def appointments(self, who: Principal) -> list[dict[str, Any]]:
        return [r for r in self.db.select("appointments") if self._visible(r, who)]

    def participants_of(self, appointment_id: int) -> list[dict[str, Any]]:
        return self.db.select("participants", "appointment_id = ?", (appointment_id,))

    def participant(self, participant_id: int, who: Principal) -> dict[str, Any]:
        row = self.db.get("participants", participant_id)
        if row is None:
            raise not_found()
        self.appointment(row["appointment_id"], who)
        return row

    def contact(self, contact_id: int, who: Principal) -> dict[str, Any]:
        row = self.db.get("contacts", contact_id)
        if row is None or not self._visible(row, who):
            raise not_found()
        return row

    def contacts(self, who: Principal, query: dict[str, str]) -> list[dict[str, Any]]:
        rows = [r for r in self.db.select("contacts") if self._visible(r, who)]
        if not self.settings.contact_filters:
            return rows     # unknown query parameters are ignored, as DRF does
        if query.get("email"):
            wanted = query["email"].strip().casefold()
            rows = [r for r in rows if (r["email"] or "").casefold() == wanted]
        if query.get("name"):
            # A search: every word of the query is in the name ("lovelace ada" finds Ada Lovelace).
            words = query["name"].casefold().split()
            rows = [r for r in rows
                    if all(w in f"{r['first_name'] or ''} {r['last_name'] or ''}".casefold() for w in words)]
        if query.get("phone") and _digits(query["phone"]):
            wanted = _digits(query["phone"])
            rows = [r for r in rows if wanted in _digits(r["phone"])]
        return rows

    def contact_appointments(self, contact: dict[str, Any], who: Principal) -> list[dict[str, Any]]:
        email = (contact["email"] or "").casefold()
        ids = {p["appointment_id"] for p in self.db.select("participants")
               if p["contact_id"] == contact["id"] or (email and (p["email"] or "").casefold() == email)}
        return [a for a in self.appointments(who) if a["id"] in ids]

    # -- participants -----------------------------------------------------------------------
    def _clean_participant(self, item: Any, *, partial: bool) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise Invalid({"non_field_errors": [
                f"Invalid data. Expected a dictionary, but got {type_name(item)}."]})
        errors = Errors()
        out: dict[str, Any] = {}
        for name in ("name", "first_name", "last_name"):
            if name in item:
                out[name] = errors.run(name, functools.partial(clean_str, item[name], max_length=255))
        if "email" in item:
            out["email"] = errors.run("email", lambda: clean_email(item["email"]))
        if "fee" in item:
            out["fee"] = errors.run("fee", lambda: clean_fee(item["fee"]))
        if "cancelled" in item:
            out["cancelled"] = errors.run("cancelled", lambda: clean_bool(item["cancelled"]))
        if "contact" in item:   # sandbox extension: link a participant to a roster contact
            out["contact_id"] = errors.run("contact", lambda: clean_hyperlink(
                item["contact"], "contacts", lambda i: self.db.get("contacts", i) is not None))
        if not partial and not (out.get("email") or out.get("name") or out.get("first_name")):
            errors.add("non_field_errors", "A participant needs an email or a name.")
        if errors.by_field:
            raise Invalid(errors.by_field)
        if not partial and not out.get("name"):
            out["name"] = " ".join(p for p in (out.get("first_name"), out.get("last_name")) if p) or None
        return out

    def _invite(self, appointment_id: int, participant_id: int, email: str | None) -> None:
        self.db.add_email(to_email=email, kind="invitation", appointment_id=appointment_id,
                          participant_id=participant_id,
                          subject=f"Invitation to appointment {appointment_id}")

    def _notify_all(self, appointment_id: int, kind: str, subject: str) -> None:
        for p in self.participants_of(appointment_id):
            if not p["cancelled"]:
                self.db.add_email(to_email=p["email"], kind=kind, appointment_id=appointment_id,
                                  participant_id=p["id"], subject=subject)

    # -- appointments -----------------------------------------------------------------------
    def provider_for(self, data: dict[str, Any], who: Principal, errors: Errors, *, required: bool) -> Any:
        exists = lambda i: self.db.get("providers", i) is not None  # noqa: E731
        if "provider" not in data or data["provider"] is None:
            if who.is_coordinator and required:
                errors.add("provider", "This field is required for coordinator keys.")
            return who.provider_id
        provider_id = errors.run("provider", lambda: clean_hyperlink(data["provider"], "providers", exists))
        if provider_id is not None and not who.is_coordinator and provider_id != who.provider_id:
            errors.add("provider", "A provider key may only act for its own provider.")
        return provider_id

    def _participants(self, value: Any, errors: Errors, existing: dict[int, dict[str, Any]] | None
                      ) -> list[tuple[int | None, dict[str, Any]]]:
        """[(existing participant id or None for a new one, cleaned fields)] from a participants list."""
        if not isinstance(value, list):
            errors.add("participants", f'Expected a list of items but received type "{type_name(value)}".')
            return []
        if not value:
            errors.add("participants", "This list may not be empty.")
            return []
        items: list[tuple[int | None, dict[str, Any]]] = []
        details: list[Any] = []
        for item in value:
            try:
                if existing is not None and isinstance(item, dict) and item.get("url") is not None:
                    pid = clean_hyperlink(item["url"], "participants", lambda i: i in existing)
                    items.append((pid, self._clean_participant(item, partial=True)))
                else:
                    items.append((None, self._clean_participant(item, partial=False)))
                details.append({})
            except Invalid as exc:
                details.append(exc.detail if isinstance(exc.detail, dict) else {"url": exc.detail})
        if any(details):
            errors.by_field["participants"] = details
        new = sum(1 for pid, _ in items if pid is None)
        if new + len(existing or {}) > MAX_PARTICIPANTS:
            errors.add("participants", f"Ensure this field has no more than {MAX_PARTICIPANTS} elements.")
        return items

    def create_appointment(self, data: Any, who: Principal, *, notify: bool = True) -> int:
        data = expect_object(data)
        errors = Errors()
        for name in ("title", "type", "duration", "division", "participants"):
            if name not in data:
                errors.add(name, REQUIRED)
        kind = data.get("type")
        if "type" in data and kind not in APPOINTMENT_TYPES:
            errors.add("type", f'"{kind}" is not a valid choice.')
        cols: dict[str, Any] = {"type": kind}
        if "title" in data:
            cols["title"] = errors.run("title", lambda: clean_str(data["title"], allow_blank=False))
        if data.get("datetime") is not None:
            cols["datetime"] = errors.run("datetime", lambda: clean_datetime(
                data["datetime"], reject_naive=self.settings.reject_naive_datetimes))
        elif kind != "message":
            errors.add("datetime", REQUIRED)
        if "duration" in data:
            cols["duration"] = errors.run("duration", lambda: clean_int(data["duration"], minimum=1))
        if "division" in data:
            cols["division_id"] = errors.run("division", lambda: clean_hyperlink(
                data["division"], "divisions", lambda i: self.db.get("divisions", i) is not None))
        cols["provider_id"] = self.provider_for(data, who, errors, required=True)
        if "metadata" in data:
            cols["metadata"] = errors.run("metadata", lambda: clean_metadata(data["metadata"]))
        people = self._participants(data["participants"], errors, None) if "participants" in data else []
        errors.raise_if_any()
        stamp = now_iso()
        with self.db.transaction():
            appointment_id = self.db.insert("appointments", **cols, created_at=stamp, updated_at=stamp)
            for _, fields in people:
                pid = self.db.insert("participants", appointment_id=appointment_id, **fields)
                if notify:
                    self._invite(appointment_id, pid, fields.get("email"))
        return appointment_id

    def patch_appointment(self, appointment_id: int, data: Any, who: Principal, *,
                          internal: bool = False) -> None:
        row = self.appointment(appointment_id, who)
        data = expect_object(data)
        errors = Errors()
        cols: dict[str, Any] = {}
        if "title" in data:
            cols["title"] = errors.run("title", lambda: clean_str(data["title"], allow_blank=False))
        if "type" in data:
            if data["type"] not in APPOINTMENT_TYPES:
                errors.add("type", f'"{data["type"]}" is not a valid choice.')
            cols["type"] = data["type"]
        if data.get("datetime") is not None:
            cols["datetime"] = errors.run("datetime", lambda: clean_datetime(
                data["datetime"], reject_naive=self.settings.reject_naive_datetimes))
        if cols.get("type", row["type"]) != "message" and not (cols.get("datetime") or row["datetime"]) \
                and "datetime" not in errors.by_field:
            errors.add("datetime", REQUIRED)
        if "duration" in data:
            cols["duration"] = errors.run("duration", lambda: clean_int(data["duration"], minimum=1))
        if "division" in data:
            cols["division_id"] = errors.run("division", lambda: clean_hyperlink(
                data["division"], "divisions", lambda i: self.db.get("divisions", i) is not None))
        if "provider" in data:
            cols["provider_id"] = self.provider_for(data, who, errors, required=False)
        if "metadata" in data:
            metadata = errors.run("metadata", lambda: clean_metadata(data["metadata"]))
            if metadata is not None and self.settings.metadata_patch == "merge":
                metadata = {**row["metadata"], **metadata}
            cols["metadata"] = metadata
        cancel = False
        if "cancelled" in data:
            wanted = errors.run("cancelled", lambda: clean_bool(data["cancelled"]))
            if wanted is False and row["cancelled"]:
                errors.add("cancelled", "A cancelled appointment cannot be reinstated.")
            cancel = wanted is True and not row["cancelled"]
        if internal and "status" in data:
            cols["status"] = errors.run("status", lambda: clean_str(data["status"], allow_blank=False))
        existing = {p["id"]: p for p in self.participants_of(appointment_id)}
        people = self._participants(data["participants"], errors, existing) if "participants" in data else []
        errors.raise_if_any()
        rescheduled = any(k in cols and cols[k] != row[k] for k in ("datetime", "duration"))
        with self.db.transaction():
            if cancel:
                cols["cancelled"] = True
            self.db.update("appointments", appointment_id, **cols, updated_at=now_iso())
            for pid, fields in people:
                if pid is None:
                    new_id = self.db.insert("participants", appointment_id=appointment_id, **fields)
                    self._invite(appointment_id, new_id, fields.get("email"))
                else:
                    self._apply_participant(existing[pid], fields)
            if cancel:
                self._notify_all(appointment_id, "appointment_cancelled",
                                 f"Appointment {appointment_id} cancelled")
            elif rescheduled and not row["cancelled"]:
                self._notify_all(appointment_id, "appointment_rescheduled",
                                 f"Appointment {appointment_id} rescheduled")

    def _apply_participant(self, row: dict[str, Any], fields: dict[str, Any]) -> None:
        if fields.get("cancelled") is False and row["cancelled"]:
            raise ApiError(400, {"cancelled": ["A cancelled participant cannot be reinstated."]})
        self.db.update("participants", row["id"], **fields)
        if fields.get("cancelled") and not row["cancelled"]:
            self.db.add_email(to_email=row["email"], kind="participant_cancelled",
                              appointment_id=row["appointment_id"], participant_id=row["id"],
                              subject=f"Your appointment {row['appointment_id']} was cancelled")
        elif fields.get("email") and fields["email"].casefold() != (row["email"] or "").casefold():
            self._invite(row["appointment_id"], row["id"], fields["email"])

    def patch_participant(self, participant_id: int, data: Any, who: Principal) -> int:
        """Returns the participant's appointment id (its webhook fires appointment_updated)."""
        row = self.participant(participant_id, who)
        item = {k: v for k, v in expect_object(data).items() if k in _PARTICIPANT_FIELDS}
        try:
            fields = self._clean_participant(item, partial=True)
        except Invalid as exc:
            raise ApiError(400, exc.detail) from None
        with self.db.transaction():
            self._apply_participant(row, fields)
            self.db.update("appointments", row["appointment_id"], updated_at=now_iso())
        return int(row["appointment_id"])
