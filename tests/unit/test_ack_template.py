"""The error-free ACK cut from a cached template is, byte for byte, the ACK the general builder writes."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.hl7.ack import _build, build_ack
from adapter.hl7.er7 import Delimiters, Segment

_DELIMS = [Delimiters(), Delimiters(truncation="#"), Delimiters("#", "$", "*", "!", "%")]
_text = st.text(alphabet=st.sampled_from(list("AZaz09.é^~\\&#$*!%| ")), max_size=8)
_rare_nul = st.one_of(_text, _text.map(lambda t: t + "\x00"))    # NUL: the template is not used


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_DELIMS), st.lists(_rare_nul, min_size=11, max_size=11),
       st.sampled_from(["AA", "CA", "AE"]), st.sampled_from([None, "", "UNICODE UTF-8", "8859/1"]),
       st.one_of(st.none(), _text), st.one_of(st.none(), _text), _text, _text)
def test_template_matches_general_builder(d: Delimiters, values: list[str], code: str, charset: str | None,
                                          application: str | None, facility: str | None, control_id: str,
                                          timestamp: str) -> None:
    """Any MSH-2..12 (delimiters, NUL, escapes), code, charset, overrides, control id and timestamp."""
    fields = [v.replace(d.field, "") for v in values]
    msh = Segment(d.field.join(["MSH", *fields]), d)

    def built(builder: Callable[..., str]) -> str:
        return builder(msh, code, control_id=control_id, timestamp=timestamp, charset=charset,
                       application=application, facility=facility)

    assert built(build_ack) == built(_build)
    assert built(build_ack) == built(_build)     # from the cache, the same again
