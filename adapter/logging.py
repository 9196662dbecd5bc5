"""Logs with structlog, and an allow-list scrubber so patient data never reaches them by default.

The scrubber lets through only keys known to carry no PHI (ids, hashes, control ids, kinds,
outcomes, counts, timings) and values of safe types; any other key has its value replaced by a
short hash, so two log lines about the same value can still be correlated. Free text never passes:
an exception's message can quote a field value, so only its type is kept unless PHI logging is on.

`log_phi = true` turns the scrubber off: it writes patient data into the logs and exists only for a
supervised debugging session.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

__all__ = ["SAFE_KEYS", "configure_logging", "hash_value", "scrub"]

# Keys whose values are safe to log as they are. Anything else is hashed.
SAFE_KEYS = frozenset({
    "event", "level", "timestamp", "logger", "log_level",
    # envelopes and queue
    "envelope_id", "envelope_ids", "source", "kind", "state", "outcome", "attempt", "attempts", "owner",
    "count", "claimed", "batch", "depth", "reason_code", "duplicate", "dead_letters", "purged",
    "ordering_key_hash", "content_hash", "dedup_key_hash", "mapping_version", "route", "op", "op_kind",
    "target_field", "action", "error_type", "error_code", "status", "status_code", "retry_in", "retry_at",
    "delay", "seconds", "ms", "elapsed_ms", "latency_ms", "bytes", "size", "junk_bytes",
    # HL7 metadata (not patient data)
    "control_id", "message_type", "trigger", "version", "charset", "ack_code", "ack_mode", "location",
    "sending_application", "sending_facility", "segment",
    # network and processes
    "peer", "host", "port", "url_path", "method", "connections", "tls", "pid", "worker", "workers",
    "path", "base_url", "config_file", "store", "listener", "signal", "mllp_port", "http_port",
    # OnCall objects are referred to by id only
    "oncall_id", "object", "object_id", "appointment_id", "contact_id", "participant_id", "event_type",
    "resource_type", "resource_id_hash", "version_id",
})

_SAFE_TYPES = (bool, int, float, type(None))


def _plain(value: object) -> bool:
    return isinstance(value, (*_SAFE_TYPES, str))


def hash_value(value: object) -> str:
    """A short, stable stand-in for a value that must not be logged."""
    return "h:" + hashlib.sha256(repr(value).encode("utf-8")).hexdigest()[:12]


def scrub(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: keep allow-listed keys, hash everything else."""
    for key in list(event_dict):
        value = event_dict[key]
        if key == "exc_info":
            exc = value if isinstance(value, BaseException) else sys.exc_info()[1]
            del event_dict[key]
            if exc is not None:
                event_dict["error_type"] = type(exc).__name__
            continue
        if key in ("exception", "stack"):
            del event_dict[key]
            continue
        if key in SAFE_KEYS:
            if not _plain(value) and not (isinstance(value, list | tuple) and all(map(_plain, value))):
                event_dict[key] = hash_value(value)
            continue
        if isinstance(value, _SAFE_TYPES):
            continue
        event_dict[key] = hash_value(value)
    return event_dict


class _Stderr:
    """sys.stderr as it is when a line is written, not when logging was configured (tests and
    embedding programs replace sys.stderr; a stream captured once may be closed by then)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _StderrHandler(logging.StreamHandler):
    def __init__(self) -> None:
        super().__init__(cast(TextIO, _Stderr()))


def configure_logging(*, level: str = "INFO", fmt: str = "auto", log_phi: bool = False,
                      stream: Any = None) -> None:
    """Set up structlog for the process: JSON off a TTY, readable on one; stderr unless `stream`."""
    out = stream if stream is not None else cast(TextIO, _Stderr())
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_phi:
        processors.append(structlog.processors.format_exc_info)
    else:
        processors.append(scrub)
    processors.append(structlog.dev.ConsoleRenderer(colors=False) if use_console
                      else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (uvicorn, httpx) must not leak URLs with query values or bodies.
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
