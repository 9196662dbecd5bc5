"""The retry policy: a pure value that turns (attempt, error) into "retry at T" or "dead letter".

No clock, no I/O, no randomness of its own: the caller passes `now` and a `random.Random`, so the
policy is checked exhaustively by hypothesis (tests/unit/test_retry.py).

The decision is a function of the error's class (see adapter/errors.py):

    TransientError (incl. OutcomeUnknownError)  -> RetryAt, exponential backoff with jitter,
                                                   at least `retry_after` when the server sent one;
                                                   DeadLetter once the budget is spent
    InputError, PermanentError, ConfigError     -> DeadLetter (retrying cannot help)
    StoreError                                  -> LeaveClaim (the store is what failed: we cannot
                                                   record anything; the lease expires and the
                                                   envelope is claimed again)
    anything else (a bug)                       -> DeadLetter naming the exception type, so a
                                                   human sees it; `queue retry` after the fix

Budget for transient errors (why both limits): a transient failure that lasts a day is no longer
transient (a revoked key answered by a proxy 503, a misrouted base URL): a human must look, and
while an envelope retries it holds back every later envelope of its patient. `max_age` (24 h by
default) expresses that directly; `max_attempts` (30 by default, with the defaults below about
5.5 h of retrying: nine doublings from 2 s to the 15 min cap, then 21 retries at the cap) bounds the
work done for one envelope and surfaces a long outage to a human sooner than the day.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from adapter.errors import AdapterError, StoreError, TransientError

__all__ = ["DeadLetter", "Decision", "LeaveClaim", "RetryAt", "RetryPolicy", "describe_error"]


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Back to the queue, not before `at` (`delay` seconds after `now`)."""

    at: datetime
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the envelope waits in the dead letter for a human, with this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class LeaveClaim:
    """Do nothing to the envelope: its lease expires and it is claimed again."""

    reason: str


Decision = RetryAt | DeadLetter | LeaveClaim


def describe_error(error: BaseException) -> str:
    """The reason recorded for an error: the class name and our own message (which carries no PHI:
    our messages name fields, paths and statuses, never values). Foreign exceptions show only their
    type, since their text may echo a payload."""
    if isinstance(error, AdapterError):
        return f"{type(error).__name__}: {error}"
    return f"unexpected {type(error).__module__}.{type(error).__qualname__} (a bug: see the logs, " \
           f"fix, then `oncall-adapter queue retry ID`)"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 2.0                   # seconds before the first retry
    cap: float = 900.0                  # longest backoff (the server's Retry-After may exceed it)
    max_attempts: int | None = 30       # transient failures before dead letter (None: no limit)
    jitter: float = 0.5                 # fraction of the delay that is randomised (0 = none, 1 = full)
    max_age: timedelta | None = timedelta(hours=24)   # since the envelope arrived
    max_retry_after: float = 3600.0     # a Retry-After beyond this is taken as this

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"retry policy needs 0 < base <= cap, got base={self.base} cap={self.cap}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"retry policy jitter must be within [0, 1], got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"retry policy max_attempts must be >= 1 or None, got {self.max_attempts}")

    def backoff(self, attempt: int) -> float:
        """The delay before jitter for the retry after `attempt` failed attempts (1-based)."""
        exponent = max(0, attempt - 1)
        # Compare exponents rather than computing 2**attempt for huge attempts.
        if exponent >= 64 or self.base * (2.0 ** exponent) >= self.cap:
            return self.cap
        return self.base * (2.0 ** exponent)

    def decide(self, attempt: int, error: BaseException, now: datetime, rng: random.Random, *,
               since: datetime | None = None) -> Decision:
        """What to do after failed attempt number `attempt` (1 for the first try) raised `error`.

        `since` is when the envelope arrived (for `max_age`)."""
        reason = describe_error(error)
        if isinstance(error, StoreError):
            return LeaveClaim(reason)
        if not isinstance(error, TransientError):
            # InputError, PermanentError, ConfigError and unknown exceptions: retrying cannot help.
            return DeadLetter(reason)
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return DeadLetter(f"{reason}; gave up after {attempt} attempts (retry.max_attempts)")
        if self.max_age is not None and since is not None and now - since >= self.max_age:
            return DeadLetter(f"{reason}; gave up after {now - since} (retry.max_age)")
        delay = self.backoff(attempt)
        delay -= delay * self.jitter * rng.random()
        if error.retry_after is not None and error.retry_after > 0:
            delay = max(delay, min(float(error.retry_after), self.max_retry_after))
        return RetryAt(at=now + timedelta(seconds=delay), delay=delay, reason=reason)

