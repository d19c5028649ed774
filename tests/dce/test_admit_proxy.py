"""dce/admit.py behind a trusted proxy: admission, stateless refusals, the password guard, its
log lines and the rate limiter's trust all use the source the proxy names; a header from
anyone else changes nothing; the core hands the named source to media as its latching hint.

Real parsed requests and the real core; the processes (Kamailio, two switches) are in
tests/integration/test_cluster.py.
"""

from __future__ import annotations

import hashlib
import logging
import random

import pytest

from config.errors import ConfigError
from config.settings import load_settings
from dce.admit import TrunkAdmitter
from exchange.models import ExchangeConfig, Trunk
from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.effects import OpenMedia, RouteCall, Routed
from switch.guard import GuardConfig
from switch.message import SipRequest, SipResponse, parse_message
from switch.peer import Peer
from switch.proxy import ProxyTrust

NOW = 100.0
PROXY = Peer("udp", "10.0.0.2", 5060)
TRUNK_SOURCE = "192.0.2.1"  # the IP trunk's address
STRANGER = "198.51.100.66"  # no trunk's


def admitter(*, digest: bool = False, proxies: tuple[str, ...] = (PROXY.host,)) -> TrunkAdmitter:
    trunks = [Trunk(id="ip", name="by address", source_ips=[TRUNK_SOURCE])]
    if digest:
        trunks.append(Trunk(id="dg", name="by digest", username="alice", password="wonderland"))
    return TrunkAdmitter(ExchangeConfig(trunks=trunks), b"s" * 32, ("SHA-256", "MD5"),
                         guard=GuardConfig(source_limit=3, window=60.0, block=30.0),
                         proxies=ProxyTrust(proxies))


