"""The OnCall API client: one pooled `httpx.AsyncClient` per process, typed results, one error choke point.

Every request goes through `OnCallClient._request`, which
- refuses any URL that is not on the configured base (the key reaches PHI),
- bounds the requests in flight (`max_in_flight`, an anyio semaphore),
- translates every httpx outcome with `http_errors` (the only place httpx errors are caught),
- retries GETs a few times on transient failures (reads are safe to repeat; writes are left to
  the worker's durable retry schedule),
- logs method, path (no query values), status and timing; never bodies, never the key.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, TypeVar

import anyio
import httpx
import structlog
from pydantic import ValidationError

from adapter.errors import OutcomeUnknownError, PermanentError, TransientError
from adapter.oncall.http_errors import error_for_exception, error_for_response
from adapter.oncall.matching import email_key, jsonable, name_matches, phone_key
from adapter.oncall.models import Appointment, Contact, Division, OnCallModel, Participant, Provider
from adapter.oncall.urls import Base, object_id, redact_query

__all__ = ["OnCallClient"]

log = structlog.get_logger(__name__)
M = TypeVar("M", bound=OnCallModel)
_MAX_PAGES = 100_000


class OnCallClient:
    """Async client for the OnCall REST API. Create one per process; `aclose()` at shutdown.

    `region` ("ca" | "us") or `base_url` picks the deployment; `auth_scheme` is the word before
    the key ("Token", or "Bearer"); `timeout` sets all four httpx timeouts at once, or set them one
    by one; `max_in_flight` bounds concurrent requests; `get_retries` re-sends a failed GET at most
    that many times when the wait (Retry-After or backoff) is under `max_retry_wait` seconds;
    `custom_field_ids` (label -> id) skips the lookup of custom field ids; `seed` makes the
    backoff jitter reproducible; `transport` is for tests and proxies.
    """

    def __init__(self, *, api_key: str, region: str | None = "ca", base_url: str | None = None,
                 auth_scheme: str = "Token", timeout: float | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, write_timeout: float = 30.0, pool_timeout: float = 30.0,
                 max_in_flight: int = 8,
                 get_retries: int = 2, max_retry_wait: float = 10.0, backoff_base: float = 0.5,
                 custom_field_ids: Mapping[str, str] | None = None, seed: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = Base.from_config(region=region, base_url=base_url)
        if timeout is not None:   # one number for all four phases (the config's timeout_seconds)
            connect_timeout = read_timeout = write_timeout = pool_timeout = timeout
        self._semaphore = anyio.Semaphore(max(1, max_in_flight))
        self._get_retries = max(0, get_retries)
        self._max_retry_wait = max_retry_wait
        self._backoff_base = backoff_base
        self._rng = random.Random(seed)
        self._custom_fields: dict[str, str] = dict(custom_field_ids or {})   # label -> id
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"{auth_scheme} {api_key}", "Accept": "application/json",
                     "User-Agent": "oncall-adapter"},
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=write_timeout,
                                  pool=pool_timeout),
            limits=httpx.Limits(max_connections=max(1, max_in_flight),
                                max_keepalive_connections=max(1, max_in_flight)),
            # A redirect would carry the Authorization header; OnCall has no reason to redirect.
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> OnCallClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the choke point --------------------------------------------------------------------
    async def _request(self, method: str, url: str, *, json: Any = None,
                       params: Mapping[str, str] | None = None, idempotent: bool = True) -> Any:
        target = self.base.url_for(url)
        body = jsonable(json) if json is not None else None
        attempt = 0
        while True:
            try:
                return await self._send(method, target, body, params, idempotent)
            except OutcomeUnknownError:
                raise
            except TransientError as exc:
                if method != "GET" or attempt >= self._get_retries:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else (
                    self._backoff_base * 2 ** attempt * (0.5 + self._rng.random()))
                if delay > self._max_retry_wait:
                    raise
                attempt += 1
                log.info("oncall_retry", method=method, path=redact_query(target), status=exc.status,
                         attempt=attempt, delay_s=round(delay, 3))
                await anyio.sleep(delay)

    async def _send(self, method: str, url: str, body: Any, params: Mapping[str, str] | None,
                    idempotent: bool) -> Any:
        started = time.perf_counter()
        async with self._semaphore:
            try:
                response = await self._http.request(method, url, json=body, params=params)
            except httpx.HTTPError as exc:
                log.warning("oncall_no_answer", method=method, path=redact_query(url),
                            error=type(exc).__name__, ms=_ms(started))
                raise error_for_exception(method, url, exc, idempotent=idempotent) from None
        log.debug("oncall_request", method=method, path=redact_query(url), status=response.status_code,
                  ms=_ms(started))
        if response.status_code >= 300:
            raise error_for_response(method, str(response.url), response.status_code, response.headers,
                                     response.content)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            msg = f"OnCall {method} {redact_query(url)} answered {response.status_code} with a non-JSON body"
            if not idempotent:
                raise OutcomeUnknownError(msg, hint="the create was probably applied: look it up "
                                          "before creating again") from None
            raise TransientError(msg, status=response.status_code, hint="retried with backoff") from None

    def _parse(self, model: type[M], data: Any, method: str, url: str, *, idempotent: bool = True) -> M:
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            msg = f"OnCall {method} {redact_query(url)}: unexpected {model.__name__} ({where})"
            if not idempotent:
                raise OutcomeUnknownError(msg, hint="the create was probably applied: look it up") from None
            raise PermanentError(msg, hint="the OnCall API changed or the base URL is not OnCall") from None
        if isinstance(parsed, Contact):
            for field_id, label in parsed.custom_field_names.items():
                self._custom_fields.setdefault(label, field_id)
        return parsed

    def _url(self, kind: str, url_or_id: str | int) -> str:
        if isinstance(url_or_id, int):
            return self.base.canonical(kind, url_or_id)
        return self.base.url_for(url_or_id)

    async def _get(self, model: type[M], kind: str, url_or_id: str | int) -> M:
        url = self._url(kind, url_or_id)
        return self._parse(model, await self._request("GET", url), "GET", url)

    async def _patch(self, model: type[M], kind: str, url_or_id: str | int, fields: Mapping[str, Any],
                     *, idempotent: bool = True) -> M:
        url = self._url(kind, url_or_id)
        data = await self._request("PATCH", url, json=dict(fields), idempotent=idempotent)
        return self._parse(model, data, "PATCH", url, idempotent=idempotent)

    async def _create(self, model: type[M], kind: str, payload: Mapping[str, Any]) -> M:
        url = f"{self.base.url}/{kind}/"
        data = await self._request("POST", url, json=dict(payload), idempotent=False)
        created = self._parse(model, data, "POST", url, idempotent=False)
        log.info("oncall_created", kind=kind, id=object_id(getattr(created, "url", "") or "/0/"))
        return created

    async def _pages(self, model: type[M], url: str, params: Mapping[str, str] | None = None
                     ) -> AsyncGenerator[M, None]:
        """Every result of a paginated list, following `next` only on the configured base."""
        seen: set[str] = set()
        next_url: str | None = self.base.url_for(url)
        first = True
        while next_url is not None:
            if next_url in seen or len(seen) >= _MAX_PAGES:
                raise PermanentError(f"OnCall GET {redact_query(next_url)}: pagination loops back to a "
                                     "page already read", hint="report this OnCall paging defect")
            seen.add(next_url)
            data = await self._request("GET", next_url, params=params if first else None)
            first = False
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise PermanentError(f"OnCall GET {redact_query(next_url)}: expected a page "
                                     "{count, next, previous, results}", hint="check the base URL")
            for item in data["results"]:
                yield self._parse(model, item, "GET", next_url)
            raw_next = data.get("next")
            # url_for refuses a `next` on a foreign host before anything is sent there.
            next_url = self.base.url_for(raw_next) if isinstance(raw_next, str) and raw_next else None

    # -- appointments -----------------------------------------------------------------------
    async def create_appointment(self, payload: Mapping[str, Any]) -> Appointment:
        """POST /appointments/. A lost answer raises OutcomeUnknownError: look before retrying."""
        return await self._create(Appointment, "appointments", payload)

    async def get_appointment(self, url_or_id: str | int) -> Appointment:
        return await self._get(Appointment, "appointments", url_or_id)

    async def patch_appointment(self, url_or_id: str | int, fields: Mapping[str, Any]) -> Appointment:
        """PATCH only the given fields (send `metadata` whole: merge or replace is unknown)."""
        return await self._patch(Appointment, "appointments", url_or_id, fields)

    async def cancel_appointment(self, url_or_id: str | int) -> Appointment:
        """Irreversible; OnCall e-mails every participant."""
        return await self._patch(Appointment, "appointments", url_or_id, {"cancelled": True})

    def list_appointments(self) -> AsyncIterator[Appointment]:
        return self._pages(Appointment, "/appointments/")

    def resolve_appointment_url(self, url_from_webhook: str) -> str:
        """The canonical appointment URL on the configured base for a URL met in a webhook body."""
        return self.base.resolve(url_from_webhook, "appointments")

    async def add_participant(self, appointment: Appointment | str | int,
                              new_participant: Mapping[str, Any]) -> tuple[Appointment, Participant]:
        """PATCH the participants list with the existing ones (by url) plus the new one.

        Not idempotent (a repeat would add the person twice): a lost answer is OutcomeUnknownError.
        Returns the updated appointment and the participant that was added.
        """
        if not isinstance(appointment, Appointment):
            appointment = await self.get_appointment(appointment)
        known = {p.url for p in appointment.participants if p.url}
        new = {k: v for k, v in new_participant.items() if k != "url"}
        body = {"participants": [{"url": url} for url in sorted(known, key=object_id)] + [new]}
        updated = await self._patch(Appointment, "appointments", appointment.url, body, idempotent=False)
        added = [p for p in updated.participants if p.url and p.url not in known]
        if len(added) != 1:
            raise OutcomeUnknownError(
                f"OnCall PATCH {redact_query(updated.url)}: expected one new participant, found "
                f"{len(added)}", hint="inspect the appointment's participants before retrying")
        return updated, added[0]

    # -- participants -----------------------------------------------------------------------
    async def get_participant(self, url_or_id: str | int) -> Participant:
        return await self._get(Participant, "participants", url_or_id)

    async def patch_participant(self, url_or_id: str | int, fields: Mapping[str, Any]) -> Participant:
        return await self._patch(Participant, "participants", url_or_id, fields)

    async def cancel_participant(self, url_or_id: str | int) -> Participant:
        return await self._patch(Participant, "participants", url_or_id, {"cancelled": True})

    # -- contacts ---------------------------------------------------------------------------
    async def create_contact(self, payload: Mapping[str, Any]) -> Contact:
        """POST /contacts/. Look up first (find_contacts): OnCall does not refuse duplicates."""
        return await self._create(Contact, "contacts", payload)

    async def get_contact(self, url_or_id: str | int) -> Contact:
        return await self._get(Contact, "contacts", url_or_id)

    async def patch_contact(self, url_or_id: str | int, fields: Mapping[str, Any]) -> Contact:
        """`custom_field_values` are merged per key by OnCall: send only the ids to change."""
        return await self._patch(Contact, "contacts", url_or_id, fields)

    def iter_contacts(self, params: Mapping[str, str] | None = None) -> AsyncIterator[Contact]:
        return self._pages(Contact, "/contacts/", params)

    async def find_contacts(self, *, email: str | None = None, name: str | None = None,
                            phone: str | None = None) -> list[Contact]:
        """Contacts matching every criterion given, each re-checked locally.

        The query parameters are an assumption and unknown ones are silently ignored, so the
        server's answer is only a pre-filter.
        """
        params = {k: v for k, v in (("email", email), ("name", name), ("phone", phone)) if v}
        if not params:
            raise PermanentError("find_contacts needs at least one of email, name, phone",
                                 hint="a lookup without a criterion would return every contact")
        found: list[Contact] = []
        async for contact in self.iter_contacts(params):
            if email and email_key(contact.email) != email_key(email):
                continue
            if phone and (not phone_key(phone) or phone_key(contact.phone) != phone_key(phone)):
                continue
            if name and not name_matches(name, contact.name, contact.first_name, contact.last_name):
                continue
            found.append(contact)
        return found

    async def contact_appointments(self, contact: Contact | str | int) -> list[Appointment]:
        if isinstance(contact, Contact):
            url = contact.appointments or (
                f"{self.base.canonical('contacts', object_id(contact.url))}appointments/")
        else:
            url = f"{self._url('contacts', contact).rstrip('/')}/appointments/"
        return [a async for a in self._pages(Appointment, url)]

    async def custom_field_id(self, label: str) -> str:
        """The id of the contact custom field labelled `label`, read from `custom_field_names`."""
        if label in self._custom_fields:
            return self._custom_fields[label]
        async with aclosing(self._pages(Contact, "/contacts/")) as contacts:
            async for _contact in contacts:
                break   # parsing one contact fills the cache (see _parse)
        if label not in self._custom_fields:
            raise PermanentError(
                f"no OnCall contact custom field labelled {label!r} (known: "
                f"{', '.join(sorted(self._custom_fields)) or 'none: no contact to read them from'})",
                hint="create the custom field in OnCall, or configure its id explicitly")
        return self._custom_fields[label]

    # -- providers and divisions ------------------------------------------------------------
    async def list_providers(self) -> list[Provider]:
        return [p async for p in self._pages(Provider, "/providers/")]

    async def get_provider(self, url_or_id: str | int) -> Provider:
        return await self._get(Provider, "providers", url_or_id)

    async def list_divisions(self) -> list[Division]:
        return [d async for d in self._pages(Division, "/divisions/")]

    async def get_division(self, url_or_id: str | int) -> Division:
        return await self._get(Division, "divisions", url_or_id)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
