"""OnCall URLs, models and local matching (pure)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import ConfigError, PermanentError
from adapter.oncall.matching import email_key, jsonable, name_matches, phone_key
from adapter.oncall.models import Appointment, Contact, parse_fee
from adapter.oncall.urls import Base, object_id, redact_query


@given(st.integers(min_value=0, max_value=10 ** 12), st.booleans(),
       st.sampled_from(["https://api.oncallhealth.ca", "http://127.0.0.1:8900", "https://x.test/prefix"]))
def test_object_id_with_or_without_slash(number: int, slash: bool, base: str) -> None:
    """object_id reads the last numeric segment, trailing slash optional."""
    assert object_id(f"{base}/appointments/{number}" + ("/" if slash else "")) == number


@pytest.mark.parametrize("url", ["https://api.oncallhealth.ca/appointments/", "", "/contacts/abc/"])
def test_object_id_refuses_urls_without_id(url: str) -> None:
    """A URL without a numeric id is a PermanentError naming the path."""
    with pytest.raises(PermanentError, match="cannot read an OnCall object id"):
        object_id(url)


def test_base_from_region_and_url() -> None:
    """Region picks the regional host; an explicit base URL wins; bad values are ConfigError."""
    assert Base.from_config(region="us").url == "https://api.oncallhealth.us"
    assert Base.from_config(region="ca").url == "https://api.oncallhealth.ca"
    assert Base.from_config(base_url="http://127.0.0.1:8900/").url == "http://127.0.0.1:8900"
    with pytest.raises(ConfigError):
        Base.from_config(region="eu")
    with pytest.raises(ConfigError):
        Base.from_config(base_url="api.oncallhealth.ca")


@pytest.mark.parametrize("url", [
    "https://api.oncallhealth.com/appointments/1/", "http://api.oncallhealth.ca/appointments/1/",
    "https://api.oncallhealth.ca:8443/appointments/1/", "//evil.example/appointments/1/",
    "https://api.oncallhealth.ca.evil.example/appointments/1/",
])
def test_url_for_refuses_other_origins(url: str) -> None:
    """Only the configured scheme, host and port receive the key."""
    with pytest.raises(PermanentError, match="refusing to send the OnCall API key"):
        Base.from_config(region="ca").url_for(url)


def test_url_for_and_resolve() -> None:
    """Paths join the base; the default port is the same origin; webhook URLs resolve by id."""
    base = Base.from_config(region="ca")
    assert base.url_for("/contacts/") == "https://api.oncallhealth.ca/contacts/"
    explicit_port = "https://API.oncallhealth.ca:443/contacts/1/"
    assert base.url_for(explicit_port) == explicit_port
    assert base.resolve("https://api.oncallhealth.com/appointments/1", "appointments") == (
        "https://api.oncallhealth.ca/appointments/1/")


def test_redact_query_hides_values() -> None:
    """Query values (e-mails, phones) never reach messages; page numbers do."""
    assert redact_query("https://h/contacts/?email=a@b.c&page=3") == "/contacts/?email=...&page=3"


@pytest.mark.parametrize(("raw", "fee"), [(10, Decimal(10)), (10.1, Decimal("10.1")),
                                          ("10.00", Decimal("10.00")), (" 7.5 ", Decimal("7.5")),
                                          (None, None), ("", None)])
def test_fee_number_or_string(raw: object, fee: Decimal | None) -> None:
    """Fees parse from the documented number or the internal API's decimal string."""
    assert parse_fee(raw) == fee


@pytest.mark.parametrize("raw", [True, "ten", "NaN", [1]])
def test_fee_refuses_non_numbers(raw: object) -> None:
    """Booleans, words, NaN and lists are not fees."""
    with pytest.raises(ValueError, match="fee"):
        parse_fee(raw)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=0, max_value=10 ** 6))
def test_fee_string_and_number_agree(value: Decimal) -> None:
    """The string and the number forms of a fee give the same Decimal."""
    assert parse_fee(str(value)) == parse_fee(float(value)) == value


def test_models_keep_unknown_fields_and_parse_ids() -> None:
    """Unknown fields are kept; contact ids come from `id` or the URL; custom values by label."""
    appointment = Appointment.model_validate({
        "url": "https://h/appointments/5/", "datetime": "2030-01-01T10:00:00Z", "brand_new": 1,
        "participants": [{"url": "https://h/participants/9/", "fee": "3.00"}]})
    assert appointment.id == 5 and appointment.participants[0].id == 9
    assert appointment.model_extra == {"brand_new": 1}
    contact = Contact.model_validate({"url": "https://h/contacts/4/",
                                      "custom_field_names": {"2": "EMR id"},
                                      "custom_field_values": {"2": "MRN1"}})
    assert contact.id == 4 and contact.custom_value("EMR id") == "MRN1" and contact.custom_value("x") is None


def test_local_matching() -> None:
    """E-mails case-insensitive, phones by digits (NANP leading 1 optional), names by words, no accents."""
    assert email_key(" Ada@Example.TEST ") == email_key("ada@example.test")
    assert phone_key("+1 (416) 555-0101") == phone_key("416.555.0101") == "4165550101"
    assert name_matches("lovelace ada", "Ada Lovelace") and name_matches("Zoe", None, "Zoé", "Ng")
    assert not name_matches("ada", "Adam Smith") and not name_matches("", "Ada")


def test_jsonable_refuses_naive_datetimes() -> None:
    """Outgoing payloads: aware datetimes as ISO 8601, Decimals as numbers; naive datetimes are refused."""
    assert jsonable({"fee": Decimal("10.50"), "n": Decimal("3")}) == {"fee": 10.5, "n": 3}
    with pytest.raises(PermanentError, match=r"\$\.participants\[0\]\.at"):
        jsonable({"participants": [{"at": datetime(2030, 1, 1)}]})
