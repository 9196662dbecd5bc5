"""The log scrubber: allow-listed keys pass, everything else is hashed, free text never passes."""

from __future__ import annotations

import io
import json

import structlog
from hypothesis import given
from hypothesis import strategies as st

from adapter.logging import configure_logging, hash_value, scrub

CANARY = {"name": "Zanzibar Quuxley", "email": "zq.canary@example.org", "phone": "+1 555 0199 7788",
          "birth_date": "1931-02-29", "mrn": "MRN-CANARY-771"}


def _capture(**kwargs: object) -> str:
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    try:
        structlog.get_logger("t").info("canary_event", **kwargs)
    finally:
        structlog.reset_defaults()
    return out.getvalue()


def test_unknown_keys_are_hashed_not_logged() -> None:
    """A field that is not on the allow-list is replaced by a stable hash."""
    line = _capture(envelope_id=7, **CANARY)
    record = json.loads(line)
    assert record["envelope_id"] == 7
    for value in CANARY.values():
        assert value not in line
    assert record["email"] == hash_value(CANARY["email"])


def test_exceptions_keep_their_type_only() -> None:
    """An exception message can quote patient data: only its type reaches the log."""
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    try:
        try:
            raise ValueError(f"bad name {CANARY['name']}")
        except ValueError:
            structlog.get_logger("t").exception("boom")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert CANARY["name"] not in text
    assert json.loads(text)["error_type"] == "ValueError"


def test_safe_key_with_unsafe_value_is_hashed() -> None:
    """Even an allow-listed key cannot carry a dict or object (which could hold PHI)."""
    record = json.loads(_capture(kind={"name": CANARY["name"]}))
    assert record["kind"].startswith("h:")


def test_log_phi_switch_lets_values_through() -> None:
    """With log_phi on (supervised debugging only), values are written as they are."""
    out = io.StringIO()
    configure_logging(fmt="json", stream=out, log_phi=True)
    try:
        structlog.get_logger("t").info("debug_event", email=CANARY["email"])
    finally:
        structlog.reset_defaults()
    assert CANARY["email"] in out.getvalue()


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                       st.text(min_size=8).filter(lambda s: s.strip() != "")))
def test_no_free_text_survives_outside_the_allow_list(fields: dict[str, str]) -> None:
    """Property: any string under a key that is not allow-listed comes out as a hash."""
    event = scrub(None, "info", dict(fields))
    from adapter.logging import SAFE_KEYS
    for key, value in fields.items():
        if key not in SAFE_KEYS:
            assert event[key] == hash_value(value)
