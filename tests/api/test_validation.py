"""api/validation.py: bad input answers a 4xx naming the field; nothing stored, no reload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from api.errors import Invalid
from api.routes import API_PREFIX
from api.validation import check_sip_uri, field_of, merge_patch
from tests.api.conftest import CALLER, Api

V = API_PREFIX
B1 = f"{V}/buyers/b1"


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    body: Any
    status: int
    field: str | None = None
    content_type: str | None = None


_PROFILE = {"id": "p9", "campaign_id": "c1", "bid": "1"}
BAD = [
    Bad("unknown field", "POST", f"{B1}/profiles", {**_PROFILE, "colour": "red"}, 422, "colour"),
    Bad("unknown nested field", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"x": 1}}, 422,
        "caps.x"),
    Bad("wrong type", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"daily": "ten"}}, 422,
        "caps.daily"),
    Bad("negative bid", "POST", f"{B1}/profiles", {**_PROFILE, "bid": "-1"}, 422, "bid"),
    Bad("float-ish huge bid", "POST", f"{B1}/profiles", {**_PROFILE, "bid": 1e300}, 422, "bid"),
    Bad("too many decimals", "POST", f"{B1}/profiles", {**_PROFILE, "bid": "0.0000001"}, 422,
        "bid"),
    Bad("negative cap", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"hourly": -1}}, 422,
        "caps.hourly"),
    Bad("negative budget", "POST", f"{B1}/profiles",
        {**_PROFILE, "caps": {"budget_daily": "-5"}}, 422, "caps.budget_daily"),
    Bad("hours do not parse", "POST", f"{B1}/profiles",
        {**_PROFILE, "hours": {"mon": ["9am-5pm"]}}, 422, "hours[...][0]"),
    Bad("empty hours range", "POST", f"{B1}/profiles",
        {**_PROFILE, "hours": {"tue": ["09:00-09:00"]}}, 422, "hours.tue[0]"),
    Bad("unknown weekday", "POST", f"{B1}/profiles", {**_PROFILE, "hours": {"mon2": []}}, 422,
        "hours"),
    Bad("unknown time zone", "POST", f"{B1}/profiles", {**_PROFILE, "timezone": "Mars/Olympus"},
        422, "timezone"),
    Bad("path-like time zone", "POST", f"{B1}/profiles", {**_PROFILE, "timezone": "../etc"},
        422, "timezone"),
    Bad("unknown campaign", "POST", f"{B1}/profiles", {**_PROFILE, "campaign_id": "nope"}, 422,
        "campaign_id"),
    Bad("rtb url not http", "POST", f"{B1}/profiles", {**_PROFILE, "rtb_url": "ftp://x"}, 422,
        "rtb_url"),
    Bad("missing bid", "POST", f"{B1}/profiles", {"id": "p9"}, 422, "bid"),
    Bad("bad id", "POST", f"{B1}/profiles", {**_PROFILE, "id": "a b"}, 422, "id"),
    Bad("duplicate profile", "POST", f"{B1}/profiles", {**_PROFILE, "id": "p1"}, 409),
    Bad("invalid SIP URI", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "http://x.example"},
        422, "uri"),
    Bad("SIP URI without host", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "sip:user@"},
        422, "uri"),
    Bad("SIP URI bad port", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "sip:h:99999"}, 422,
        "uri"),
    Bad("negative max_concurrent", "POST", f"{B1}/endpoints",
        {"id": "e9", "uri": "sip:a@h", "max_concurrent": -2}, 422, "max_concurrent"),
    Bad("nested endpoint uri", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "endpoints": [{"id": "e", "uri": "mailto:x"}]}, 422,
        "endpoints[0].uri"),
    Bad("nested profile zone", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "profiles": [{**_PROFILE, "timezone": "Nowhere/X"}]}, 422,
        "profiles[0].timezone"),
    Bad("short api key", "POST", f"{V}/buyers", {"id": "b9", "name": "N", "api_key": "short"},
        422, "api_key"),
    Bad("duplicate buyer", "POST", f"{V}/buyers", {"id": "b2", "name": "N"}, 409),
    Bad("negative reserve", "POST", f"{V}/campaigns", {"id": "c9", "name": "N", "reserve": "-1"},
        422, "reserve"),
    Bad("bad number", "POST", f"{V}/campaigns", {"id": "c9", "name": "N", "numbers": ["555"]},
        422, "numbers[0]"),
    Bad("number of another campaign", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "numbers": ["+18005550100"]}, 409, "numbers[0]"),
    Bad("bad hours window", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "compliance": {"hours_window": "8-9"}}, 422,
        "compliance.hours_window"),
    Bad("fraud threshold", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "compliance": {"fraud_threshold": 101}}, 422,
        "compliance.fraud_threshold"),
    Bad("bad CIDR", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "source_ips": ["1.2.3/8"]},
        422, "source_ips[0]"),
    Bad("payout share", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "payout_share": 120},
        422, "payout_share"),
    Bad("username alone", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "username": "u"},
        422, "username"),
    Bad("duplicate trunk", "POST", f"{V}/trunks", {"id": "t1", "name": "N"}, 409),
    Bad("put id mismatch", "PUT", f"{V}/trunks/t1", {"id": "t2", "name": "N"}, 409, "id"),
    Bad("patch id change", "PATCH", f"{V}/trunks/t1", {"id": "t7"}, 409, "id"),
    Bad("patch wrong type", "PATCH", f"{B1}/profiles/p1", {"caps": {"daily": -1}}, 422,
        "caps.daily"),
    Bad("patch negative bid", "PATCH", f"{B1}/profiles/p1", {"bid": -3}, 422, "bid"),
    Bad("patch bad zone", "PATCH", f"{B1}/profiles/p1", {"timezone": "Europe/Nowhere"}, 422,
        "timezone"),
    Bad("patch not an object", "PATCH", f"{B1}/profiles/p1", [1, 2], 422, ""),
    Bad("patch buyer unknown", "PATCH", B1, {"colour": "red"}, 422, "colour"),
    Bad("delete referenced campaign", "DELETE", f"{V}/campaigns/c1", None, 409),
    Bad("put missing", "PUT", f"{V}/trunks/t404", {"id": "t404", "name": "N"}, 404),
    Bad("consent bad caller", "POST", f"{V}/consent", {"caller": "hello", "campaign_id": "c1"},
        422, "caller"),
    Bad("consent unknown campaign", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c404"}, 422, "campaign_id"),
    Bad("consent naive time", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "granted_at": "2026-01-01T00:00:00"}, 422,
        "granted_at"),
    Bad("consent revoked before", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "granted_at": "2026-01-02T00:00:00Z",
         "revoked_at": "2026-01-01T00:00:00Z"}, 422, "revoked_at"),
    Bad("consent unknown field", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "ip": "1.2.3.4"}, 422, "ip"),
    Bad("wrong content type", "POST", f"{V}/trunks", b'{"id":"t9","name":"N"}', 415,
        content_type="text/plain"),
    Bad("form content type", "POST", f"{V}/trunks", b"id=t9", 415,
        content_type="application/x-www-form-urlencoded"),
    Bad("malformed JSON", "POST", f"{V}/trunks", b'{"id": "t9",', 400,
        content_type="application/json"),
    Bad("empty body", "POST", f"{V}/trunks", b"", 400, content_type="application/json"),
    Bad("body over 1 MiB", "POST", f"{V}/trunks",
        b'{"id":"t9","name":"' + b"x" * (1 << 20) + b'"}', 413, content_type="application/json"),
    Bad("dnc JSON body", "POST", f"{V}/dnc?list=x", b"[]", 415, content_type="application/json"),
    Bad("dnc no list", "POST", f"{V}/dnc", b"2125550000", 422, "list", "text/plain"),
    Bad("dnc bad list name", "POST", f"{V}/dnc?list=../x", b"2125550000", 422, "list",
        "text/plain"),
    Bad("dnc unknown param", "POST", f"{V}/dnc?list=x&lst=y", b"2125550000", 422, "lst",
        "text/plain"),
    # Control characters: 422 naming the field, whatever the route (api.md "Text").
    Bad("NUL in a name", "POST", f"{V}/trunks", {"id": "t9", "name": "Sel\u0000ler"}, 422, "name"),
    Bad("NUL in a nested field", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "profiles": [{**_PROFILE, "timezone": "UTC\u0000"}]}, 422,
        "profiles[0].timezone"),
    Bad("LF in a name", "PUT", f"{V}/campaigns/c2", {"id": "c2", "name": "Home\nX"}, 422, "name"),
    Bad("C1 control in a URI", "POST", f"{B1}/endpoints",
        {"id": "e9", "uri": "sip:a@h\u0085x"}, 422, "uri"),
    Bad("DEL in a patch", "PATCH", f"{V}/trunks/t1", {"name": "x\u007f"}, 422, "name"),
    Bad("NUL in a consent disclosure", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "disclosure": "a\u0000"}, 422, "disclosure"),
    Bad("NUL in a query value", "GET", f"{V}/calls?campaign_id=c%001", None, 422, "campaign_id"),
    Bad("NUL in a query name", "GET", f"{V}/calls?a%00b=1", None, 422, "a\u0000b"),
    Bad("ESC in a DNC source", "POST", f"{V}/dnc?list=x&source=a%1Bb", b"2125550000", 422,
        "source", "text/plain"),
    Bad("NUL in a path id", "GET", f"{V}/trunks/t%001", None, 422, "id"),
    Bad("NUL in a path id (write)", "DELETE", f"{V}/buyers/b1/endpoints/e%00", None, 422, "id"),
    # Money and percentages only as decimal strings (api.md "Money and times").
    Bad("money as a JSON float", "POST", f"{B1}/profiles", {**_PROFILE, "bid": 5.5}, 422, "bid"),
    Bad("money as a JSON integer", "POST", f"{B1}/profiles", {**_PROFILE, "bid": 5}, 422, "bid"),
    Bad("nested money as a number", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "profiles": [{**_PROFILE, "caps": {"budget_daily": 10}}]},
        422, "profiles[0].caps.budget_daily"),
    Bad("percentage as a number", "POST", f"{V}/trunks",
        {"id": "t9", "name": "N", "payout_share": 70}, 422, "payout_share"),
    Bad("money with an exponent", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "reserve": "1e3"}, 422, "reserve"),
    Bad("money with a sign", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "reserve": "+1"}, 422, "reserve"),
    Bad("money over the ceiling", "POST", f"{B1}/profiles", {**_PROFILE, "bid": "1000000"}, 422,
        "bid"),
    Bad("patch money as a number", "PATCH", f"{B1}/profiles/p1", {"bid": 13}, 422, "bid"),
    # A merge patch names fields of the model only, and removes only what has a default.
    Bad("patch unknown nested null", "PATCH", f"{B1}/profiles/p1", {"caps": {"zzz": None}}, 422,
        "caps.zzz"),
    Bad("patch removes a required field", "PATCH", f"{V}/trunks/t1", {"name": None}, 422,
        "name"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
async def test_bad_input(api: Api, bad: Bad) -> None:
    before = await api.snapshot()
    if bad.content_type is not None:
        reply = await api.call(bad.method, bad.path, data=bad.body, content_type=bad.content_type)
    elif bad.body is None:
        reply = await api.call(bad.method, bad.path)
    else:
        reply = await api.call(bad.method, bad.path, json=bad.body)
    assert reply.status == bad.status, reply.body
    assert set(reply.body) == {"error", "detail"}
    if bad.field is not None:
        assert reply.body["detail"]["field"] == bad.field, reply.body
    assert await api.snapshot() == before
    assert api.changes == []


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("Expected `int`, got `str` - at `$.caps.daily`", "caps.daily"),
        ("Object contains unknown field `zzz`", "zzz"),
        ("Object contains unknown field `zzz` - at `$.caps`", "caps.zzz"),
        ("Object missing required field `bid`", "bid"),
        ("`budget_daily` must be a non-negative amount, got -3 - at `$.caps`", "caps.budget_daily"),
        ("`bid` must be a non-negative amount, got -1", "bid"),
        ("Invalid enum value 'xyz' - at `key` in `$.hours`", "hours"),
        ("Expected `str` matching regex 'x' - at `$.endpoints[0].uri`", "endpoints[0].uri"),
        ("Expected `object`, got `array`", ""),
    ],
)
def test_field_of(message: str, field: str) -> None:
    assert field_of(message) == field


def test_merge_patch_rfc7396() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }
    assert merge_patch({"a": 1}, {"a": None}) == {}


# ----------------------------------------------------------------------------------------------
# SIP URIs: api/validation.py reads them as switch/uri.py does, without importing the switch


def _switch_verdict(uri: str, field: str) -> str | None:
    """What the endpoint check said when it used the switch's parser (the message, or None)."""
    from switch.errors import SipParseError
    from switch.uri import SipUri

    try:
        parsed = SipUri.parse(uri)
    except SipParseError as exc:
        return f"not a SIP URI: {exc}"
    if parsed.scheme not in ("sip", "sips"):
        return f"expected a sip: or sips: URI, got {uri!r}"
    return None


