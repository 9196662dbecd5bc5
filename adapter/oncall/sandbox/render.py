"""Hyperlinked JSON representations, as OnCall sends them (absolute URLs with trailing slashes)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from adapter.oncall.sandbox.db import SandboxDB

__all__ = ["Renderer"]


def _fee(value: str | None) -> Any:
    """Fees are numbers in the documented API (the fee_as_string fault turns them into strings)."""
    if value is None:
        return None
    fee = Decimal(value)
    return int(fee) if fee == fee.to_integral_value() else float(fee)


class Renderer:
    def __init__(self, db: SandboxDB, base: str, custom_fields: dict[str, str]) -> None:
        self.db = db
        self.base = base.rstrip("/")
        self.custom_fields = custom_fields

    def url(self, kind: str, object_id: int) -> str:
        return f"{self.base}/{kind}/{object_id}/"

    def participant(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.url("participants", row["id"]),
            "appointment": self.url("appointments", row["appointment_id"]),
            "name": row["name"],
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "email": row["email"],
            "fee": _fee(row["fee"]),
            "cancelled": row["cancelled"],
            "user_id": row["user_id"],
            "answers": [],
        }

    def appointment(self, row: dict[str, Any]) -> dict[str, Any]:
        people = self.db.select("participants", "appointment_id = ?", (row["id"],))
        return {
            "url": self.url("appointments", row["id"]),
            "title": row["title"],
            "type": row["type"],
            "datetime": row["datetime"],
            "duration": row["duration"],
            "division": self.url("divisions", row["division_id"]),
            "provider": self.url("providers", row["provider_id"]),
            "participants": [self.participant(p) for p in people],
            "metadata": row["metadata"],
            "status": row["status"],
            "cancelled": row["cancelled"],
        }

    def contact(self, row: dict[str, Any]) -> dict[str, Any]:
        name = " ".join(p for p in (row["first_name"], row["last_name"]) if p)
        return {
            "url": self.url("contacts", row["id"]),
            "id": row["id"],
            "name": name,
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "email": row["email"],
            "phone": row["phone"],
            "sex": row["sex"],
            "date_of_birth": row["date_of_birth"],
            "notes": row["notes"],
            "provider": self.url("providers", row["provider_id"]),
            "division": self.url("divisions", row["division_id"]),
            "appointments": f"{self.url('contacts', row['id'])}appointments/",
            "custom_field_names": dict(self.custom_fields),
            "custom_field_values": {k: row["custom_field_values"].get(k) for k in self.custom_fields},
        }

    def provider(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.url("providers", row["id"]),
            "full_name": row["full_name"],
            "email": row["email"],
            "memberships": [{"division": self.url("divisions", d), "role": "provider"}
                            for d in row["divisions"]],
        }

    def division(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.url("divisions", row["id"]), "name": row["name"]}
