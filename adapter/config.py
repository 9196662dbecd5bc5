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
    """The HL7 v2 listener (MLLP over TCP, optional TLS)."""

    enabled: bool = Field(True, description="listen for HL7 v2 over MLLP")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(2575, ge=0, le=65535, description="TCP port")
    max_message_bytes: int = Field(1024 * 1024, ge=1024,
                                   description="larger messages get an AR (or the connection is closed)")
    idle_timeout_seconds: float = Field(300.0, gt=0, description="close a connection silent this long")
    max_connections: int = Field(64, ge=1, description="connections beyond this are refused")
    tls_cert_file: Path | None = Field(None, description="PEM certificate: set with tls_key_file to use TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key")
    tls_client_ca_file: Path | None = Field(None, description="require client certificates signed by this CA")
    patient_id_authorities: list[str] = Field(
        default_factory=list, description="PID-3.4 assigning authorities that name the patient id, "
                                          "in order of preference (e.g. [\"HOSP\"])")
    patient_id_type_codes: list[str] = Field(
        default_factory=lambda: ["MR", "MRN"],
        description="PID-3.5 identifier type codes that name the patient id, tried after the authorities")
    dedup_window_hours: float = Field(24.0 * 7, gt=0,
                                      description="a resend with the same control id within this window is "
                                                  "a duplicate")


