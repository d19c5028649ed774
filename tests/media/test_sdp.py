"""SDP parse/rewrite tables (media/sdp.py).

Captures in tests/media/data: ``baresip_offer.sdp`` (baresip 1.0.0 INVITE), ``linphone_offer.sdp``
(linphonec 5.1 INVITE; c= is its default-route address), ``sipp_answer.sdp`` (SIPp 3.6.1 UAS
200 OK) were recorded on this machine with ``sipp -trace_msg``; ``sipp_offer.sdp`` is SIPp's
built-in UAC body with its placeholders filled; ``chrome_like_offer.sdp`` follows Chrome's
offer layout (ICE, DTLS, BUNDLE, rtcp-mux; no browser here to capture one).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media import sdp
from media.errors import InvalidStateError, SdpError
from media.sdp import LegOrigin, MediaEndpoint

DATA = Path(__file__).parent / "data"
SWITCH_IP = "203.0.113.10"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def body(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def origin() -> LegOrigin:
    return LegOrigin.create(random.Random(7))


def lines_of(raw: bytes) -> list[str]:
    return raw.decode("latin-1").split("\r\n")[:-1]


CAPTURES = {
    "baresip": ("baresip_offer.sdp", "127.0.0.1", 31000),
    "linphone": ("linphone_offer.sdp", "192.0.2.2", 7078),
    "sipp-uac": ("sipp_offer.sdp", "192.0.2.50", 6000),
    "sipp-uas": ("sipp_answer.sdp", "127.0.0.1", 6000),
    "chrome-like": ("chrome_like_offer.sdp", "198.51.100.7", 54321),
}


# -------------------------------------------------------------------------------- parse


@pytest.mark.parametrize(("name", "ip", "port"), CAPTURES.values(), ids=CAPTURES.keys())
def test_parse_captures(name: str, ip: str, port: int) -> None:
    sd = sdp.parse(load(name))
    assert len(sd.media) == 1
    m = sd.media[0]
    assert (m.media, m.port) == ("audio", port)
    conn = sd.connection_for(m)
    assert conn is not None and conn.address == ip
    assert sdp.media_endpoints(sd)[0].ip == ip


def test_parse_baresip_codecs_and_attributes() -> None:
    sd = sdp.parse(load("baresip_offer.sdp"))
    m = sd.media[0]
    assert m.formats == ("0", "8", "101")
    assert m.rtpmap() == {"0": "PCMU/8000", "8": "PCMA/8000", "101": "telephone-event/8000"}
    assert m.attributes("fmtp") == ["101 0-15"]
    assert sd.direction_for(m) == "sendrecv"
    assert sdp.media_endpoints(sd) == [MediaEndpoint("127.0.0.1", 31000, 31001, "sendrecv")]


def test_parse_chrome_like() -> None:
    sd = sdp.parse(load("chrome_like_offer.sdp"))
    m = sd.media[0]
    assert sd.connection is None and m.connection is not None
    assert m.rtcp_mux and m.has_candidates
    assert m.rtcp is not None and m.rtcp[0] == 9
    assert m.proto == "UDP/TLS/RTP/SAVPF" and m.is_rtp
    # a=rtcp says port 9 (Chrome's placeholder): media_endpoints reports what SDP says.
    assert sdp.media_endpoints(sd)[0] == MediaEndpoint("198.51.100.7", 54321, 9, "sendrecv")


def test_parse_accepts_lf_only_and_blank_lines() -> None:
    raw = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\n\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n\n"
    sd = sdp.parse(raw)
    assert sd.media[0].port == 4000


def test_session_without_media() -> None:
    sd = sdp.parse(body("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0"))
    assert sd.media == [] and sd.connection is None
    assert sdp.media_endpoints(sd) == []
    assert sdp.relay_index(sd) is None
    out = sdp.rewrite(sd, SWITCH_IP, [], origin())
    assert sdp.parse(out).media == []


def test_media_level_direction_overrides_session() -> None:
    sd = sdp.parse(
        body(
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "a=sendonly",
            "m=audio 4000 RTP/AVP 0",
            "m=audio 4002 RTP/AVP 0",
            "a=inactive",
        )
    )
    assert [e.direction for e in sdp.media_endpoints(sd)] == ["sendonly", "inactive"]


def test_rtcp_port_forms() -> None:
    sd = sdp.parse(
        body(
            "v=0",
            "o=- 1 1 IN IP4 192.0.2.1",
            "s=-",
            "c=IN IP4 192.0.2.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0",
            "a=rtcp:4555",
            "m=audio 5000 RTP/AVP 0",
            "a=rtcp:5111 IN IP4 192.0.2.9",
            "m=audio 6000 RTP/AVP 0",
        )
    )
    assert [(e.rtp_port, e.rtcp_port) for e in sdp.media_endpoints(sd)] == [
        (4000, 4555),
        (5000, 5111),
        (6000, 6001),
    ]
    assert sd.media[1].rtcp == (5111, sdp.Connection("IN", "IP4", "192.0.2.9"))


BAD = {
    "empty": (b"", "empty"),
    "whitespace": (b"\r\n \r\n", "empty"),
    "no v": (body("o=- 1 1 IN IP4 192.0.2.1", "s=-"), "v=0"),
    "v=1": (body("v=1", "o=- 1 1 IN IP4 192.0.2.1"), "v=0"),
    "second v": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "v=0"), "second v="),
    "no o": (body("v=0", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"), "no o="),
    "short o": (body("v=0", "o=- 1 IN IP4 192.0.2.1"), "bad o="),
    "two o": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "o=- 1 1 IN IP4 1.2.3.4"), "second o="),
    "garbage line": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "hello world"), "line 3"),
    "upper type": (body("v=0", "O=- 1 1 IN IP4 1.2.3.4"), "line 2"),
    "binary": (b"v=0\r\n\x00\x01\x02\r\n", "line 2"),
    "no c": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0", "m=audio 4000 RTP/AVP 0"), "c="),
    "bad c nettype": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=ATM NSAP 1"), "c="),
    "bad c fields": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4"), "c="),
    "m port text": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "m=audio x RTP/AVP 0"), "port"),
    "m port big": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "m=audio 70000 RTP/AVP 0"), "port"),
    "m port unicode": (
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4²00 RTP/AVP 0\r\n".encode("latin-1"),
        "port",
    ),
    "m short": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "m=audio 4000"), "m= line 1"),
    "m no formats": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "m=audio 4000 RTP/AVP"), "formats"),
    "m bad count": (body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "m=audio 4000/x RTP/AVP 0"), "count"),
    "bad a=rtcp": (
        body(
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "c=IN IP4 1.2.3.4",
            "m=audio 4000 RTP/AVP 0",
            "a=rtcp:x",
        ),
        "a=rtcp",
    ),
    "a=rtcp 3 fields": (
        body(
            "v=0",
            "o=- 1 1 IN IP4 1.2.3.4",
            "c=IN IP4 1.2.3.4",
            "m=audio 4 RTP/AVP 0",
            "a=rtcp:5 IN",
        ),
        "a=rtcp",
    ),
    "too large": (b"v=0\r\n" + b"a=x\r\n" * 20000, "exceeds"),
    "too many m": (
        body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "c=IN IP4 1.2.3.4", *["m=audio 0 RTP/AVP 0"] * 40),
        "more than",
    ),
}


@pytest.mark.parametrize(("raw", "reason"), BAD.values(), ids=BAD.keys())
def test_parse_rejects(raw: bytes, reason: str) -> None:
    with pytest.raises(SdpError) as info:
        sdp.parse(raw)
    assert info.value.status == 488
    assert reason in info.value.reason


def test_port_zero_stream_needs_no_connection() -> None:
    sd = sdp.parse(body("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0", "m=video 0 RTP/AVP"))
    assert sd.media[0].port == 0 and sd.media[0].formats == ()
    assert sdp.media_endpoints(sd)[0].rtp_port == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_raises_only_sdp_error(raw: bytes) -> None:
    try:
        sdp.parse(raw)
    except SdpError:
        pass


_LINE = st.sampled_from(
    [
        "c=IN IP4 192.0.2.1",
        "c=IN IP4 0.0.0.0",
        "c=IN IP6 ::",
        "m=audio 4000 RTP/AVP 0 8 101",
        "m=audio 0 RTP/AVP 0",
        "m=video 5000 RTP/AVP 96",
        "a=rtcp:4001",
        "a=rtcp:4001 IN IP4 192.0.2.1",
        "a=rtcp-mux",
        "a=sendonly",
        "a=inactive",
        "a=candidate:1 1 udp 1 192.0.2.9 4000 typ host",
        "a=ice-ufrag:x",
        "a=rtpmap:101 telephone-event/8000",
        "a=x-unknown:whatever",
        "s=-",
        "t=0 0",
        "b=AS:64",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=14))
def test_rewrite_of_anything_parseable_parses_and_hides_peer(extra: list[str]) -> None:
    raw = body("v=0", "o=- 1 1 IN IP4 192.0.2.1", *extra)
    try:
        sd = sdp.parse(raw)
    except SdpError:
        return
    ports = [30000 + 2 * i for i in range(len(sd.media))]
    out = sdp.rewrite(sd, SWITCH_IP, ports, origin())
    again = sdp.parse(out)
    assert len(again.media) == len(sd.media)
    assert b"192.0.2" not in out
    assert b"candidate" not in out and b"ice-" not in out


# -------------------------------------------------------------------------------- rewrite


@pytest.mark.parametrize(("name", "ip", "port"), CAPTURES.values(), ids=CAPTURES.keys())
def test_rewrite_captures(name: str, ip: str, port: int) -> None:
    raw = load(name)
    before = sdp.parse(raw)
    out = sdp.rewrite(raw, SWITCH_IP, [40000], origin())
    after = sdp.parse(out)
    text = out.decode("latin-1")
    # Nothing that routes to the peer survives (its address in o=, c=, a=rtcp, candidates).
    if ip != "127.0.0.1":
        assert ip not in text
    assert "192.168.1.20" not in text
    m = after.media[0]
    assert m.port == 40000
    assert sdp.media_endpoints(after)[0].ip == SWITCH_IP
    assert after.origin.address == SWITCH_IP and after.origin.username == "dce"
    # Codecs, fmtp, direction and unknown attributes pass through in order, byte for byte.
    kept = [
        line
        for line in lines_of(raw)
        if line[:2] not in ("o=", "c=", "m=")
        and not line.startswith(("a=candidate", "a=ice-", "a=rtcp:"))
    ]
    assert [line for line in lines_of(out) if line in kept] == kept
    assert m.formats == before.media[0].formats
    assert m.rtpmap() == before.media[0].rtpmap()
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")


def test_rewrite_chrome_like_drops_ice_and_rewrites_rtcp() -> None:
    out = sdp.rewrite(load("chrome_like_offer.sdp"), SWITCH_IP, [40000], origin())
    text = out.decode()
    assert "a=candidate" not in text and "a=ice-ufrag" not in text and "a=ice-pwd" not in text
    assert f"a=rtcp:40001 IN IP4 {SWITCH_IP}\r\n" in text
    assert "a=rtcp-mux\r\n" in text  # negotiated end to end
    assert "a=fingerprint:sha-256" in text and "a=setup:actpass" in text
    sd = sdp.parse(out)
    assert sdp.media_endpoints(sd)[0] == MediaEndpoint(SWITCH_IP, 40000, 40001, "sendrecv")


def test_rewrite_rtcp_port_only_form_kept() -> None:
    raw = load("linphone_offer.sdp").replace(
        b"a=rtcp-fb:* trr-int", b"a=rtcp:7079\r\na=rtcp-fb:* trr-int"
    )
    out = sdp.rewrite(raw, SWITCH_IP, [40000], origin())
    assert b"a=rtcp:40001\r\n" in out


def test_rewrite_keeps_telephone_event_and_unknown_attributes() -> None:
    raw = body(
        "v=0",
        "o=carrier 99 99 IN IP4 192.0.2.1",
        "s=call",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "a=x-carrier-private:abc=1;def",
        "m=audio 4000 RTP/AVP 8 0 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=maxptime:40",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "a=x-weird",
    )
    out = sdp.rewrite(raw, SWITCH_IP, [40000], origin())
    assert lines_of(out)[2:] == [
        "s=call",
        f"c=IN IP4 {SWITCH_IP}",
        "t=0 0",
        "a=x-carrier-private:abc=1;def",
        "m=audio 40000 RTP/AVP 8 0 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=maxptime:40",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "a=x-weird",
    ]


def test_rewrite_non_ascii_session_name_round_trips() -> None:
    raw = body(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=Ça coûte 5 € à Zürich", "c=IN IP4 192.0.2.1", "t=0 0"
    )
    out = sdp.rewrite(raw, SWITCH_IP, [], origin())
    assert "s=Ça coûte 5 € à Zürich\r\n".encode() in out


HOLD = {
    # RFC 3264 §8.4 / RFC 2543 hold: c=0.0.0.0 kept, direction unchanged, port is ours.
    "c=0.0.0.0 session": (
        ["c=IN IP4 0.0.0.0", "t=0 0", "m=audio 4000 RTP/AVP 0"],
        ["c=IN IP4 0.0.0.0", "t=0 0", "m=audio 40000 RTP/AVP 0"],
        "sendonly",
    ),
    "c=0.0.0.0 media, recvonly": (
        [
            "t=0 0",
            "m=audio 4000 RTP/AVP 0",
            "c=IN IP4 0.0.0.0",
            "a=recvonly",
            "a=rtcp:4001 IN IP4 0.0.0.0",
        ],
        [
            "t=0 0",
            "m=audio 40000 RTP/AVP 0",
            "c=IN IP4 0.0.0.0",
            "a=recvonly",
            "a=rtcp:40001 IN IP4 0.0.0.0",
        ],
        "inactive",
    ),
    "a=sendonly": (
        ["c=IN IP4 192.0.2.1", "t=0 0", "m=audio 4000 RTP/AVP 0", "a=sendonly"],
        [f"c=IN IP4 {SWITCH_IP}", "t=0 0", "m=audio 40000 RTP/AVP 0", "a=sendonly"],
        "sendonly",
    ),
    "a=inactive session level": (
        ["c=IN IP4 192.0.2.1", "t=0 0", "a=inactive", "m=audio 4000 RTP/AVP 0"],
        [f"c=IN IP4 {SWITCH_IP}", "t=0 0", "a=inactive", "m=audio 40000 RTP/AVP 0"],
        "inactive",
    ),
    "ICE placeholder is not hold": (
        [
            "t=0 0",
            "m=audio 9 RTP/AVP 0",
            "c=IN IP4 0.0.0.0",
            "a=candidate:1 1 udp 1 192.0.2.9 4000 typ host",
        ],
        ["t=0 0", "m=audio 40000 RTP/AVP 0", f"c=IN IP4 {SWITCH_IP}"],
        "sendrecv",
    ),
}


@pytest.mark.parametrize(("given_lines", "expected", "direction"), HOLD.values(), ids=HOLD.keys())
def test_hold(given_lines: list[str], expected: list[str], direction: str) -> None:
    raw = body("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", *given_lines)
    sd = sdp.parse(raw)
    assert sdp.media_endpoints(sd)[0].direction == direction
    out = sdp.rewrite(sd, SWITCH_IP, [40000], origin())
    assert lines_of(out)[3:] == expected
    # The held form survives a second pass (the other leg's answer is rewritten the same way).
    assert sdp.media_endpoints(sdp.parse(out))[0].direction == direction


def test_hold_with_ipv6_switch_uses_unspecified_of_its_family() -> None:
    raw = body(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 4 RTP/AVP 0"
    )
    out = sdp.rewrite(raw, "2001:db8::10", [40000], origin())
    assert b"c=IN IP6 ::\r\n" in out
    assert b"o=dce " in out and b" IN IP6 2001:db8::10\r\n" in out


def test_rewrite_ipv6() -> None:
    raw = body(
        "v=0",
        "o=- 1 1 IN IP6 2001:db8::1",
        "s=-",
        "c=IN IP6 2001:db8::1",
        "t=0 0",
        "m=audio 4 RTP/AVP 0",
    )
    out = sdp.rewrite(raw, "2001:db8::10", [40000], origin())
    assert b"c=IN IP6 2001:db8::10\r\n" in out and b"2001:db8::1\r\n" not in out


def test_port_zero_stays_zero_and_ports_zero_disables() -> None:
    raw = body(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "a=rtcp:4001",
        "m=video 0 RTP/AVP 96",
        "m=video 5000 RTP/AVP 96",
        "a=rtcp:5001",
        "m=image 6000 udptl t38",
    )
    sd = sdp.parse(raw)
    index = sdp.relay_index(sd)
    assert index == 0
    ports = sdp.plan_ports(sd, 40000, index)
    assert ports == [40000, 0, 0, 0]
    out = sdp.rewrite(sd, SWITCH_IP, [40000, 40002, 0, 0], origin())
    after = sdp.parse(out)
    assert [m.port for m in after.media] == [40000, 0, 0, 0]  # input port 0 stays 0
    assert after.media[0].rtcp == (40001, None)
    assert after.media[2].rtcp is None  # a disabled stream announces no RTCP
    assert b"192.0.2.1" not in out


def test_rewrite_wrong_port_count_is_our_bug() -> None:
    with pytest.raises(InvalidStateError):
        sdp.rewrite(load("sipp_offer.sdp"), SWITCH_IP, [1, 2], origin())


def test_rewrite_inserts_missing_s_and_t() -> None:
    raw = body(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "c=IN IP4 192.0.2.1", "a=tool:x", "m=audio 4 RTP/AVP 0"
    )
    out = lines_of(sdp.rewrite(raw, SWITCH_IP, [40000], origin()))
    assert out[2:6] == ["s=-", f"c=IN IP4 {SWITCH_IP}", "t=0 0", "a=tool:x"]


def test_rewrite_drops_port_count_and_session_level_leaks() -> None:
    raw = body(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 224.2.1.1/127/3",
        "t=0 0",
        "a=ice-lite",
        "a=candidate:1 1 udp 1 192.0.2.9 4000 typ host",
        "m=audio 4000/2 RTP/AVP 0",
    )
    out = sdp.rewrite(raw, SWITCH_IP, [40000], origin())
    assert b"m=audio 40000 RTP/AVP 0\r\n" in out
    assert b"224.2.1.1" not in out and b"ice-lite" not in out and b"192.0.2.9" not in out


# -------------------------------------------------------------------------------- o= line


def test_leg_origin_bumps_only_on_change() -> None:
    leg = LegOrigin.create(random.Random(1))
    first = sdp.parse(sdp.rewrite(load("baresip_offer.sdp"), SWITCH_IP, [40000], leg)).origin
    same = sdp.parse(sdp.rewrite(load("baresip_offer.sdp"), SWITCH_IP, [40000], leg)).origin
    assert same == first  # RFC 3264 §8: unchanged SDP, unchanged version
    held = load("baresip_offer.sdp").replace(b"a=sendrecv", b"a=sendonly")
    second = sdp.parse(sdp.rewrite(held, SWITCH_IP, [40000], leg)).origin
    assert second.sess_id == first.sess_id
    assert int(second.sess_version) == int(first.sess_version) + 1
    third = sdp.parse(sdp.rewrite(load("baresip_offer.sdp"), SWITCH_IP, [40000], leg)).origin
    assert int(third.sess_version) == int(first.sess_version) + 2


def test_leg_origins_differ_per_leg() -> None:
    rng = random.Random(3)
    a, b = LegOrigin.create(rng), LegOrigin.create(rng)
    assert a.sess_id != b.sess_id


def test_peer_origin_changes_alone_do_not_bump() -> None:
    # The peer bumped its own version but nothing we present changed: same version for us.
    leg = LegOrigin.create(random.Random(1))
    one = sdp.rewrite(load("sipp_offer.sdp"), SWITCH_IP, [40000], leg)
    two = sdp.rewrite(
        load("sipp_offer.sdp").replace(b"2353687637", b"2353687638"), SWITCH_IP, [40000], leg
    )
    assert one == two


# -------------------------------------------------------------------------------- helpers


def test_relay_index_prefers_previous() -> None:
    raw = body(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0",
        "m=audio 4002 RTP/AVP 0",
        "m=audio 0 RTP/AVP 0",
        "m=image 4004 udptl t38",
    )
    sd = sdp.parse(raw)
    assert sdp.relay_index(sd) == 0
    assert sdp.relay_index(sd, prefer=1) == 1
    assert sdp.relay_index(sd, prefer=2) == 0  # disabled: fall back
    assert sdp.relay_index(sd, prefer=3) == 0  # not RTP audio
    assert sdp.relay_index(sd, prefer=9) == 0


# Documentation ranges (192.0.2/24, 203.0.113/24) are not global, so "public" here uses
# addresses that are.
PUBLIC_SWITCH = "93.184.216.34"
PUBLIC_PEER = "151.101.1.69"
USABLE = {
    "public peer, public switch": (PUBLIC_PEER, PUBLIC_SWITCH, True),
    "private peer, public switch (NAT)": ("192.168.1.20", PUBLIC_SWITCH, False),
    "cgnat peer, public switch": ("100.64.1.1", PUBLIC_SWITCH, False),
    "private peer, private switch": ("10.0.0.5", "10.0.0.1", True),
    "public peer, private switch": (PUBLIC_PEER, "10.0.0.1", True),
    "loopback": ("127.0.0.1", "127.0.0.1", True),
    "unspecified": ("0.0.0.0", PUBLIC_SWITCH, False),
    "multicast": ("224.0.0.1", PUBLIC_SWITCH, False),
    "host name": ("pbx.example.com", PUBLIC_SWITCH, False),
    "empty": ("", PUBLIC_SWITCH, False),
    "family mismatch": ("2001:db8::1", PUBLIC_SWITCH, False),
}


@pytest.mark.parametrize(("ip", "ours", "usable"), USABLE.values(), ids=USABLE.keys())
def test_is_usable_address(ip: str, ours: str, usable: bool) -> None:
    assert sdp.is_usable_address(ip, ours) is usable
