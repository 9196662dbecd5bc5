"""Configuration: one TOML file, an environment override for every setting, secrets never in the file.

Where a setting comes from, last one wins:
1. the defaults below (they work with no file at all),
2. the TOML file: ``--config PATH``, else ``$ONCALL_ADAPTER_CONFIG``, else ``./oncall-adapter.toml``
   if present,
3. the environment: ``ONCALL_ADAPTER_<SECTION>__<KEY>`` (e.g. ``ONCALL_ADAPTER_MLLP__PORT=2576``).

Secrets (API keys, shared secrets, passwords) are read from the environment
(``ONCALL_ADAPTER_ONCALL__API_KEY``) or from a file named in the TOML
(``api_key_file = "/run/secrets/oncall"``), never from the TOML itself: a secret written in the
file is refused with a message saying where to put it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from adapter.errors import ConfigError

__all__ = ["ENV_PREFIX", "Config", "load_config", "render_config"]

ENV_PREFIX = "ONCALL_ADAPTER_"
DEFAULT_FILE = "oncall-adapter.toml"
SANDBOX_TOKEN = "sandbox-token"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLLPConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    idle_timeout_seconds: float = Field(300.0, gt=0)
    max_connections: int = Field(64, ge=1)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None   # set to require and verify client certificates
    # PID-3 repetition used as the patient id (ordering key, crosswalk): first match wins.
    patient_id_authorities: list[str] = Field(default_factory=list)   # PID-3.4, e.g. ["HOSP", "MRN"]
    patient_id_type_codes: list[str] = Field(default_factory=lambda: ["MR"])  # PID-3.5
    dedup_window_hours: float = Field(24.0 * 7, gt=0)


class HTTPConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class StoreConfig(_Section):
    url: str = "sqlite:///var/oncall-adapter.db"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"   # SQLite durability: FULL survives power loss
    lease_seconds: float = Field(60.0, gt=0)
    pg_schema: str = "oncall_adapter"       # PostgreSQL: the schema holding the adapter's tables
    pool_min_size: int = Field(1, ge=1)     # PostgreSQL connection pool
    pool_max_size: int = Field(10, ge=1)
    connect_timeout: float = Field(10.0, gt=0)


class OnCallConfig(_Section):
    region: Literal["ca", "us"] = "ca"
    base_url: str | None = None            # overrides region, e.g. the sandbox's URL
    api_key: SecretStr | None = None       # env ONCALL_ADAPTER_ONCALL__API_KEY only
    api_key_file: Path | None = None
    auth_scheme: str = "Token"
    timeout_seconds: float = Field(30.0, gt=0)
    max_in_flight: int = Field(8, ge=1, le=64)
    emr_id_field_label: str = "EMR id"
    emr_id_field_id: str | None = None     # the custom field's id, when known: skips looking it up

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"https://api.oncallhealth.{self.region}"


class WorkersConfig(_Section):
    count: int = Field(4, ge=0, le=256)
    batch: int = Field(8, ge=1)
    poll_seconds: float = Field(0.2, gt=0)


class RetryConfig(_Section):
    base_seconds: float = Field(2.0, gt=0)
    cap_seconds: float = Field(900.0, gt=0)
    max_attempts: int = Field(30, ge=1)


class MappingsConfig(_Section):
    dir: Path | None = None                # user folder: overrides shipped files one by one
    timezone: str = "UTC"                  # for HL7 DTM values without an offset


class FHIRConfig(_Section):
    enabled: bool = True
    version: Literal["R4", "R4B", "R5"] = "R4"   # the EMR's FHIR version (validation models, notifications)
    base_path: str = "/fhir"
    auth_header: str = "Authorization"
    secret: SecretStr | None = None        # env or secret_file
    secret_file: Path | None = None
    emr_base_url: str | None = None        # the EMR's FHIR server (id-only / empty notifications)
    emr_token: SecretStr | None = None
    emr_token_file: Path | None = None
    emr_username: str | None = None
    emr_password: SecretStr | None = None
    emr_password_file: Path | None = None
    criteria: list[str] = Field(default_factory=lambda: ["Patient", "Appointment"])
    patient_identifier_system: str | None = None   # the MRN system: shares ordering keys with HL7 v2


class WebhooksConfig(_Section):
    enabled: bool = True
    path: str = "/oncall/webhooks"
    secret_header: str = "X-OnCall-Webhook-Secret"
    secret: SecretStr | None = None
    secret_file: Path | None = None


class EMRConfig(_Section):
    """Where the reverse path (OnCall -> EMR) delivers."""

    target: Literal["none", "fhir", "outbox", "mllp"] = "none"
    fhir_base_url: str | None = None
    outbox_dir: Path = Path("var/outbox")
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(2576, ge=1, le=65535)


class ScrapeConfig(_Section):
    contacts_interval_seconds: float = Field(0, ge=0)   # 0: off; e.g. 900 for every 15 minutes


class RetentionConfig(_Section):
    completed_days: float = Field(30.0, gt=0)


class ReconcileConfig(_Section):
    """`oncall-adapter reconcile`: the appointment window, and how to read an EMR export file."""

    window_past_days: float = Field(7.0, ge=0)
    window_future_days: float = Field(90.0, ge=0)
    concurrency: int = Field(4, ge=1, le=32)
    emr_export: Path | None = None        # a FHIR Bundle (.json), NDJSON or CSV export of the EMR's patients
    csv_columns: str | None = None        # field=Column,... (fields: id, first_name, last_name, email, ...)
    csv_date_format: str | None = None    # strptime format of CSV birth dates (default YYYY-MM-DD)
    csv_delimiter: str = Field(",", min_length=1, max_length=1)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"
    log_phi: bool = False   # writes patient data (PHI) to the logs: only for a supervised debugging session


class SandboxConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8900, ge=0, le=65535)
    db: str = ":memory:"
    page_size: int = Field(20, ge=1)
    token: str = SANDBOX_TOKEN


class Config(_Section):
    mllp: MLLPConfig = MLLPConfig()
    http: HTTPConfig = HTTPConfig()
    store: StoreConfig = StoreConfig()
    oncall: OnCallConfig = OnCallConfig()
    workers: WorkersConfig = WorkersConfig()
    retry: RetryConfig = RetryConfig()
    mappings: MappingsConfig = MappingsConfig()
    fhir: FHIRConfig = FHIRConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    emr: EMRConfig = EMRConfig()
    scrape: ScrapeConfig = ScrapeConfig()
    retention: RetentionConfig = RetentionConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    logging: LoggingConfig = LoggingConfig()
    sandbox: SandboxConfig = SandboxConfig()

    def secret(self, section: str, key: str) -> str | None:
        """The secret's value: from the environment (already loaded) or from its `<key>_file`."""
        sect = getattr(self, section)
        value: SecretStr | None = getattr(sect, key)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(sect, f"{key}_file", None)
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{section}.{key}_file", str(path),
                              f"a readable file holding the secret ({exc.strerror})") from exc


