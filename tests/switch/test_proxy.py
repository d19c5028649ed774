"""switch/proxy.py: the real source of a request that came through a trusted proxy, read from
raw bytes and from parsed requests alike; and the transports counting rate limits against it."""

from __future__ import annotations

import asyncio

import pytest

from switch.message import SipRequest, parse_message
from switch.peer import Peer
from switch.pike import Pike, PikeConfig
from switch.proxy import ProxyTrust, format_source, parse_source
from switch.transport import ConnLimits, Guard, TcpHub, UdpTransport

PROXY = Peer("udp", "10.0.0.2", 5060)
CALLER = "192.0.2.10"


def invite(*sources: str, name: str = "X-DCE-Source") -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for value in sources)
    return (
        "INVITE sip:+18005550100@dce SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKk1\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKc1;rport=5062\r\n"
        "From: <sip:+12125551234@example.com>;tag=f1\r\n"
        "To: <sip:+18005550100@dce>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def parsed(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.10:5062;transport=udp", ("192.0.2.10", 5062)),
        ("192.0.2.10:5062", ("192.0.2.10", 5062)),
        (" 192.0.2.10:5062 ; transport=tcp ", ("192.0.2.10", 5062)),
        ("192.0.2.10", ("192.0.2.10", 0)),
        ("[2001:db8::1]:5060;transport=udp", ("2001:db8::1", 5060)),
        ("[2001:DB8:0::1]:5060", ("2001:db8::1", 5060)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("[::ffff:192.0.2.10]:5060", ("192.0.2.10", 5060)),
        ("caller.example.com:5060", None),
        ("192.0.2.10:0", None),
        ("192.0.2.10:65536", None),
        ("192.0.2.10:5o60", None),
        ("192.0.2.10:\u0665", None),  # a digit str.isdigit() takes and int() would too
        ("[2001:db8::1]5060", None),
        ("", None),
        (b"\xff:5060", None),
    ],
    ids=lambda v: repr(v),
)
def test_parse_source(value: str | bytes, expected: tuple[str, int] | None) -> None:
    assert parse_source(value) == expected


def test_format_source_is_what_parse_source_reads() -> None:
    assert format_source("192.0.2.10", 5062) == "192.0.2.10:5062;transport=udp"
    assert parse_source(format_source("2001:db8::1", 5060, "tcp")) == ("2001:db8::1", 5060)


def test_trusted_proxies_by_address_and_network() -> None:
    trust = ProxyTrust(["10.0.0.2", "10.1.0.0/24", "2001:db8:5::/64"])
    assert trust
    assert trust.trusts("10.0.0.2")
    assert trust.trusts("10.1.0.77")
    assert trust.trusts("::ffff:10.1.0.77")  # a dual-stack socket's view of an IPv4 source
    assert trust.trusts("2001:db8:5::9")
    assert not trust.trusts("10.0.0.3")
    assert not trust.trusts("10.1.1.1")
    assert not trust.trusts("not-an-address")
    assert not ProxyTrust()
    assert not ProxyTrust().trusts("10.0.0.2")


def test_a_bad_network_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'kamailio\.example'"):
        ProxyTrust(["10.0.0.2", "kamailio.example"])


@pytest.mark.parametrize(
    ("sender", "data", "expected"),
    [
        # A trusted proxy names the caller: the caller it is.
        (PROXY, invite("192.0.2.10:5062;transport=udp"), CALLER),
        # The header name is case-insensitive.
        (PROXY, invite("192.0.2.10:5062", name="x-dce-SOURCE"), CALLER),
        # Several: the last one is the proxy's (it appends its own after what came in).
        (PROXY, invite("192.0.2.99:5060", "192.0.2.10:5062"), CALLER),
        # The proxy's own requests (its OPTIONS probes) and responses carry none.
        (PROXY, invite(), PROXY.host),
        # A value that names nobody leaves the proxy as the source.
        (PROXY, invite("caller.example.com:5060"), PROXY.host),
        # Anyone else's header is ignored: a forged claim to a trunk's address.
        (Peer("udp", "198.51.100.66", 5060), invite("192.0.2.10:5062"), "198.51.100.66"),
    ],
    ids=["named", "case", "last", "none", "unusable", "forged"],
)
def test_raw_and_parsed_requests_give_the_same_source(
    sender: Peer, data: bytes, expected: str
) -> None:
    trust = ProxyTrust(["10.0.0.0/24"])
    assert trust.identity(data, sender.host) == expected
    source = trust.source_of(parsed(data), sender)
    assert source.host == expected
    # Where to send never changes: the hop's transport and connection stay.
    assert (source.transport, source.conn) == (sender.transport, sender.conn)
    if expected == sender.host:
        assert source is sender


