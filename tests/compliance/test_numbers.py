"""compliance.numbers: E.164 normalisation and what libphonenumber says about a number."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.numbers import info, national_number, normalize

NORMALIZE_CASES = [
    ("+12125551234", "+12125551234"),
    ("12125551234", "+12125551234"),
    ("2125551234", "+12125551234"),
    ("(212) 555-1234", "+12125551234"),
    ("212.555.1234", "+12125551234"),
    ("+1 (305) 555 1234", "+13055551234"),
    ("tel:+1-212-555-1234;phone-context=example.com", "+12125551234"),
    ("sip:+12125551234@carrier.example;user=phone", "+12125551234"),
    ("sips:12125551234@h", "+12125551234"),
    ("+442079460000", "+442079460000"),
    ("011442079460000", "+442079460000"),
    ("anonymous", None),
    ("", None),
    ("   ", None),
    ("+1212", None),
    ("12345", None),
    ("x" * 100, None),
    ("sip:@host", None),
    ("+", None),
]


@pytest.mark.parametrize(("raw", "want"), NORMALIZE_CASES, ids=[c[0][:30] for c in NORMALIZE_CASES])
def test_normalize(raw: str, want: str | None) -> None:
    assert normalize(raw) == want


def test_normalize_other_default_region() -> None:
    assert normalize("020 7946 0000", "GB") == "+442079460000"
    # Ten NANP digits mean nothing special outside the NANP.
    assert normalize("2125551234", "GB") != "+12125551234"


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_normalize_never_raises_and_is_e164(raw: str) -> None:
    out = normalize(raw)
    assert out is None or (out.startswith("+") and out[1:].isdigit() and len(out) <= 16)


INFO_CASES = [
    ("+12125551234", True, "US", "NY", "212", ("America/New_York",)),
    ("+13055551234", True, "US", "FL", "305", ("America/New_York",)),
    ("+14055551234", True, "US", "OK", "405", ("America/Chicago",)),
    ("+12065551234", True, "US", "WA", "206", ("America/Los_Angeles",)),
    ("+12025551234", True, "US", "DC", "202", ("America/New_York",)),
    ("+19075551234", True, "US", "AK", "907", ("America/Adak", "America/Anchorage")),
    ("+14165551234", True, "CA", "ON", "416", ("America/Toronto",)),
    ("+17875551234", True, "PR", "PR", "787", ("America/Puerto_Rico",)),
    ("+442079460000", True, "GB", None, None, ("Europe/London",)),
    ("+11234567890", False, "ZZ", None, "123", ()),
]


@pytest.mark.parametrize(
    ("e164", "valid", "region", "state", "npa", "zones"), INFO_CASES, ids=[c[0] for c in INFO_CASES]
)
def test_info(
    e164: str, valid: bool, region: str, state: str | None, npa: str | None, zones: tuple[str, ...]
) -> None:
    i = info(e164)
    assert (i.e164, i.valid, i.region, i.state, i.area_code, i.time_zones) == (
        e164,
        valid,
        region,
        state,
        npa,
        zones,
    )


def test_info_junk_does_not_raise() -> None:
    i = info("not a number")
    assert not i.valid and i.region == "ZZ" and i.time_zones == ()


def test_info_is_cached_and_frozen() -> None:
    a = info("+12125551234")
    assert info("+12125551234") is a
    with pytest.raises(AttributeError):
        a.valid = False  # type: ignore[misc]


def test_idaho_split_by_exchange() -> None:
    # 208 spans Mountain and Pacific time; libphonenumber knows some exchanges exactly.
    assert info("+12082011234").time_zones == ("America/Denver",)
    assert set(info("+12085551234").time_zones) == {"America/Boise", "America/Los_Angeles"}


@given(st.integers(min_value=2_000_000_000, max_value=9_999_999_999))
@settings(max_examples=400, deadline=None)
def test_exchange_cache_agrees_with_phonenumbers(national: int) -> None:
    """info() caches per NPA-NXX; that is only right if libphonenumber never looks further."""
    e164 = f"+1{national}"
    num = phonenumbers.parse(e164)
    i = info(e164)
    assert i.valid == phonenumbers.is_valid_number(num)
    assert i.region == (phonenumbers.region_code_for_number(num) or "ZZ")
    want_zones = tuple(
        z for z in phonenumbers.timezone.time_zones_for_number(num) if z != "Etc/Unknown"
    )
    assert i.time_zones == want_zones


def test_national_number() -> None:
    assert national_number("+12125551234") == 12125551234
    assert national_number("junk") == 0
    assert national_number("+") == 0
