"""HTTP plumbing shared by the sandbox routes: DRF-shaped errors, token auth, JSON bodies, pages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request

from adapter.oncall.sandbox.settings import SandboxSettings

__all__ = ["ApiError", "Principal", "authenticate", "base_of", "paginate", "read_json"]


class ApiError(Exception):
    """An answer other than success, with a DRF-shaped JSON body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        super().__init__(f"{status}: {body!r}")


def not_found() -> ApiError:
    return ApiError(404, {"detail": "Not found."})


@dataclass(frozen=True, slots=True)
class Principal:
    provider_id: int | None     # None: a coordinator key (sees everything, must pass `provider`)
    key_hash: str

    @property
    def is_coordinator(self) -> bool:
        return self.provider_id is None


SYSTEM = Principal(provider_id=None, key_hash="sandbox-control")


def authenticate(request: Request, settings: SandboxSettings) -> Principal:
    """DRF TokenAuthentication: `Authorization: Token <key>`, DRF's messages on failure."""
    header = request.headers.get("authorization", "")
    challenge = {"WWW-Authenticate": settings.auth_schemes[0] if settings.auth_schemes else "Token"}
    parts = header.split()
    if not parts or parts[0] not in settings.auth_schemes:
        raise ApiError(401, {"detail": "Authentication credentials were not provided."}, challenge)
    if len(parts) == 1:
        raise ApiError(401, {"detail": "Invalid token header. No credentials provided."}, challenge)
    if len(parts) > 2:
        raise ApiError(401, {"detail": "Invalid token header. Token string should not contain spaces."},
                       challenge)
    key = parts[1]
    if key not in settings.api_keys:
        raise ApiError(401, {"detail": "Invalid token."}, challenge)
    return Principal(provider_id=settings.api_keys[key],
                     key_hash=hashlib.sha256(key.encode()).hexdigest()[:12])


async def read_json(request: Request) -> Any:
    """The request's JSON body, with DRF's 415 and parse-error answers."""
    ctype = request.headers.get("content-type", "")
    raw = await request.body()
    if not raw:
        return {}
    if "json" not in ctype:
        shown = ctype.split(";")[0].strip() or "text/plain"
        raise ApiError(415, {"detail": f'Unsupported media type "{shown}" in request.'})
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from None


def base_of(request: Request, settings: SandboxSettings) -> str:
    """The public base for absolute URLs: configured, or the one the request came in on."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def _with_page(url: str, page: int | None) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "page"]
    if page is not None:
        query.append(("page", str(page)))
    encoded = urlencode(query)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{encoded}" if encoded else "")


def paginate(request: Request, settings: SandboxSettings, items: list[Any]) -> dict[str, Any]:
    """DRF PageNumberPagination: `?page=N`, absolute next/previous, 404 "Invalid page." out of range."""
    size = max(1, int(settings.page_size))
    pages = max(1, -(-len(items) // size))
    raw = request.query_params.get("page", "1")
    page = pages if raw == "last" else int(raw) if raw.isdigit() else 0
    if not 1 <= page <= pages:
        raise ApiError(404, {"detail": "Invalid page."})
    query = f"?{request.url.query}" if request.url.query else ""
    here = base_of(request, settings) + request.url.path + query
    # DRF drops `page` from the link to the first page.
    previous = None if page == 1 else _with_page(here, None if page == 2 else page - 1)
    return {
        "count": len(items),
        "next": _with_page(here, page + 1) if page < pages else None,
        "previous": previous,
        "results": items[(page - 1) * size: page * size],
    }