def test_source_of_counts_what_it_did() -> None:
    trust = ProxyTrust(["10.0.0.2"])
    named = trust.source_of(parsed(invite("192.0.2.10:5062")), PROXY)
    assert (named.host, named.port) == (CALLER, 5062)
    trust.source_of(parsed(invite("192.0.2.10:5062")), Peer("udp", "198.51.100.66", 5060))
    trust.source_of(parsed(invite("nobody")), PROXY)
    trust.source_of(parsed(invite()), Peer("udp", "198.51.100.66", 5060))  # no header: nothing
    assert (trust.stats.named, trust.stats.ignored, trust.stats.unusable) == (1, 1, 1)


def test_the_header_in_a_body_is_not_a_header() -> None:
    trust = ProxyTrust(["10.0.0.2"])
    body = b"v=0\r\nX-DCE-Source: 192.0.2.10:5060\r\n"
    data = invite().replace(b"Content-Length: 0\r\n\r\n",
                            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert trust.identity(data, PROXY.host) == PROXY.host


# --------------------------------------------------------------------- the transports' count


def test_udp_rate_limits_count_the_callers_a_proxy_names_never_the_proxy() -> None:
    trust = ProxyTrust([PROXY.host])
    pike = Pike(PikeConfig(window=10.0, limit=3, ban=60.0), trusted=trust.trusts)
    fed: list[tuple[bytes, Peer]] = []
    banned: list[str] = []
    udp = UdpTransport(lambda data, peer: fed.append((data, peer)), lambda: None,
                       Guard(pike=pike, on_ban=banned.append, identity=trust.identity))
    flood = invite("192.0.2.66:5060")
    calm = invite("192.0.2.10:5062")
    for _ in range(6):
        udp.datagram_received(flood, (PROXY.host, PROXY.port))
    udp.datagram_received(calm, (PROXY.host, PROXY.port))
    udp.datagram_received(invite(), (PROXY.host, PROXY.port))  # the proxy's own
    # The flooding caller is banned after its limit; the proxy, and the calm caller behind it,
    # are not: their messages still reach the core, from the proxy's address.
    assert banned == ["192.0.2.66"]
    assert set(pike.banned) == {"192.0.2.66"}
    assert [data for data, _ in fed] == [flood] * 3 + [calm, invite()]
    assert {peer for _, peer in fed} == {PROXY}
    assert udp.dropped == 3


def test_udp_without_trusted_proxies_counts_the_packet_source() -> None:
    pike = Pike(PikeConfig(window=10.0, limit=2, ban=60.0))
    fed: list[bytes] = []
    udp = UdpTransport(lambda data, peer: fed.append(data), lambda: None, Guard(pike=pike))
    for _ in range(3):
        # A header from a source that is no trusted proxy changes nothing.
        udp.datagram_received(invite("192.0.2.10:5062"), ("198.51.100.66", 5060))
    assert set(pike.banned) == {"198.51.100.66"}
    assert len(fed) == 2


async def test_tcp_a_proxys_connection_stays_while_a_caller_behind_it_is_banned() -> None:
    proxy_host = "127.0.0.2"
    trust = ProxyTrust([proxy_host])
    pike = Pike(PikeConfig(window=10.0, limit=3, ban=60.0), trusted=trust.trusts)
    fed: list[bytes] = []
    banned: list[str] = []
    loop = asyncio.get_running_loop()
    hub = TcpHub(loop, lambda data, peer: fed.append(data), lambda: None,
                 guard=Guard(pike=pike, on_ban=banned.append, trusted=trust.trusts,
                             identity=trust.identity),
                 limits=ConnLimits())
    server = await loop.create_server(hub.factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port,
                                             local_addr=(proxy_host, 0))
    try:
        flood = invite("192.0.2.66:5060").replace(b"UDP", b"TCP")
        calm = invite("192.0.2.10:5062").replace(b"UDP", b"TCP")
        writer.write(flood * 6 + calm)
        await writer.drain()
        deadline = loop.time() + 3.0
        while len(fed) < 4 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # The flooder's fourth message banned it and its later ones were dropped one by one;
        # the proxy's connection is still open and carries the calm caller's INVITE.
        assert fed == [flood] * 3 + [calm]
        assert banned == ["192.0.2.66"]
        assert hub.stats.dropped == 3
        assert hub.stats.open == 1
        writer.write(calm)
        await writer.drain()
        deadline = loop.time() + 3.0
        while len(fed) < 5 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert fed[-1] == calm
    finally:
        writer.close()
        hub.close()
        server.close()
