"""An httpx client to the EMR's FHIR server: read, search (with `_lastUpdated`), transaction Bundles.

`_send` is the one choke point where httpx's exceptions and the server's error statuses become the
adapter's errors: timeouts, connection errors, 429 and 5xx -> TransientError (OutcomeUnknownError
when a transaction may have been applied); other 4xx -> PermanentError with the OperationOutcome's
diagnostics. Credentials are only ever sent to the configured base URL: references and `next`
links that point elsewhere are refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from adapter.errors import ConfigError, OutcomeUnknownError, PermanentError, TransientError

__all__ = ["EMRFHIRClient", "fhir_instant"]

log = structlog.get_logger(__name__)
_FHIR_JSON = "application/fhir+json"
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class EMRFHIRClient:
    """The EMR's FHIR server, as the adapter reads and writes it.

    Auth: `bearer_token` (``Authorization: Bearer ...``) or `basic` (user, password), or neither.
    One pooled connection set per client: open with ``async with`` or call `aclose()`.
    """

    def __init__(self, base_url: str, *, bearer_token: str | None = None,
                 basic: tuple[str, str] | None = None, timeout: float = 15.0, page_limit: int = 100,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("fhir.emr.base_url", base_url, "an absolute http(s) URL of the FHIR base")
        if bearer_token and basic:
            raise ConfigError("fhir.emr.auth", "bearer and basic", "one of bearer_token or basic",
                              secret=True)
        self.base_url = base_url.rstrip("/") + "/"
        self._origin = (parts.scheme, parts.netloc)
        self.page_limit = page_limit
        auth: httpx.Auth | None = httpx.BasicAuth(*basic) if basic else None
        all_headers = {"Accept": _FHIR_JSON, **(headers or {})}
        if bearer_token:
            all_headers["Authorization"] = f"Bearer {bearer_token}"
        self._http = httpx.AsyncClient(base_url=self.base_url, auth=auth, headers=all_headers,
                                       timeout=timeout, transport=transport, follow_redirects=False)

    async def __aenter__(self) -> EMRFHIRClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- reads ------------------------------------------------------------------------------
    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET [base]/Type/id."""
        return await self._json("GET", f"{resource_type}/{resource_id}")

    async def read_reference(self, reference: str) -> dict[str, Any]:
        """Read a literal reference: ``Patient/1``, ``Patient/1/_history/2`` or an absolute URL under
        the base. A URL on another server is refused (our credentials stay with our server)."""
        return await self._json("GET", self._relative(reference, what="reference"))

    async def capabilities(self) -> dict[str, Any]:
        """GET [base]/metadata (a readiness check)."""
        return await self._json("GET", "metadata")

    async def search(self, resource_type: str, params: Sequence[tuple[str, str]] | Mapping[str, str] = (),
                     *, since: datetime | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every matching resource (search mode `match`), following `next` links.

        `since` adds ``_lastUpdated=ge<since>``: `ge` not `gt`, so a resource changed in the same
        instant as the previous check is seen again; the store's dedup makes that harmless.
        """
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        if since is not None:
            query.append(("_lastUpdated", f"ge{fhir_instant(since)}"))
        query.append(("_sort", "_lastUpdated"))
        url: str | None = resource_type
        request_params: list[tuple[str, str]] | None = query
        pages = 0
        while url is not None:
            pages += 1
            if pages > self.page_limit:
                raise PermanentError(f"search {resource_type} returned more than {self.page_limit} pages",
                                     hint="narrow the criteria or raise page_limit")
            bundle = await self._json("GET", url, params=request_params)
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource")
                mode = (entry.get("search") or {}).get("mode", "match")
                if isinstance(resource, dict) and mode == "match":
                    yield resource
            url = next((link.get("url") for link in bundle.get("link") or []
                        if link.get("relation") == "next"), None)
            if url is not None:
                url = self._relative(url, what="search next link")
                request_params = None   # the next link carries its query

    async def search_all(self, resource_type: str, params: Sequence[tuple[str, str]] | Mapping[str, str] = (),
                         *, since: datetime | None = None) -> list[dict[str, Any]]:
        return [r async for r in self.search(resource_type, params, since=since)]

    # -- writes -----------------------------------------------------------------------------
    async def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction (or batch) Bundle to [base]; returns the response Bundle.

        Not idempotent: when no answer came back it raises OutcomeUnknownError (look before retrying).
        """
        kind = bundle.get("type")
        if bundle.get("resourceType") != "Bundle" or kind not in ("transaction", "batch"):
            raise PermanentError(f"not a transaction or batch Bundle (type {kind!r})",
                                 hint="build Bundle.type = transaction")
        body = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return await self._json("POST", "", content=body, headers={"Content-Type": _FHIR_JSON},
                                idempotent=False)

    # -- the choke point --------------------------------------------------------------------
    def _relative(self, ref: str, *, what: str) -> str:
        if "://" not in ref:
            return ref.lstrip("/")
        parts = urlsplit(ref)
        if (parts.scheme, parts.netloc) != self._origin or not ref.startswith(self.base_url):
            raise PermanentError(f"{what} points outside the configured FHIR server ({parts.netloc})",
                                 hint="only resources on fhir.emr.base_url are read")
        return ref[len(self.base_url):]

    async def _json(self, method: str, url: str, *, params: Any = None, content: bytes | None = None,
                    headers: Mapping[str, str] | None = None, idempotent: bool = True) -> dict[str, Any]:
        response = await self._send(method, url, params=params, content=content, headers=headers,
                                    idempotent=idempotent)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentError(f"{method} {self._where(url)} answered {response.status_code} with a body "
                                 "that is not JSON", status=response.status_code,
                                 hint="check fhir.emr.base_url points at the FHIR base") from None
        if not isinstance(data, dict):
            raise PermanentError(f"{method} {self._where(url)} answered with JSON that is not a resource",
                                 status=response.status_code)
        return data

    def _where(self, url: str) -> str:
        return urljoin(self.base_url, url.split("?")[0])

    async def _send(self, method: str, url: str, *, params: Any, content: bytes | None,
                    headers: Mapping[str, str] | None, idempotent: bool) -> httpx.Response:
        where = self._where(url)
        started = time.monotonic()
        try:
            response = await self._http.request(method, url, params=params, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            unsent = idempotent or isinstance(exc, httpx.ConnectTimeout)   # a connect timeout sent nothing
            cls = TransientError if unsent else OutcomeUnknownError
            raise cls(f"{method} {where} timed out ({type(exc).__name__})",
                      hint="the EMR FHIR server is slow or down; it will be retried") from None
        except httpx.ConnectError as exc:
            raise TransientError(f"{method} {where} could not connect: {exc}",
                                 hint="check fhir.emr.base_url and that the server is up") from None
        except httpx.TransportError as exc:
            cls = TransientError if idempotent else OutcomeUnknownError
            raise cls(f"{method} {where} failed in transit ({type(exc).__name__})") from None
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        log.debug("emr_fhir_request", method=method, url=where, status=response.status_code, ms=elapsed_ms)
        status = response.status_code
        if status < 400:
            return response
        detail = _diagnostics(response)
        if status in _RETRYABLE:
            raise TransientError(f"{method} {where} answered {status}{detail}", status=status,
                                 retry_after=_retry_after(response))
        hint = {401: "check the EMR FHIR credentials (bearer token or basic auth)",
                403: "the EMR FHIR credentials lack the scope for this request",
                404: "the resource does not exist on the EMR FHIR server"}.get(status)
        raise PermanentError(f"{method} {where} answered {status}{detail}", status=status, hint=hint)


def fhir_instant(at: datetime) -> str:
    """A FHIR instant in UTC with milliseconds (a naive datetime is taken as UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's first diagnostics or details text, short (no payload echo)."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return ""
    for issue in data.get("issue") or []:
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
        if text:
            return f": {str(text)[:200]}"
    return ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
