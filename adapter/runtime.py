"""The composition root: builds config, store, clients, mappings and listeners, and runs them.

Everything runs in one anyio task group. Start-up order: store (migrated), mappings (validated: an
invalid folder stops start-up), OnCall client, then the listeners and the workers. Shutdown on
SIGINT/SIGTERM: the task group is cancelled; listeners stop accepting and finish what they were
committing, workers release their claims, then the clients and the store are closed. SIGHUP
reloads the mapping files; a broken set is refused and the old one kept.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from starlette.routing import BaseRoute

from adapter.asgi import serve_asgi
from adapter.config import Config
from adapter.errors import AdapterError, ConfigError
from adapter.mapping.engine import MappingSet
from adapter.mapping.loader import default_dirs, load_mapping_set
from adapter.store import open_store
from adapter.store.base import Store
from listeners.http import build_http_app

__all__ = ["MappingHolder", "Runtime", "run_serve"]

log = structlog.get_logger(__name__)


@dataclass
class MappingHolder:
    """The mapping set in force; replaced whole on reload so a worker never sees half of one."""

    dirs: list[Path]
    timezone: str
    current: MappingSet = field(init=False)

    def __post_init__(self) -> None:
        self.current = load_mapping_set(self.dirs, timezone=self.timezone)

    def get(self) -> MappingSet:
        return self.current

    def reload(self) -> bool:
        try:
            new = load_mapping_set(self.dirs, timezone=self.timezone)
        except AdapterError as exc:
            log.error("mappings_reload_refused", error_type=type(exc).__name__,
                      mapping_version=self.current.version)
            print(f"oncall-adapter: mapping reload refused, keeping the current set: {exc}",
                  file=sys.stderr, flush=True)
            return False
        self.current = new
        log.info("mappings_reloaded", mapping_version=new.version)
        return True

    def accepts(self, kind: str) -> str | None:
        """For the MLLP listener: None when a route takes this HL7 v2 kind, else why not."""
        if self.current.has_route("mllp", kind):
            return None
        return f"no mapping route takes {kind}; add one to a file in the mapping folder"


def mapping_dirs(config: Config) -> list[Path]:
    return default_dirs(config.mappings.dir)


@dataclass
class Runtime:
    """What the running process holds; handed to the parts that need it (no globals)."""

    config: Config
    store: Store
    mappings: MappingHolder
    oncall_base_url: str
    owner_id: str
    listening: dict[str, int] = field(default_factory=dict)   # listener name -> bound port

    async def readiness(self) -> dict[str, bool]:
        checks = {"store": await self.store.ping()}
        if self.config.mllp.enabled:
            checks["mllp"] = "mllp" in self.listening
        checks["http"] = "http" in self.listening
        return checks


async def _handle_signals(scope: anyio.CancelScope, mappings: MappingHolder) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                mappings.reload()
                continue
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def run_serve(config: Config, *, sandbox: bool = False) -> None:
    """Run until SIGINT/SIGTERM (or cancellation)."""
    from adapter.oncall.client import OnCallClient
    from adapter.worker.pool import build_worker_pool

    owner_id = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    mappings = MappingHolder(mapping_dirs(config), config.mappings.timezone)
    base_url = config.oncall.effective_base_url
    api_key = config.secret("oncall", "api_key")
    async with anyio.create_task_group() as tg:
        tg.start_soon(_handle_signals, tg.cancel_scope, mappings)
        if sandbox:
            from adapter.oncall.sandbox.server import serve_sandbox
            s = config.sandbox
            port = await tg.start(partial(serve_sandbox, host=s.host, port=s.port, token=s.token,
                                          db_path=s.db, page_size=s.page_size, **_sandbox_webhook(config)))
            base_url = f"http://{s.host}:{port}"
            api_key = s.token
        if not api_key:
            raise ConfigError("oncall.api_key", None, "the OnCall API key: set "
                              "ONCALL_ADAPTER_ONCALL__API_KEY or oncall.api_key_file, "
                              "or run `serve --sandbox`",
                              secret=True)
        store = build_store(config)
        await store.open()
        oc = config.oncall
        client = OnCallClient(base_url=base_url, region=None, api_key=api_key, auth_scheme=oc.auth_scheme,
                              timeout=oc.timeout_seconds, max_in_flight=oc.max_in_flight,
                              custom_field_ids={oc.emr_id_field_label: oc.emr_id_field_id}
                              if oc.emr_id_field_id else None)
        runtime = Runtime(config, store, mappings, base_url, owner_id)
        closers: list[Callable[[], Awaitable[None]]] = [client.aclose, store.close]
        try:
            reverse = None
            if config.emr.target != "none":
                from adapter.reverse.wiring import build_reverse_executor
                reverse = build_reverse_executor(config, store, client, oncall_base_url=base_url,
                                                 mappings=mappings.get)
                closers.insert(0, reverse.aclose)
            pool = build_worker_pool(runtime, client, reverse=reverse)
            if config.mllp.enabled:
                runtime.listening["mllp"] = await tg.start(partial(_run_mllp, runtime, pool.wake))
            routes, handlers, more_closers = _http_routes(runtime, client, on_stored=pool.wake)
            closers[:0] = more_closers
            app = build_http_app(store, readiness=runtime.readiness, routes=routes,
                                 exception_handlers=handlers)
            runtime.listening["http"] = await tg.start(partial(serve_asgi, app, host=config.http.host,
                                                               port=config.http.port))
            await tg.start(pool.run)
            if config.scrape.contacts_interval_seconds > 0:
                from listeners.scrape import run_contact_scrape
                await tg.start(partial(run_contact_scrape, store, client,
                                       interval_seconds=config.scrape.contacts_interval_seconds,
                                       on_stored=pool.wake))
            log.info("adapter_started", store=config.store.url.split(":", 1)[0], pid=os.getpid(),
                     mapping_version=mappings.current.version, base_url=base_url,
                     **{f"{name}_port": port for name, port in runtime.listening.items()})
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for close in closers:
                    try:
                        await close()
                    except Exception as exc:   # one failed close must not keep the others from running
                        log.warning("close_failed", error_type=type(exc).__name__)
                log.info("adapter_stopped", pid=os.getpid())


def build_store(config: Config) -> Store:
    """The store named by [store] url, with the options of its backend (the other's are left out)."""
    st = config.store
    return open_store(st.url, synchronous=st.synchronous, schema=st.pg_schema, min_size=st.pool_min_size,
                      max_size=st.pool_max_size, connect_timeout=st.connect_timeout,
                      dedup_window=timedelta(hours=config.mllp.dedup_window_hours))


def _sandbox_webhook(config: Config) -> dict[str, Any]:
    """Point the sandbox's webhooks at our own webhook route when it is on and has a secret."""
    secret = config.secret("webhooks", "secret")
    if not (config.webhooks.enabled and secret):
        return {}
    return {"webhook_url": f"http://{config.http.host}:{config.http.port}{config.webhooks.path}",
            "webhook_secret_header": f"{config.webhooks.secret_header}: {secret}"}


async def _run_mllp(runtime: Runtime, on_stored: Callable[[], None], *,
                    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    from adapter.hl7.intake import PatientIdPolicy
    from listeners.mllp import MessageHandler, TLSSettings, serve_mllp

    m = runtime.config.mllp
    handler = MessageHandler(runtime.store, runtime.mappings.accepts, on_stored=on_stored,
                             patient_ids=PatientIdPolicy(tuple(m.patient_id_authorities),
                                                         tuple(m.patient_id_type_codes)))
    tls = (TLSSettings(m.tls_cert_file, m.tls_key_file, m.tls_client_ca_file)
           if m.tls_cert_file and m.tls_key_file else None)
    await serve_mllp(handler, host=m.host, port=m.port, tls=tls, max_message_bytes=m.max_message_bytes,
                     idle_timeout=m.idle_timeout_seconds, max_connections=m.max_connections,
                     task_status=task_status)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _http_routes(runtime: Runtime, client: Any, *, on_stored: Callable[[], None]
                 ) -> tuple[list[BaseRoute], dict[Any, Any], list[Callable[[], Awaitable[None]]]]:
    """The FHIR subscription and OnCall webhook routes, as configured."""
    config = runtime.config
    routes: list[BaseRoute] = []
    handlers: dict[Any, Any] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    if config.fhir.enabled:
        from adapter.fhir.emr_client import EMRFHIRClient
        from adapter.fhir.outcome import FHIR_EXCEPTION_HANDLERS
        from listeners.fhir import fhir_routes

        f = config.fhir
        secret = config.secret("fhir", "secret")
        if secret is None and not _is_loopback(config.http.host):
            raise ConfigError("fhir.secret", None, "a shared secret for FHIR subscriptions when HTTP listens "
                              f"beyond loopback ({config.http.host}): set ONCALL_ADAPTER_FHIR__SECRET or "
                              "fhir.secret_file, or fhir.enabled = false", secret=True)
        emr = None
        if f.emr_base_url:
            password = config.secret("fhir", "emr_password")
            emr = EMRFHIRClient(f.emr_base_url, bearer_token=config.secret("fhir", "emr_token"),
                                basic=(f.emr_username, password) if f.emr_username and password else None)
            closers.append(emr.aclose)
        routes += fhir_routes(store=runtime.store, base_path=f.base_path, auth_header=f.auth_header,
                              secret=secret, emr=emr, criteria=f.criteria, fhir_version=f.version,
                              patient_identifier_system=f.patient_identifier_system,
                              oncall_base_url=runtime.oncall_base_url)
        handlers.update(FHIR_EXCEPTION_HANDLERS)
    webhook_secret = config.secret("webhooks", "secret")
    if config.webhooks.enabled and webhook_secret:
        from listeners.webhooks import webhook_routes

        routes += webhook_routes(store=runtime.store, secret=webhook_secret,
                                 secret_header=config.webhooks.secret_header, path=config.webhooks.path,
                                 on_stored=on_stored)
    elif config.webhooks.enabled:
        log.info("webhooks_off", reason_code="no_secret")
    return routes, handlers, closers
