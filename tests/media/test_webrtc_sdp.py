"""The SDP of a WebRTC call (media/webrtc_sdp.py): offer checks, the buyer's SDP, what each
side is given. Captures: tests/media/webrtc_offers.py."""

from __future__ import annotations

import random

import pytest

from media import sdp
from media.errors import SdpError
from media.webrtc_sdp import (
    LocalIce,
    Role,
    browser_sdp,
    buyer_sdp,
    parse_buyer,
    parse_offer,
    toward_browser,
)
from tests.media.webrtc_offers import CHROME_OFFER, UNUSABLE_OFFERS

# ------------------------------------------------------------------------- the offer


def test_chrome_offer_is_answered_with_pcmu_and_its_telephone_event() -> None:
    offer = parse_offer(CHROME_OFFER)
    assert (offer.codec, offer.codec_pt, offer.te_pt) == ("PCMU", 0, 126)
    assert offer.mid == "0" and offer.bundle and offer.role.value == "active"
    assert offer.ice_ufrag == "4dEz" and len(offer.fingerprints) == 1
    assert len(offer.candidates) == 8


@pytest.mark.parametrize(("body", "words"), UNUSABLE_OFFERS)
def test_unusable_offers_get_488(body: bytes, words: str) -> None:
    with pytest.raises(SdpError) as exc:
        parse_offer(body)
    assert exc.value.status == 488 and words in exc.value.reason


def test_setup_active_offer_makes_us_passive() -> None:
    offer = parse_offer(CHROME_OFFER.replace(b"a=setup:actpass", b"a=setup:active"))
    assert offer.role.value == "passive"


# ------------------------------------------------------------------------- the buyer's SDP


def buyer_body(*media: str) -> bytes:
    head = ["v=0", "o=b 1 1 IN IP4 198.51.100.7", "s=-", "c=IN IP4 198.51.100.7", "t=0 0"]
    return ("\r\n".join([*head, *media]) + "\r\n").encode()


def test_buyer_answer_gives_address_codec_and_telephone_event() -> None:
    buyer = parse_buyer(
        buyer_body(
            "m=audio 30000 RTP/AVP 8 101",
            "a=rtpmap:101 telephone-event/8000",
            "a=recvonly",
        )
    )
    assert (buyer.ip, buyer.port) == ("198.51.100.7", 30000)
    assert (buyer.codec, buyer.codec_pt, buyer.te_pt) == ("PCMA", 8, 101)
    assert buyer.direction == "recvonly"


def test_buyer_without_g711_gets_488() -> None:
    with pytest.raises(SdpError) as exc:
        parse_buyer(buyer_body("m=audio 30000 RTP/AVP 18", "a=rtpmap:18 G729/8000"))
    assert exc.value.status == 488 and "PCMU/PCMA" in exc.value.reason


@pytest.mark.parametrize(
    ("browser", "buyer", "expected"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),  # the browser holds: we only listen to it
        ("sendrecv", "sendonly", "sendonly"),  # the buyer holds: we only talk to the browser
        ("sendonly", "sendonly", "inactive"),
        ("inactive", "sendrecv", "inactive"),
    ],
)
def test_direction_toward_the_browser_is_where_both_agree(
    browser: str, buyer: str, expected: str
) -> None:
    assert toward_browser(browser, buyer) == expected


# ------------------------------------------------------------------------- what each side gets

LOCAL = LocalIce(
    address="203.0.113.10",
    port=40000,
    ufrag="dceU",
    pwd="0123456789abcdefghijkl",
    fingerprints=(("sha-256", "AA:BB"),),
    candidates=("1 1 udp 2130706431 203.0.113.10 40000 typ host",),
    ssrc=1234,
)


def origin() -> sdp.LegOrigin:
    return sdp.LegOrigin.create(random.Random(7))


def test_browser_answer_is_a_webrtc_sdp_with_our_ice_and_dtls() -> None:
    offer = parse_offer(CHROME_OFFER)
    answer = browser_sdp(offer, LOCAL, "sendrecv", "call-1", origin())
    text = answer.decode()
    assert "m=audio 40000 UDP/TLS/RTP/SAVPF 0 126\r\n" in text
    assert "a=setup:active\r\n" in text and "a=fingerprint:sha-256 AA:BB\r\n" in text
    assert "a=candidate:1 1 udp 2130706431 203.0.113.10 40000 typ host\r\n" in text
    assert "a=group:BUNDLE 0\r\n" in text and "a=ssrc:1234 cname:dce\r\n" in text
    # The answer passes the checks an offer does; its setup role is the mirror of ours.
    seen = parse_offer(answer)
    assert (seen.ice_ufrag, seen.ice_pwd) == ("dceU", "0123456789abcdefghijkl")
    assert (seen.codec, seen.te_pt, seen.role) == ("PCMU", 126, Role.PASSIVE)


def test_browser_answer_refuses_other_streams_with_port_0() -> None:
    video = b"m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    offer = parse_offer(CHROME_OFFER + video)
    lines = browser_sdp(offer, LOCAL, "sendrecv", "call-1", origin()).decode().split("\r\n")
    assert [line for line in lines if line.startswith("m=")] == [
        "m=audio 40000 UDP/TLS/RTP/SAVPF 0 126",
        "m=video 0 UDP/TLS/RTP/SAVPF 96",
    ]


def test_buyer_offer_puts_the_browser_codec_first() -> None:
    offer = parse_offer(CHROME_OFFER)
    body = buyer_sdp(
        offer, media_ip="203.0.113.10", port=30002, direction="sendrecv", origin=origin()
    )
    assert b"m=audio 30002 RTP/AVP 0 8 101\r\n" in body
    pcma = parse_offer(CHROME_OFFER.replace(b" 111 63 9 0 8 ", b" 111 63 9 8 0 "))
    body = buyer_sdp(
        pcma, media_ip="203.0.113.10", port=30002, direction="sendrecv", origin=origin()
    )
    assert b"m=audio 30002 RTP/AVP 8 0 101\r\n" in body
    buyer = parse_buyer(body)
    assert (buyer.ip, buyer.port, buyer.codec, buyer.te_pt) == ("203.0.113.10", 30002, "PCMA", 101)


def test_answer_to_a_buyer_reoffer_keeps_its_codec_and_bumps_the_version() -> None:
    offer = parse_offer(CHROME_OFFER)
    buyer = parse_buyer(
        buyer_body("m=audio 30000 RTP/AVP 8 96", "a=rtpmap:96 telephone-event/8000")
    )
    o = origin()
    first = buyer_sdp(offer, media_ip="203.0.113.10", port=30002, direction="sendrecv", origin=o)
    answer = buyer_sdp(
        offer, media_ip="203.0.113.10", port=30002, direction="recvonly", origin=o, answer_to=buyer
    )
    text = answer.decode()
    assert "m=audio 30002 RTP/AVP 8 96\r\n" in text and "a=recvonly\r\n" in text
    assert "a=rtpmap:96 telephone-event/8000\r\n" in text
    # RFC 3264 §8: same session id, version one up.
    before, after = sdp.parse(first).origin, sdp.parse(answer).origin
    assert before is not None and after is not None
    assert after.sess_id == before.sess_id
    assert int(after.sess_version) == int(before.sess_version) + 1