def _secret_keys() -> set[tuple[str, str]]:
    keys = set()
    for section, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, f in model.model_fields.items():
            if "SecretStr" in str(f.annotation):
                keys.add((section, key))
    return keys


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in Config.model_fields:
            raise ConfigError(name, raw, f"no section [{section}]; sections are "
                              + ", ".join(Config.model_fields), secret=True)
        value: Any = raw
        if raw.startswith("["):     # lists as JSON: ONCALL_ADAPTER_MLLP__PATIENT_ID_TYPE_CODES='["MR","PI"]'
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(name, raw, f"a JSON list ({exc.msg})") from exc
        out.setdefault(section, {})[key] = value
    return out


def _describe(err: Any) -> str:
    msg = str(err.get("msg", "invalid"))
    ctx = err.get("ctx") or {}
    if err.get("type") == "extra_forbidden":
        return "unknown setting; see `oncall-adapter config show` for the known ones"
    if "expected" in ctx:
        return f"expected {ctx['expected']}"
    return msg[0].lower() + msg[1:] if msg else msg


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the configuration; raise ConfigError naming the key, the bad value and what is allowed."""
    env = os.environ if environ is None else environ
    file_path = Path(path) if path else (Path(env[f"{ENV_PREFIX}CONFIG"]) if env.get(f"{ENV_PREFIX}CONFIG")
                                         else None)
    data: dict[str, Any] = {}
    if file_path is None and Path(DEFAULT_FILE).is_file():
        file_path = Path(DEFAULT_FILE)
    if file_path is not None:
        try:
            data = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("--config", str(file_path), "an existing TOML file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file_path), "(file)", f"valid TOML: {exc}") from exc
    for section, key in _secret_keys():
        if key in data.get(section, {}):
            env_name = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            raise ConfigError(f"{section}.{key}", data[section][key],
                              f"secrets are not read from {file_path}; set {env_name} in the environment "
                              f"or {section}.{key}_file = PATH to a file holding it", secret=True)
    for section, values in _env_overrides(env).items():
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(section, data[section], "a [section] table")
        data.setdefault(section, {}).update(values)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        secret = any(key == f"{s}.{k}" for s, k in _secret_keys())
        raise ConfigError(key, err.get("input"), _describe(err), secret=secret) from exc


def render_config(config: Config) -> str:
    """The effective configuration as TOML, secrets masked."""
    lines: list[str] = []
    for section in Config.model_fields:
        lines.append(f"[{section}]")
        for key, value in getattr(config, section).model_dump(mode="python").items():
            if isinstance(value, SecretStr):
                shown = '"********"'
            elif value is None:
                lines.append(f"# {key} is not set")
                continue
            elif isinstance(value, bool):
                shown = "true" if value else "false"
            elif isinstance(value, int | float):
                shown = repr(value)
            elif isinstance(value, list):
                shown = json.dumps([str(v) for v in value])
            else:
                shown = json.dumps(str(value))
            lines.append(f"{key} = {shown}")
        lines.append("")
    return "\n".join(lines)