SIP_URIS = [
    "sip:b1@192.0.2.10",
    "sips:m@example.com:5061",
    "SIP:Alice@Example.COM",
    "sip:h",
    "sip:h:0",
    "sip:h:65535",
    "sip:h:65536",
    "sip:h:99999",
    "sip:h:5x",
    "sip:h:",
    "sip:h:\u0663",  # an Arabic-Indic digit: int() reads it
    "sip:user@",
    "sip:user:pw@host;transport=tcp?subject=x",
    "sip:a@b?x@y",
    "sip:a@b@c",
    "sip:;lr",
    "sip:[2001:db8::1]:5060;transport=udp",
    "sip:[2001:db8::1]",
    "sip:[2001:db8::1",
    "sip:[]:5060",
    "  sip:padded@192.0.2.1  ",
    "tel:+12125551234",
    "TEL:+1",
    "http://x.example",
    "mailto:x",
    "sip",
    "",
    "sip:" + "h" * 100 + ":bad-port-text",
]


@pytest.mark.parametrize("uri", SIP_URIS)
def test_sip_uri_check_matches_the_switch_parser(uri: str) -> None:
    try:
        check_sip_uri(uri, "uri")
        ours = None
    except Invalid as exc:
        assert exc.field == "uri"
        ours = exc.detail["message"]
    assert ours == _switch_verdict(uri, "uri")


