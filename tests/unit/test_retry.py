"""The retry policy is a pure value: (attempt, error, now, rng) -> RetryAt | DeadLetter | LeaveClaim."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter import errors
from adapter.errors import (
    AdapterError,
    ConfigError,
    FHIRInputError,
    HL7InputError,
    InputError,
    MappingError,
    MappingFileError,
    OutcomeUnknownError,
    PermanentError,
    StoreError,
    TransientError,
)
from adapter.retry import DeadLetter, LeaveClaim, RetryAt, RetryPolicy

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

policies = st.builds(
    lambda base, factor, jitter, max_attempts: RetryPolicy(
        base=base, cap=base * factor, jitter=jitter, max_attempts=max_attempts, max_age=None),
    base=st.floats(min_value=0.001, max_value=100),
    factor=st.floats(min_value=1, max_value=10_000),
    jitter=st.floats(min_value=0, max_value=1),
    max_attempts=st.none() | st.integers(min_value=1, max_value=1000),
)
retry_afters = st.none() | st.floats(min_value=0, max_value=10 * 3600)


# One instance of every error kind the adapter raises, with the decision the worker takes for it.
EVERY_ERROR_KIND: dict[type[BaseException], tuple[BaseException, type]] = {
    AdapterError: (AdapterError("something"), DeadLetter),
    ConfigError: (ConfigError("oncall.base_url", "x", "an https URL"), DeadLetter),
    InputError: (InputError("bad input"), DeadLetter),
    MappingFileError: (MappingFileError("bad key", file="m.yaml", line=3), DeadLetter),
    HL7InputError: (HL7InputError("PID-3 missing", location="PID^1^3", code="101"), DeadLetter),
    FHIRInputError: (FHIRInputError("no id", expression="Patient.id"), DeadLetter),
    MappingError: (MappingError("no route", route="ADT_A08"), DeadLetter),
    StoreError: (StoreError("database is locked"), LeaveClaim),
    TransientError: (TransientError("503 from OnCall", status=503), RetryAt),
    OutcomeUnknownError: (OutcomeUnknownError("POST /contacts/ timed out"), RetryAt),
    PermanentError: (PermanentError("400 from OnCall", status=400), DeadLetter),
    ValueError: (ValueError("a bug"), DeadLetter),
}


def test_every_error_kind_has_a_decision() -> None:
    """Every error class exported by adapter/errors.py (and an unexpected exception) maps to exactly
    the decision the worker documents: transient -> retry, store -> leave the claim, the rest -> dead letter.
    A new error class without a row here fails this test."""
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported <= set(EVERY_ERROR_KIND), f"no decision listed for {exported - set(EVERY_ERROR_KIND)}"
    policy = RetryPolicy()
    for cls, (error, expected) in EVERY_ERROR_KIND.items():
        assert type(error) is cls
        decision = policy.decide(1, error, NOW, random.Random(1))
        assert isinstance(decision, expected), f"{cls.__name__} -> {decision}"


@given(policy=policies, attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32),
       retry_after=retry_afters)
def test_delay_never_exceeds_cap_or_retry_after(policy: RetryPolicy, attempt: int, seed: int,
                                                 retry_after: float | None) -> None:
    """A retry is never scheduled later than the cap, unless the server asked for longer (Retry-After,
    itself bounded by max_retry_after), and never earlier than the server asked."""
    decision = policy.decide(attempt, TransientError("x", retry_after=retry_after), NOW, random.Random(seed))
    if isinstance(decision, DeadLetter):
        assert policy.max_attempts is not None and attempt >= policy.max_attempts
        return
    assert isinstance(decision, RetryAt)
    limit = max(policy.cap, min(retry_after or 0.0, policy.max_retry_after))
    assert 0 <= decision.delay <= limit * (1 + 1e-9)
    if retry_after:
        assert decision.delay >= min(retry_after, policy.max_retry_after)
    assert decision.at == NOW + timedelta(seconds=decision.delay)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=200), seed=st.integers(0, 2**32))
def test_delay_grows_with_attempts(policy: RetryPolicy, attempt: int, seed: int) -> None:
    """The backoff before jitter never shrinks from one attempt to the next, and the jittered delay stays
    within [(1 - jitter) * backoff, backoff]."""
    assert policy.backoff(attempt + 1) >= policy.backoff(attempt)
    unlimited = RetryPolicy(base=policy.base, cap=policy.cap, jitter=policy.jitter, max_attempts=None,
                            max_age=None)
    decision = unlimited.decide(attempt, TransientError("x"), NOW, random.Random(seed))
    assert isinstance(decision, RetryAt)
    backoff = unlimited.backoff(attempt)
    assert backoff * (1 - policy.jitter) * (1 - 1e-9) <= decision.delay <= backoff * (1 + 1e-9)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32),
       status=st.integers(400, 499))
def test_permanent_errors_always_dead_letter(policy: RetryPolicy, attempt: int, seed: int,
                                             status: int) -> None:
    """A permanent error goes to the dead letter on any attempt, with the error text as the reason."""
    decision = policy.decide(attempt, PermanentError(f"OnCall answered {status}", status=status), NOW,
                             random.Random(seed))
    assert isinstance(decision, DeadLetter)
    assert f"OnCall answered {status}" in decision.reason


@given(max_attempts=st.integers(min_value=1, max_value=100), extra=st.integers(min_value=0, max_value=100))
def test_transient_past_max_attempts_dead_letters(max_attempts: int, extra: int) -> None:
    """A transient error at or beyond max_attempts dead-letters and says which limit was hit; before
    that it retries."""
    policy = RetryPolicy(max_attempts=max_attempts, max_age=None)
    late = policy.decide(max_attempts + extra, TransientError("503"), NOW, random.Random(0))
    assert isinstance(late, DeadLetter) and "max_attempts" in late.reason
    if max_attempts > 1:
        early = policy.decide(max_attempts - 1, TransientError("503"), NOW, random.Random(0))
        assert isinstance(early, RetryAt)


def test_transient_past_max_age_dead_letters() -> None:
    """A transient error on an envelope that arrived longer ago than max_age dead-letters."""
    policy = RetryPolicy(max_age=timedelta(hours=24), max_attempts=None)
    old = policy.decide(3, TransientError("503"), NOW, random.Random(0), since=NOW - timedelta(hours=25))
    young = policy.decide(3, TransientError("503"), NOW, random.Random(0), since=NOW - timedelta(hours=1))
    assert isinstance(old, DeadLetter) and "max_age" in old.reason
    assert isinstance(young, RetryAt)


def test_same_seed_same_schedule() -> None:
    """The jitter comes only from the rng passed in: the same seed gives the same schedule."""
    policy = RetryPolicy(base=0.5, cap=60, jitter=1.0)
    first = [policy.decide(a, TransientError("x"), NOW, random.Random(7)) for a in range(1, 10)]
    second = [policy.decide(a, TransientError("x"), NOW, random.Random(7)) for a in range(1, 10)]
    assert first == second


def test_unexpected_exception_reason_hides_its_text() -> None:
    """A foreign exception's text may echo a payload: the dead-letter reason names only its type."""
    decision = RetryPolicy().decide(1, ValueError("Jane Doe 1970-01-01"), NOW, random.Random(0))
    assert isinstance(decision, DeadLetter)
    assert "Jane" not in decision.reason and "builtins.ValueError" in decision.reason


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 2, "cap": 1}, {"jitter": 1.5}, {"max_attempts": 0}])
def test_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    """A policy that cannot work (non-positive base, cap below base, jitter outside [0, 1]) is refused."""
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
