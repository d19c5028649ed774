"""dce/admit.py: the guard and the trunk limits wired into admission, on fake time.

Real parsed SIP requests and the real JSON log formatter; the socket-level proof is in
tests/integration/test_password_guessing.py and test_trunk_limits.py.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import msgspec
import pytest

from config.errors import ConfigError
from config.settings import load_settings
from dce.admit import TrunkAdmitter, guard_config
from dce.logs import JsonFormatter
from exchange.models import ExchangeConfig, Trunk
from switch.guard import GuardConfig
from switch.message import SipRequest, parse_message
from switch.peer import Peer

NOW = 100.0
GUESSER = Peer("udp", "198.51.100.66", 5060)
DOCS = Path(__file__).resolve().parents[2] / "docs"


def config() -> ExchangeConfig:
    return ExchangeConfig(trunks=[
        Trunk(id="ip", name="by address", source_ips=["192.0.2.1"], max_concurrent=2),
        Trunk(id="dg", name="by digest", username="alice", password="wonderland", max_cps=1,
              cps_burst=2),
    ])


def admitter(**guard: float) -> TrunkAdmitter:
    cfg = GuardConfig(**{"source_limit": 5, "window": 60.0, "block": 30.0, **guard})  # type: ignore[arg-type]
    return TrunkAdmitter(config(), b"s" * 32, ("SHA-256", "MD5"), guard=cfg)


def invite(auth: str | None = None, to_tag: str = "", call_id: str = "c1") -> bytes:
    lines = [
        "INVITE sip:+18005550100@dce SIP/2.0",
        "Via: SIP/2.0/UDP 198.51.100.66:5060;branch=z9hG4bK" + call_id,
        "From: <sip:+12125551234@example.com>;tag=f1",
        f"To: <sip:+18005550100@dce>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def request(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def digest(adm: TrunkAdmitter, username: str, password: str, now: float = NOW) -> str:
    nonce = adm.auth.make_nonce(now)
    uri = "sip:+18005550100@dce"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h(f"{username}:dce:{password}")
    response = h(f"{ha1}:{nonce}:00000001:abc:auth:{h('INVITE:' + uri)}")
    return (f'Digest username="{username}", realm="dce", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="abc"')


def test_unknown_user_and_wrong_password_look_the_same_to_the_peer() -> None:
    adm = admitter()
    wrong = adm.admit_request(request(invite(digest(adm, "alice", "nope"))), GUESSER, NOW)
    unknown = adm.admit_request(request(invite(digest(adm, "mallory", "x"))), GUESSER, NOW)
    assert wrong.trunk_id is None and unknown.trunk_id is None
    assert wrong.reason == unknown.reason == "auth_failed"


def test_every_failure_is_logged_on_one_line_the_documented_filter_matches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adm = admitter()
    caplog.set_level(logging.WARNING, logger="dce.admit")
    # Quoted-string escape: the user name is  x" source=10.9.9.9 é  (forging a source).
    evil = 'x\\" source=10.9.9.9 \u00e9'
    adm.admit_request(request(invite(digest(adm, "alice", "nope"))), GUESSER, NOW)
    adm.admit_request(request(invite(digest(adm, evil, "nope"))), GUESSER, NOW)
    adm.admit_request(request(invite('Digest username="alice", realm=')), GUESSER, NOW)
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert '"msg":"sip auth failed source=198.51.100.66 user=alice realm=dce ' \
           'reason=wrong_response"' in lines[0]
    assert "user=x%22%20source=10.9.9.9%20%C3%A9 realm=dce" in lines[1]
    assert "user=- realm=dce reason=malformed_credentials" in lines[2]
    failregex = fail2ban_failregex()
    assert [m.group("host") if (m := failregex.search(line)) else None for line in lines] == [
        "198.51.100.66"] * 3


def fail2ban_failregex() -> re.Pattern[str]:
    """The ``failregex`` docs/sip.md gives, with fail2ban's <HOST> as a named group."""
    text = (DOCS / "sip.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("failregex = ")]
    regex = line.removeprefix("failregex = ").replace("<HOST>", r"(?P<host>[0-9A-Fa-f:.]+)")
    return re.compile(regex)


def test_a_guessing_source_is_blocked_then_dropped_and_the_right_password_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adm = admitter()
    caplog.set_level(logging.WARNING, logger="dce.admit")
    for i in range(5):
        res = adm.admit_request(request(invite(digest(adm, "alice", f"guess{i}"))), GUESSER,
                                NOW + i / 100)
        assert res.reason == "auth_failed"
    assert caplog.records[-1].getMessage() == (
        "sip auth blocked source=198.51.100.66 failures=5 seconds=30")
    right = invite(digest(adm, "alice", "wonderland"))
    # Before parsing: the first INVITE of the block is let through to be answered ...
    assert not adm.drops(right, GUESSER, NOW + 1)
    res = adm.admit_request(request(right), GUESSER, NOW + 1)
    assert (res.trunk_id, res.reason, res.challenge) == (None, "blocked", None)
    # ... the next ones are dropped, whatever their credentials.
    assert adm.drops(right, GUESSER, NOW + 1.01)
    assert adm.drops(invite(), GUESSER, NOW + 1.02)
    # Not dropped: other sources, in-dialog requests, other methods, responses.
    assert not adm.drops(right, Peer("udp", "198.51.100.67", 5060), NOW + 1)
    assert not adm.drops(invite(to_tag="abc"), GUESSER, NOW + 1)
    assert not adm.drops(b"OPTIONS sip:dce SIP/2.0\r\n\r\n", GUESSER, NOW + 1)
    assert not adm.drops(b"SIP/2.0 200 OK\r\n\r\n", GUESSER, NOW + 1)
    assert (adm.guard.refused, adm.guard.dropped) == (3, 2)
    # After the block the right password gets in.
    later = invite(digest(adm, "alice", "wonderland", NOW + 31))
    assert not adm.drops(later, GUESSER, NOW + 31)
    res = adm.admit_request(request(later), GUESSER, NOW + 31)
    assert res.trunk_id == "dg" and res.limit is None


def test_a_source_trunk_is_never_blocked_and_a_browser_token_is_not_dropped() -> None:
    adm = admitter(source_limit=1)
    trunk_peer = Peer("udp", "192.0.2.1", 5060)
    adm.guard.failed("192.0.2.1", None, NOW)  # e.g. blocked before the trunk was added
    assert not adm.drops(invite(), trunk_peer, NOW)
    assert adm.admit_request(request(invite()), trunk_peer, NOW).trunk_id == "ip"
    browser = Peer("ws", "198.51.100.9", 40000, 7)
    adm.guard.failed(browser.host, None, NOW)
    adm.ws_trunk = lambda peer: "ip" if peer == browser else None
    assert not adm.drops(invite(), browser, NOW)
    adm.ws_trunk = lambda peer: None
    # Without a token it needs digest: answered once, then dropped.
    assert [adm.drops(invite(), browser, NOW + t) for t in (0.1, 0.2)] == [False, True]


def test_trunk_limits_name_their_rule_and_calls_refused_at_once_end_uncounted() -> None:
    adm = admitter()
    src = Peer("udp", "192.0.2.1", 5060)
    first = adm.admit_request(request(invite(call_id="a")), src, NOW)
    second = adm.admit_request(request(invite(call_id="b")), src, NOW)
    assert (first.trunk_id, first.limit, second.limit) == ("ip", None, None)
    adm.call_started("core-a", "ip")
    adm.call_started("core-b", "ip")
    adm.settled()
    third = adm.admit_request(request(invite(call_id="c")), src, NOW)
    assert (third.trunk_id, third.limit) == ("ip", "trunk_concurrent")
    adm.call_ended("core-c")  # the refused call's CallEnded
    adm.settled()
    assert adm.admit_request(request(invite(call_id="d")), src, NOW).limit == "trunk_concurrent"
    adm.call_ended("core-a")
    assert adm.admit_request(request(invite(call_id="e")), src, NOW).limit is None
    # CPS on the digest trunk: a burst of 2, then 1 a second.
    limits = [adm.admit_request(request(invite(digest(adm, "alice", "wonderland"))),
                                Peer("udp", "203.0.113.5", 5060), NOW + t).limit
              for t in (0, 0, 0, 0.5, 1.0)]
    assert limits == [None, None, "trunk_cps", "trunk_cps", None]
    assert adm.limiter.refused == {("ip", "trunk_concurrent"): 2, ("dg", "trunk_cps"): 2}


def test_limits_follow_trunk_updates() -> None:
    adm = admitter()
    src = Peer("udp", "192.0.2.1", 5060)
    cfg = config()
    cfg.trunks[0] = Trunk(id="ip", name="by address", source_ips=["192.0.2.1"], max_cps=1)
    adm.update(cfg)
    assert [adm.admit_request(request(invite()), src, NOW).limit for _ in range(2)] == [
        None, "trunk_cps"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_cps": 0}, "max_cps"),
        ({"max_cps": -1.5}, "max_cps"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"cps_burst": 5}, "`cps_burst` needs `max_cps`"),
        ({"max_cps": 2, "cps_burst": 0}, "cps_burst"),
    ],
)
def test_trunk_limit_fields_are_checked(fields: dict[str, float], error: str) -> None:
    doc = {"id": "t", "name": "t", **fields}
    with pytest.raises(msgspec.ValidationError, match=re.escape(error)):
        msgspec.convert(doc, Trunk)


def test_trunk_limits_from_a_config_file_take_whole_numbers() -> None:
    trunk = msgspec.convert({"id": "t", "name": "t", "max_cps": 5, "max_concurrent": 3}, Trunk)
    assert (trunk.max_cps, trunk.cps_burst, trunk.max_concurrent) == (5.0, None, 3)


def test_guard_settings_from_the_environment() -> None:
    settings = load_settings(env={"DCE_AUTH_FAIL_LIMIT": "3", "DCE_AUTH_USER_FAIL_LIMIT": "0",
                                  "DCE_AUTH_FAIL_WINDOW": "2m", "DCE_AUTH_BLOCK_TIME": "90s"})
    assert guard_config(settings) == GuardConfig(source_limit=3, user_limit=0, window=120.0,
                                                 block=90.0)
    assert guard_config(load_settings(env={})) == GuardConfig()  # defaults agree


@pytest.mark.parametrize(
    ("key", "value"),
    [("DCE_AUTH_FAIL_WINDOW", "0"), ("DCE_AUTH_BLOCK_TIME", "0s"), ("DCE_AUTH_FAIL_LIMIT", "-1")],
)
def test_bad_guard_settings_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.removeprefix("DCE_").lower()):
        load_settings(env={key: value})
