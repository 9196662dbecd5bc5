"""The adapter's one error hierarchy.

Every error a user can meet says what went wrong, where (file:line, segment-field, JSON path, URL)
and what to do about it. Foreign exceptions (httpx, sqlite3, psycopg, yaml, pydantic) are
translated into these at one choke point per dependency; nothing else catches them.

    AdapterError
    ├── ConfigError                  bad configuration (exit status 2)
    ├── InputError                   the input cannot be used as it is: fix it and resend
    │   ├── MappingFileError         a mapping file is invalid (file, line, column, key)
    │   ├── HL7InputError            an HL7 v2 message is unusable (segment-field location, HL7 error code)
    │   ├── FHIRInputError           a FHIR resource is unusable (JSON path / FHIRPath expression)
    │   └── MappingError             a message maps to nothing usable (route, target field, source path)
    ├── StoreError                   the store failed (database unreachable, corrupt, ...)
    ├── TransientError               try again later (timeouts, 429, 502/503/504, connection errors)
    │   └── OutcomeUnknownError      a create may or may not have happened: look before retrying
    └── PermanentError               retrying cannot help (4xx, refused host): dead letter with reason

The worker's decision is a function of the class alone: TransientError -> retry with backoff,
InputError and PermanentError -> dead letter, StoreError -> leave the claim to expire.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "ConfigError",
    "FHIRInputError",
    "HL7InputError",
    "InputError",
    "MappingError",
    "MappingFileError",
    "OutcomeUnknownError",
    "PermanentError",
    "StoreError",
    "TransientError",
]


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(AdapterError):
    """Invalid configuration: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str, *, secret: bool = False) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        shown = "(secret, not shown)" if secret else repr(value)
        super().__init__(f"configuration {key} = {shown} is invalid: {allowed}")


class InputError(AdapterError):
    """The input itself is at fault; the sender or the mapping author must fix it."""


class MappingFileError(InputError):
    """A mapping file is invalid."""

    def __init__(self, message: str, *, file: str, line: int | None = None, column: int | None = None,
                 key: str | None = None, hint: str | None = None) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        where = file
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        if key:
            where += f" ({key})"
        super().__init__(f"{where}: {message}", hint=hint)


class HL7InputError(InputError):
    """An HL7 v2 message cannot be used.

    `location` is an ERR-2 style location such as ``PID^1^3`` (segment, sequence, field);
    `code` an HL7 table 0357 error code (100 segment sequence, 101 required field missing,
    102 data type error, 200 unsupported message type, 203 unsupported version, 207 application error).
    """

    def __init__(self, message: str, *, location: str | None = None, code: str = "207",
                 hint: str | None = None) -> None:
        self.location = location
        self.code = code
        where = f"{location}: " if location else ""
        super().__init__(f"{where}{message}", hint=hint)


class FHIRInputError(InputError):
    """A FHIR resource cannot be used; `expression` is where, e.g. ``Appointment.participant[0].actor``."""

    def __init__(self, message: str, *, expression: str | None = None, status: int = 422,
                 hint: str | None = None) -> None:
        self.expression = expression
        self.status = status
        where = f"{expression}: " if expression else ""
        super().__init__(f"{where}{message}", hint=hint)


class MappingError(InputError):
    """A message matched a route but could not be turned into valid operations."""

    def __init__(self, message: str, *, route: str | None = None, target: str | None = None,
                 source: str | None = None, hint: str | None = None) -> None:
        self.route = route
        self.target = target
        self.source = source
        parts = [p for p in (f"route {route}" if route else None,
                             f"field {target}" if target else None,
                             f"from {source}" if source else None) if p]
        where = f"{', '.join(parts)}: " if parts else ""
        super().__init__(f"{where}{message}", hint=hint)


class StoreError(AdapterError):
    """The store could not do what was asked (unreachable, locked past the timeout, corrupt)."""


class TransientError(AdapterError):
    """Worth retrying later. `retry_after` (seconds) is honoured when the server sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None,
                 hint: str | None = None) -> None:
        self.retry_after = retry_after
        self.status = status
        super().__init__(message, hint=hint)


class OutcomeUnknownError(TransientError):
    """A non-idempotent request (a create) got no answer: it may have been applied.

    Never retried blindly: the caller must first look for what it may have made and adopt it.
    """


class PermanentError(AdapterError):
    """Retrying cannot help; the envelope goes to the dead letter with this reason."""

    def __init__(self, message: str, *, status: int | None = None,
                 fields: dict[str, list[str]] | None = None, hint: str | None = None) -> None:
        self.status = status
        self.fields = fields or {}
        super().__init__(message, hint=hint)