class HTTPConfig(_Section):
    """The HTTP listener: FHIR subscriptions, OnCall webhooks, /healthz, /readyz, /metrics."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port")


class StoreConfig(_Section):
    """Where envelopes, the crosswalk and the audit are kept."""

    url: str = Field("sqlite:///var/oncall-adapter.db",
                     description="sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite durability: FULL survives a power cut, NORMAL only a process crash")
    lease_seconds: float = Field(60.0, gt=0, description="a claim not renewed for this long is taken over")
    pg_schema: str = Field("oncall_adapter", description="PostgreSQL schema holding the adapter's tables")
    pool_min_size: int = Field(1, ge=1, description="PostgreSQL connection pool, smallest")
    pool_max_size: int = Field(10, ge=1, description="PostgreSQL connection pool, largest")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for PostgreSQL")


class OnCallConfig(_Section):
    """The OnCall Health API."""

    region: Literal["ca", "us"] = Field("ca", description="api.oncallhealth.ca or api.oncallhealth.us")
    base_url: str | None = Field(None, description="overrides region (e.g. a sandbox URL)")
    api_key: SecretStr | None = Field(None, description="secret: ONCALL_ADAPTER_ONCALL__API_KEY only")
    api_key_file: Path | None = Field(None, description="a file holding the API key")
    auth_scheme: str = Field("Token", description="the word before the key in the Authorization header")
    timeout_seconds: float = Field(30.0, gt=0, description="per request")
    max_in_flight: int = Field(8, ge=1, le=64, description="concurrent requests per process")
    emr_id_field_label: str = Field("EMR id", description="label of the contact custom field holding the "
                                                          "EMR patient id")
    emr_id_field_id: str | None = Field(None, description="that custom field's id, when known (skips the "
                                                          "look-up)")

    @property
    def effective_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"https://api.oncallhealth.{self.region}"


class WorkersConfig(_Section):
    """The workers applying envelopes (one patient's in order, different patients in parallel)."""

    count: int = Field(4, ge=0, le=256, description="claiming tasks (0: store only, apply nothing)")
    batch: int = Field(8, ge=1, description="envelopes each task claims at once")
    poll_seconds: float = Field(0.2, gt=0, description="how often an idle task looks for work")


class RetryConfig(_Section):
    """Retries of transient failures (timeouts, 429, 5xx), with exponential backoff and jitter."""

    base_seconds: float = Field(2.0, gt=0, description="first delay")
    cap_seconds: float = Field(900.0, gt=0, description="longest delay (a Retry-After may be longer)")
    max_attempts: int = Field(30, ge=1, description="then the envelope goes to the dead letter")


class MappingsConfig(_Section):
    """The mapping files."""

    dir: Path | None = Field(None, description="your folder: its files replace shipped files of the "
                                               "same name")
    timezone: str = Field("UTC", description="time zone of HL7 times without an offset "
                                             "(e.g. America/Toronto)")


class FHIRConfig(_Section):
    """The FHIR subscription endpoint, and the EMR's FHIR server it reads from."""

    enabled: bool = Field(True, description="serve the subscription routes")
    version: Literal["R4", "R4B", "R5"] = Field("R4", description="the EMR's FHIR version")
    base_path: str = Field("/fhir", description="path of the subscription routes")
    auth_header: str = Field("Authorization", description="header the Subscription's channel sends")
    secret: SecretStr | None = Field(None, description="secret: that header's exact value "
                                                       "(ONCALL_ADAPTER_FHIR__SECRET)")
    secret_file: Path | None = Field(None, description="a file holding it")
    emr_base_url: str | None = Field(None, description="the EMR's FHIR base (id-only and empty "
                                                       "notifications, catch-up)")
    emr_token: SecretStr | None = Field(None, description="secret: bearer token for the EMR's FHIR server")
    emr_token_file: Path | None = Field(None, description="a file holding it")
    emr_username: str | None = Field(None, description="basic auth user for the EMR's FHIR server")
    emr_password: SecretStr | None = Field(None, description="secret: basic auth password")
    emr_password_file: Path | None = Field(None, description="a file holding it")
    criteria: list[str] = Field(default_factory=lambda: ["Patient", "Appointment"],
                                description="resource types read on catch-up")
    patient_identifier_system: str | None = Field(
        None, description="the MRN identifier system: FHIR and HL7 v2 of one patient share an order")


class WebhooksConfig(_Section):
    """OnCall webhooks (appointment_created, appointment_updated)."""

    enabled: bool = Field(True, description="serve the webhook route (only with a secret)")
    path: str = Field("/oncall/webhooks", description="route; the secret may also be its last segment")
    secret_header: str = Field("X-OnCall-Webhook-Secret", description="header carrying the secret")
    secret: SecretStr | None = Field(None, description="secret: ONCALL_ADAPTER_WEBHOOKS__SECRET")
    secret_file: Path | None = Field(None, description="a file holding it")


class EMRConfig(_Section):
    """Where the reverse path (OnCall -> EMR) delivers."""

    target: Literal["none", "fhir", "outbox", "mllp"] = Field(
        "none", description="none, fhir (POST transaction Bundles), outbox (files) or mllp (HL7 v2)")
    fhir_base_url: str | None = Field(None, description="FHIR target (default: fhir.emr_base_url)")
    outbox_dir: Path = Field(Path("var/outbox"), description="outbox target folder")
    mllp_host: str = Field("127.0.0.1", description="MLLP target host")
    mllp_port: int = Field(2576, ge=1, le=65535, description="MLLP target port")


class ScrapeConfig(_Section):
    """The scrape of OnCall roster contacts (OnCall has no contact webhooks)."""

    contacts_interval_seconds: float = Field(0, ge=0, description="0: off; e.g. 900 for every 15 minutes")


class RetentionConfig(_Section):
    """What the store keeps."""

    completed_days: float = Field(30.0, gt=0, description="payloads of applied envelopes are purged after "
                                                          "this (audit and crosswalk are kept)")


class ReconcileConfig(_Section):
    """`oncall-adapter reconcile`: the appointment window, and how to read an EMR export file."""

    window_past_days: float = Field(7.0, ge=0, description="appointments starting this far back")
    window_future_days: float = Field(90.0, ge=0, description="and this far ahead")
    concurrency: int = Field(4, ge=1, le=32, description="OnCall requests in flight while collecting")
    emr_export: Path | None = Field(None, description="the EMR's patients as a FHIR Bundle (.json), NDJSON "
                                                      "or CSV, instead of searching its FHIR server")
    csv_columns: str | None = Field(None, description="field=Column,... (id, first_name, last_name, email, "
                                                      "phone, sex, date_of_birth)")
    csv_date_format: str | None = Field(None, description="strptime format of CSV birth dates "
                                                          "(default YYYY-MM-DD)")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV delimiter")


class LoggingConfig(_Section):
    """Logs (stderr). Patient data never reaches them unless log_phi is on."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO",
                                                                description="least severe level shown")
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a terminal, "
                                                                           "else JSON")
    log_phi: bool = Field(False, description="WRITES PATIENT DATA (PHI) TO THE LOGS: supervised debugging "
                                             "only")


class SandboxConfig(_Section):
    """The local OnCall sandbox (`serve --sandbox`, `sandbox`)."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8900, ge=0, le=65535, description="TCP port")
    db: str = Field(":memory:", description="SQLite file for its state (:memory: forgets on exit)")
    page_size: int = Field(20, ge=1, description="list page size")
    token: str = Field(SANDBOX_TOKEN, description="its provider API key")


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
    for section, section_field in Config.model_fields.items():
        model = section_field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines.append(f"# {(model.__doc__ or '').strip().splitlines()[0]}")
        lines.append(f"[{section}]")
        for key, value in getattr(config, section).model_dump(mode="python").items():
            description = model.model_fields[key].description
            if description:
                lines.append(f"# {description}")
            if isinstance(value, SecretStr):
                shown = '"********"'
            elif value is None:
                lines.append(f"# {key} = (not set)")
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