# ----------------------------------------------------------------------------------------------
# Text and numbers as the document says (api.md "Text", "Money and times")


async def test_money_as_a_number_is_refused_with_the_string_to_send(api: Api) -> None:
    before = await api.snapshot()
    r = await api.call("PATCH", f"{B1}/profiles/p1", json={"bid": 5.5})
    assert r.status == 422
    assert r.body["detail"]["field"] == "bid"
    assert '"5.5" (in quotes), not the number 5.5' in r.body["detail"]["message"]
    assert await api.snapshot() == before
    ok = await api.call("PATCH", f"{B1}/profiles/p1", json={"bid": "5.50"})
    assert ok.status == 200 and ok.body["bid"] == "5.50"


async def test_a_consent_disclosure_keeps_its_line_breaks(api: Api) -> None:
    text = "I agree\tto be called.\r\nSecond line.\n"
    r = await api.call(
        "POST", f"{V}/consent", json={"caller": CALLER, "campaign_id": "c1", "disclosure": text}
    )
    assert r.status == 201, r.body
    stored = await api.call("GET", f"{V}/consent/{r.body['id']}")
    assert stored.body["disclosure"] == text


async def test_text_may_be_any_other_unicode(api: Api) -> None:
    name = "Vendeur \u00e9t\u00e9 \u2014 \U0001f4de \u00a0 \u2028 \ufeff"
    r = await api.call("POST", f"{V}/trunks", json={"id": "t9", "name": name})
    assert r.status == 201, r.body
    assert (await api.call("GET", f"{V}/trunks/t9")).body["name"] == name


async def test_an_integral_json_number_is_an_integer(api: Api) -> None:
    # JSON has one number type: 30.0 is 30 (JSON Schema's "integer" says so too).
    r = await api.call("PATCH", f"{B1}/profiles/p1", json={"min_duration": 30.0})
    assert r.status == 200, r.body
    assert r.body["min_duration"] == 30
    half = await api.call("PATCH", f"{B1}/profiles/p1", json={"min_duration": 30.5})
    assert half.status == 422 and half.body["detail"]["field"] == "min_duration"


async def test_a_lone_surrogate_is_malformed_json(api: Api) -> None:
    r = await api.call(
        "POST", f"{V}/trunks", data=b'{"id": "t9", "name": "a\\ud800"}',
        content_type="application/json",
    )  # fmt: skip
    assert r.status == 400
    assert r.body["error"] == "malformed JSON"
