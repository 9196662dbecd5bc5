"""Pure helpers of the SQLite store: timestamps as sortable text, the prefix range of xref_list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.store.sqlite_sql import from_ts, prefix_upper_bound, to_ts

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))])
_times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1), timezones=_zones)


@given(prefix=_text, other=_text)
def test_prefix_upper_bound_is_exact_range(prefix: str, other: str) -> None:
    """A string starts with the prefix exactly when it lies in [prefix, upper) in UTF-8 byte order."""
    upper = prefix_upper_bound(prefix)
    key = other.encode()
    in_range = key >= prefix.encode() and (upper is None or key < upper.encode())
    assert in_range == other.startswith(prefix)
    candidate = prefix + other
    cand = candidate.encode()
    assert cand >= prefix.encode() and (upper is None or cand < upper.encode())


def test_prefix_upper_bound_edges() -> None:
    """The bound skips surrogates and has none for a prefix of only the last code point."""
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None


@given(a=_times, b=_times)
def test_timestamp_text_order_is_time_order(a: datetime, b: datetime) -> None:
    """Stored timestamps round-trip exactly and compare as text in the order of the instants."""
    assert from_ts(to_ts(a)) == a
    assert (to_ts(a) < to_ts(b)) == (a < b)


def test_naive_timestamp_refused() -> None:
    """A naive datetime is refused rather than guessed to be UTC or local time."""
    with pytest.raises(ValueError, match="naive"):
        to_ts(datetime(2026, 1, 1))
