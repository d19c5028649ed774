"""Telephone numbers as the gate sees them: E.164 normalisation and what a number tells us.

Everything here comes from the ``phonenumbers`` package (Google's libphonenumber metadata): the
validity of a number, its region (ISO 3166-1 country), its state or province (from the geocoder's
area-code description, the presumption the Florida and Oklahoma statutes use, domain.md §4.1)
and its IANA time zones. The only table kept here maps state and province *names*, as the
geocoder spells them, to their two-letter postal codes.

``normalize`` and ``info`` are pure and cached: a number seen before costs one dict lookup and
allocates nothing, which matters because the gate runs them on every INVITE.
"""

from __future__ import annotations

import functools
from typing import Final

import msgspec
import phonenumbers
from phonenumbers import geocoder, timezone

__all__ = ["STATE_CODES", "NumberInfo", "info", "national_number", "normalize"]

# SIP user parts are short; anything longer is junk and is refused before phonenumbers sees it.
_MAX_RAW: Final = 64
# Regions that share country code 1 and dial ten-digit national numbers (NANP).
_NANP_REGIONS: Final = frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1])
_UNKNOWN_TZ: Final = timezone.UNKNOWN_TIMEZONE

# Geocoder descriptions ("Florida", "New York, NY", "Washington State") to postal codes. The
# names are the ones libphonenumber's English geocoding data uses, typos included.
# fmt: off
STATE_CODES: Final[dict[str, str]] = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV", "New Hampshire": "NH",
    "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY", "North Carolina": "NC",
    "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK", "Oregon": "OR", "Pennsylvania": "PA",
    "Rhode Island": "RI", "South Carolina": "SC", "South Dakota": "SD", "Tennessee": "TN",
    "Texas": "TX", "Utah": "UT", "Vermont": "VT", "Virginia": "VA", "Washington": "WA",
    "Washington State": "WA", "West Virginia": "WV", "Wisconsin": "WI", "Wyoming": "WY",
    "Washington D.C.": "DC", "District of Columbia": "DC",
    "Puerto Rico": "PR", "Guam": "GU", "American Samoa": "AS", "Northern Mariana Islands": "MP",
    "US Virgin Islands": "VI", "U.S. Virgin Islands": "VI",
    "Alberta": "AB", "British Columbia": "BC", "British Colombia": "BC", "Manitoba": "MB",
    "New Brunswick": "NB", "Newfoundland and Labrador": "NL", "Nova Scotia": "NS",
    "Ontario": "ON", "Prince Edward Island": "PE", "Quebec": "QC", "Saskatchewan": "SK",
    "Northwest Territories": "NT", "Nunavut": "NU", "Yukon": "YT",
}
# fmt: on
_CODES: Final = frozenset(STATE_CODES.values())


class NumberInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one E.164 number tells the gate.

    ``region`` is the ISO 3166-1 alpha-2 code, or ``"ZZ"`` when unknown (libphonenumber's
    convention). ``state`` is a two-letter US state / territory or Canadian province code, None
    outside the NANP or when the area code spans several (e.g. the Maritimes overlay).
    ``area_code`` is the NANP NPA. ``time_zones`` are IANA names; empty when unknown.
    """

    e164: str
    valid: bool
    region: str
    state: str | None
    area_code: str | None
    time_zones: tuple[str, ...]


def _strip_uri(raw: str) -> str:
    """Reduce a SIP/tel URI or user part to the number text (RFC 3966, RFC 3261 §19.1)."""
    s = raw.strip()
    lower = s[:5].lower()
    if lower.startswith(("sip:", "tel:")):
        s = s[4:]
    elif lower.startswith("sips:"):
        s = s[5:]
    # user@host: keep the user part; ;params (phone-context, isub, user=phone) are dropped.
    at = s.find("@")
    if at >= 0:
        s = s[:at]
    semi = s.find(";")
    if semi >= 0:
        s = s[:semi]
    return s.strip()


@functools.lru_cache(maxsize=1 << 16)
def normalize(raw: str, default_region: str = "US") -> str | None:
    """Turn a SIP user part, tel URI or typed number into E.164 (``+12125551234``), else None.

    Accepts ``+12125551234``, ``12125551234``, ``2125551234`` (NANP national, when the default
    region is a NANP one), ``tel:+1-212-555-1234;phone-context=...``, ``sip:+1212...@host`` and
    common punctuation. Returns None for anything that is not a *possible* number (wrong length,
    letters, ``anonymous``); a possible but unassigned number is still returned so that the
    fraud rules can judge it (``info(e164).valid``).
    """
    if len(raw) > _MAX_RAW:
        return None
    s = _strip_uri(raw)
    if not s:
        return None
    # Fast path for the NANP forms that make up nearly all US trunk traffic; no regexes.
    digits = s[1:] if s[0] == "+" else s
    if digits.isdigit() and digits.isascii():
        if s[0] == "+":
            if len(digits) == 11 and digits[0] == "1":
                return s
        elif default_region in _NANP_REGIONS:
            if len(digits) == 10:
                return "+1" + digits
            if len(digits) == 11 and digits[0] == "1":
                return "+" + digits
    try:
        num = phonenumbers.parse(s, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def national_number(e164: str) -> int:
    """The digits after the ``+`` as an integer (country code included); 0 if not E.164-ish.

    DNC lists store this form as uint64: ``+12125551234`` -> 12125551234.
    """
    d = e164[1:] if e164.startswith("+") else e164
    if not (0 < len(d) <= 15 and d.isdigit() and d.isascii()):
        return 0
    return int(d)


def _state_of(desc: str) -> str | None:
    # City-level entries read "New York, NY"; area-code-level ones read "Florida".
    if ", " in desc:
        tail = desc.rsplit(", ", 1)[1]
        if tail in _CODES:
            return tail
    return STATE_CODES.get(desc)


@functools.lru_cache(maxsize=1 << 16)
def _nanp_exchange(npa_nxx: str) -> tuple[bool, str, str | None, tuple[str, ...]]:
    """Validity, region, state and zones shared by every number of one NANP NPA-NXX.

    libphonenumber's NANP validity, region and time-zone data never look past the sixth
    national digit (tests/compliance/test_numbers.py checks this against phonenumbers for
    random numbers), so one lookup per exchange serves all 10,000 of its numbers and a number
    never seen before costs only the string work in ``info``.
    """
    num = phonenumbers.PhoneNumber(country_code=1, national_number=int(npa_nxx + "2345"))
    return _describe(num)


def _describe(num: phonenumbers.PhoneNumber) -> tuple[bool, str, str | None, tuple[str, ...]]:
    valid = phonenumbers.is_valid_number(num)
    region = phonenumbers.region_code_for_number(num) or "ZZ"
    state: str | None = None
    if valid and num.country_code == 1:
        state = _state_of(geocoder.description_for_valid_number(num, "en"))
    zones = tuple(z for z in timezone.time_zones_for_number(num) if z != _UNKNOWN_TZ)
    return valid, region, state, zones


@functools.lru_cache(maxsize=1 << 16)
def info(e164: str) -> NumberInfo:
    """Validity, region, state, area code and time zones of an E.164 number (cached).

    Never raises: a string that does not parse gives ``valid=False``, region ``"ZZ"`` and no
    time zones.
    """
    if len(e164) == 12 and e164.startswith("+1") and e164[2:].isdigit() and e164.isascii():
        valid, region, state, zones = _nanp_exchange(e164[2:8])
        return NumberInfo(
            e164=e164,
            valid=valid,
            region=region,
            state=state,
            area_code=e164[2:5],
            time_zones=zones,
        )
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return NumberInfo(
            e164=e164, valid=False, region="ZZ", state=None, area_code=None, time_zones=()
        )
    valid, region, state, zones = _describe(num)
    area_code: str | None = None
    if num.country_code == 1:
        nat = str(num.national_number)
        if len(nat) == 10:
            area_code = nat[:3]
    return NumberInfo(
        e164=e164, valid=valid, region=region, state=state, area_code=area_code, time_zones=zones
    )
