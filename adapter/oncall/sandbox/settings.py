"""The sandbox's switches: each assumed OnCall behaviour (see oncall-api.md) is one of them.

Most can be changed at run time with ``POST /__sandbox__/config`` (see control.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DEFAULT_API_KEYS", "SandboxSettings"]

# key -> provider id for a provider key, None for a coordinator key (must pass `provider`).
DEFAULT_API_KEYS: dict[str, int | None] = {
    "sandbox-token": 1,
    "sandbox-coordinator-token": None,
}


@dataclass
class SandboxSettings:
    # Public base used in every absolute URL the sandbox emits (e.g. http://127.0.0.1:8900);
    # None: the base the request came in on.
    base_url: str | None = None
    api_keys: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_API_KEYS))
    auth_schemes: tuple[str, ...] = ("Token",)
    page_size: int = 5
    # Webhooks: target URL, an extra header "Name: value" carrying a shared secret, and the URL
    # style in bodies: "api" (this base, trailing slash) or "documented" (the docs' example:
    # https://api.oncallhealth.com/appointments/1, other host, no trailing slash).
    webhook_url: str | None = None
    webhook_secret_header: str | None = None
    webhook_url_style: str = "api"
    webhook_retry_delays: tuple[float, ...] = (0.1, 0.5, 1.0)
    webhook_timeout: float = 5.0
    custom_fields: dict[str, str] = field(default_factory=lambda: {"2": "EMR id"})
    # Assumed behaviours, as switches:
    append_slash: str = "redirect"        # "redirect": GET/HEAD without slash -> 301; "404": no redirect
    contact_filters: bool = True          # honour ?email= ?name= ?phone= (False: ignored like unknown params)
    contact_email_immutable: bool = False  # PATCH of a contact's e-mail -> 400
    metadata_patch: str = "replace"       # "replace" or "merge" on PATCH of appointment metadata
    reject_naive_datetimes: bool = True   # a datetime without offset -> 400 (DRF would guess a zone)
    sex_choices: tuple[str, ...] = ("male", "female", "Unknown")
    admin_token: str | None = None        # when set, /__sandbox__/ needs X-Sandbox-Admin-Token

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Apply run-time changes; returns the names of unknown keys (left unapplied)."""
        known = {f.name: f for f in fields(self)}
        unknown: list[str] = []
        for name, value in changes.items():
            if name not in known or name in ("api_keys", "admin_token"):
                unknown.append(name)
                continue
            current = getattr(self, name)
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            setattr(self, name, value)
        return unknown

    def public(self) -> dict[str, Any]:
        """The settings without secrets (for GET /__sandbox__/config)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_keys"] = {"provider_keys": sum(1 for v in self.api_keys.values() if v is not None),
                           "coordinator_keys": sum(1 for v in self.api_keys.values() if v is None)}
        out["admin_token"] = bool(self.admin_token)
        out["webhook_secret_header"] = bool(self.webhook_secret_header)
        return out