def invite(source: str | None = None, auth: str | None = None, call_id: str = "c1") -> bytes:
    lines = [
        "INVITE sip:+18005550100@dce SIP/2.0",
        f"Via: SIP/2.0/UDP {PROXY.host}:5060;branch=z9hG4bKp{call_id}",
        f"Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKc{call_id};rport=5062",
        "From: <sip:+13122600123@example.com>;tag=f1",
        "To: <sip:+18005550100@dce>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        "Max-Forwards: 69",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if source is not None:
        lines.append(f"X-DCE-Source: {source}:5062;transport=udp")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def request(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def digest(adm: TrunkAdmitter, password: str) -> str:
    nonce = adm.auth.make_nonce(NOW)
    uri = "sip:+18005550100@dce"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    response = h(f"{h(f'alice:dce:{password}')}:{nonce}:00000001:abc:auth:{h('INVITE:' + uri)}")
    return (f'Digest username="alice", realm="dce", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="abc"')


# ------------------------------------------------------------------------------ admission


def test_a_trunk_source_named_by_the_proxy_is_admitted() -> None:
    adm = admitter()
    result = adm.admit_request(request(invite(TRUNK_SOURCE)), PROXY, NOW)
    assert result.trunk_id == "ip"
    assert result.source is not None
    assert (result.source.host, result.source.port) == (TRUNK_SOURCE, 5062)
    # Nothing to answer statelessly: the core takes it.
    assert adm.refusal(invite(TRUNK_SOURCE), PROXY, NOW) is None


def test_a_source_the_trunk_does_not_admit_is_refused_through_the_proxy_too() -> None:
    adm = admitter()
    result = adm.admit_request(request(invite(STRANGER)), PROXY, NOW)
    assert result.trunk_id is None
    assert result.reason == "unknown_source"
    # The stateless refusal goes back to the proxy (the top Via), which relays it.
    refusal = adm.refusal(invite(STRANGER), PROXY, NOW)
    assert refusal is not None
    status, data = refusal
    resp = parse_message(data)
    assert status == 403 and isinstance(resp, SipResponse)
    assert len(resp.headers.get_all("via")) == 2
    assert resp.headers.get_all("via")[0].startswith(f"SIP/2.0/UDP {PROXY.host}:5060")


def test_the_proxys_own_requests_are_the_proxys() -> None:
    # Without the header (the proxy's own OPTIONS probes, say) the source is the proxy, which
    # is no trunk's: nothing is admitted in its name.
    adm = admitter()
    assert adm.admit_request(request(invite()), PROXY, NOW).trunk_id is None
    assert adm.refusal(invite(), PROXY, NOW) is not None


def test_a_forged_header_from_a_source_that_is_not_a_trusted_proxy_is_ignored() -> None:
    adm = admitter()
    sender = Peer("udp", STRANGER, 5060)
    result = adm.admit_request(request(invite(TRUNK_SOURCE)), sender, NOW)
    assert result.trunk_id is None
    assert result.source is None
    assert adm.refusal(invite(TRUNK_SOURCE), sender, NOW) is not None  # 403 at once
    assert adm.proxies.stats.ignored == 1
    # ... and with no proxy trusted at all, the same.
    plain = admitter(proxies=())
    assert plain.admit_request(request(invite(TRUNK_SOURCE)), sender, NOW).trunk_id is None


def test_digest_passes_through_the_proxy_untouched() -> None:
    adm = admitter(digest=True)
    proven: list[str] = []
    adm.proven = lambda host, now: proven.append(host)
    challenge = adm.admit_request(request(invite(STRANGER)), PROXY, NOW)
    assert challenge.challenge  # 401: the caller may be the digest trunk
    result = adm.admit_request(request(invite(STRANGER, digest(adm, "wonderland"))), PROXY, NOW)
    assert result.trunk_id == "dg"
    # The rate limiter trusts the caller that proved the password, not the proxy.
    assert proven == [STRANGER]


# ---------------------------------------------------------------------- the password guard


def test_password_guessing_behind_the_proxy_blocks_the_guesser_not_the_proxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adm = admitter(digest=True)
    caplog.set_level(logging.WARNING, logger="dce.admit")
    for i in range(3):
        wrong = request(invite(STRANGER, digest(adm, f"guess{i}"), call_id=f"g{i}"))
        assert adm.admit_request(wrong, PROXY, NOW).trunk_id is None
    assert adm.guard.source_blocked(STRANGER, NOW)
    assert not adm.guard.source_blocked(PROXY.host, NOW)
    # The log lines (fail2ban's input) name the guesser.
    lines = [r.getMessage() for r in caplog.records]
    assert f"sip auth failed source={STRANGER} user=alice realm=dce reason=wrong_response" \
        in lines
    assert any(line.startswith(f"sip auth blocked source={STRANGER} ") for line in lines)
    assert not any(PROXY.host in line for line in lines)
    # The blocked guesser's INVITEs are refused (or dropped unparsed) through the proxy ...
    right = invite(STRANGER, digest(adm, "wonderland"), call_id="r1")
    assert adm.admit_request(request(right), PROXY, NOW).trunk_id is None
    assert adm.drops(right, PROXY, NOW) or adm.refusal(right, PROXY, NOW) is None
    # ... while another caller behind the same proxy still gets in.
    other = invite("203.0.113.50", digest(adm, "wonderland"), call_id="o1")
    assert not adm.drops(other, PROXY, NOW)
    assert adm.admit_request(request(other), PROXY, NOW).trunk_id == "dg"


def test_a_trusted_proxy_is_trusted_by_the_rate_limiter() -> None:
    adm = admitter()
    assert adm.trusted(PROXY.host)
    assert not adm.trusted(STRANGER)


# ------------------------------------------------------------------- the core's media hint


def test_the_core_gives_media_the_named_source_and_answers_the_proxy() -> None:
    adm = admitter()
    core = SwitchCore(CoreConfig(host="127.0.0.1", port=5060), adm, rng=random.Random(1))
    core.receive_datagram(invite(TRUNK_SOURCE), PROXY, NOW)
    sent = core.datagrams_to_send()
    assert [(parse_message(d).status, p) for d, p in sent] == [(100, PROXY)]  # type: ignore[union-attr]
    effects = []
    while (e := core.next_effect()) is not None:
        effects.append(e)
    (route,) = [e for e in effects if isinstance(e, RouteCall)]
    assert route.source_ip == TRUNK_SOURCE
    core.routed(route.call_id, Routed(targets=["sip:buyer@127.0.0.1:5070"]), NOW)
    opened = [e for e in iter(core.next_effect, None) if isinstance(e, OpenMedia)]
    assert [e.source_ip for e in opened] == [TRUNK_SOURCE]


# ------------------------------------------------------------------------------ the setting


def test_trusted_proxies_setting_from_the_environment_and_the_file() -> None:
    settings = load_settings(env={"DCE_TRUSTED_PROXIES": "10.0.0.2, 10.1.0.0/24"})
    assert settings.trusted_proxies == ("10.0.0.2/32", "10.1.0.0/24")
    trust = ProxyTrust(settings.trusted_proxies)
    assert trust.trusts("10.0.0.2") and trust.trusts("10.1.0.9")
    assert load_settings({"trusted_proxies": ["::1"]}, env={}).trusted_proxies == ("::1/128",)
    assert load_settings(env={}).trusted_proxies == ()


def test_a_trusted_proxy_that_is_not_an_address_stops_the_start_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"trusted_proxies.*'kamailio\.example'"):
        load_settings(env={"DCE_TRUSTED_PROXIES": "10.0.0.2,kamailio.example"})
