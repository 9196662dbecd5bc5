"""OnCall URLs: regional bases, ids parsed from hyperlinks, and the one-origin rule for the API key.

Every OnCall object is identified by an absolute URL with a trailing slash
(``https://api.oncallhealth.ca/appointments/42/``); the adapter stores the URL and the numeric id
parsed from it. The API key reaches PHI, so it is only ever sent to the configured base: any URL
met in data (webhook bodies, ``next`` links) is checked against it, or rebuilt on it from its id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from adapter.errors import ConfigError, PermanentError

__all__ = ["REGIONS", "Base", "object_id", "object_kind", "redact_query"]

REGIONS: dict[str, str] = {
    "ca": "https://api.oncallhealth.ca",   # Canada (PHIPA)
    "us": "https://api.oncallhealth.us",   # United States (HIPAA)
}

_DEFAULT_PORTS = {"http": 80, "https": 443}
# The last numeric path segment, trailing slash optional: /appointments/42/ or /appointments/42
_ID = re.compile(r"/(\d+)/?$")
_KIND_ID = re.compile(r"/([a-z_]+)/(\d+)/?$")


def object_id(url: str) -> int:
    """The numeric id of an OnCall object from its URL (with or without trailing slash)."""
    match = _ID.search(urlsplit(url).path) if isinstance(url, str) else None
    if match is None:
        raise PermanentError(f"cannot read an OnCall object id from URL path {_path_only(url)!r}",
                             hint="expected a URL ending in /<kind>/<number>/")
    return int(match.group(1))


def object_kind(url: str) -> str | None:
    """The collection name of an object URL (``appointments``, ``contacts`` ...), if it has one."""
    match = _KIND_ID.search(urlsplit(url).path)
    return match.group(1) if match else None


def redact_query(url: str) -> str:
    """Path and query names of a URL, query values hidden (they can be e-mails or phones)."""
    parts = urlsplit(url)
    if not parts.query:
        return parts.path or "/"
    names = [p.split("=", 1)[0] for p in parts.query.split("&") if p]
    # `page` is not PHI and makes paging errors readable.
    shown = [f"{n}={_page_value(parts.query)}" if n == "page" else f"{n}=..." for n in names]
    return f"{parts.path or '/'}?{'&'.join(shown)}"


def _page_value(query: str) -> str:
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "page":
            return value if value.isdigit() else "..."
    return "..."


def _path_only(url: object) -> str:
    return redact_query(url) if isinstance(url, str) else repr(type(url).__name__)


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


@dataclass(frozen=True, slots=True)
class Base:
    """The configured API base: the only origin the key is sent to."""

    url: str      # scheme://host[:port][/prefix], no trailing slash

    @classmethod
    def from_config(cls, *, region: str | None = "ca", base_url: str | None = None) -> Base:
        if base_url:
            parts = urlsplit(base_url)
            if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
                raise ConfigError("oncall.base_url", base_url, "an absolute http(s) URL such as "
                                  "https://api.oncallhealth.ca")
            if parts.query or parts.fragment:
                raise ConfigError("oncall.base_url", base_url, "a base URL without query or fragment")
            return cls(base_url.rstrip("/"))
        if region not in REGIONS:
            raise ConfigError("oncall.region", region, f"one of {', '.join(sorted(REGIONS))}, "
                              "or set oncall.base_url")
        return cls(REGIONS[region])

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def url_for(self, path_or_url: str) -> str:
        """An absolute URL on this base; refuses any URL on another scheme, host or port."""
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):
            return self.url + path_or_url
        parts = urlsplit(path_or_url)
        base = urlsplit(self.url)
        if not parts.scheme or _origin(parts) != _origin(base) or not parts.path.startswith(base.path):
            host = parts.netloc or path_or_url[:40]
            raise PermanentError(
                f"refusing to send the OnCall API key to {parts.scheme or '?'}://{host}: "
                f"not the configured base {self.url}",
                hint="only URLs on the configured OnCall base are followed; check oncall.base_url/region")
        return path_or_url

    def canonical(self, kind: str, object_id_: int) -> str:
        return f"{self.url}/{kind}/{object_id_}/"

    def resolve(self, url: str, kind: str) -> str:
        """Rebuild an object URL from data (e.g. a webhook body) on this base, keeping only its id.

        The documented webhook example carries another host (``.com``) and no trailing slash;
        the id in the path is all that is trusted.
        """
        found = object_kind(url)
        if found is not None and found != kind:
            raise PermanentError(f"expected an OnCall {kind} URL, got a {found} URL ({_path_only(url)})",
                                 hint="check what sent this URL")
        return self.canonical(kind, object_id(url))
