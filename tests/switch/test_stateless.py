"""Stateless answers built from raw bytes (switch/stateless.py): what they copy, the To tag a
retransmission gets again, and every request left to the core."""

from __future__ import annotations

import pytest

from switch.message import SipResponse, parse_message
from switch.peer import Peer
from switch.stateless import answer, has_credentials

PEER = Peer("udp", "198.51.100.7", 5099)
KEY = b"k" * 32
INVITE = (
    b"INVITE sip:+18005550100@192.0.2.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKaaa;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKbbb\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:+13125550199@10.0.0.5>;tag=abc\r\n"
    b"To: <sip:+18005550100@192.0.2.1>\r\n"
    b"Call-ID: call-1@10.0.0.5\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def refuse(data: bytes, peer: Peer = PEER) -> bytes | None:
    return answer(data, peer, 403, "Forbidden", [("Reason", 'SIP;cause=403;text="x"')], KEY)


def parsed(data: bytes | None) -> SipResponse:
    assert data is not None
    msg = parse_message(data)
    assert isinstance(msg, SipResponse)
    return msg


def test_the_answer_copies_what_rfc_3261_says_and_fills_rport() -> None:
    resp = parsed(refuse(INVITE))
    assert resp.status == 403
    assert resp.headers.get_list("via") == [
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKaaa;received=198.51.100.7;rport=5099",
        "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKbbb",
    ]
    assert resp.headers.get("from") == "<sip:+13125550199@10.0.0.5>;tag=abc"
    assert resp.headers.get("call-id") == "call-1@10.0.0.5"
    assert resp.headers.get("cseq") == "7 INVITE"
    assert resp.headers.get("reason") == 'SIP;cause=403;text="x"'
    assert resp.headers.get("content-length") == "0"
    assert resp.to_tag is not None and len(resp.to_tag) == 16


def test_a_retransmission_gets_the_same_to_tag_and_another_request_another() -> None:
    """RFC 3261 §8.2.7: a stateless UAS answers a retransmission with the same tag."""
    first = parsed(refuse(INVITE)).to_tag
    assert parsed(refuse(INVITE)).to_tag == first
    other = parsed(refuse(INVITE.replace(b"call-1@", b"call-2@"))).to_tag
    assert other != first
    keyed = answer(INVITE, PEER, 403, "Forbidden", [], b"other key")
    assert parsed(keyed).to_tag != first


def test_compact_header_names_are_understood() -> None:
    compact = (INVITE.replace(b"\r\nVia:", b"\r\nv:").replace(b"\r\nFrom:", b"\r\nf:")
               .replace(b"\r\nTo:", b"\r\nt:").replace(b"\r\nCall-ID:", b"\r\ni:"))
    resp = parsed(refuse(compact))
    assert resp.headers.get("call-id") == "call-1@10.0.0.5"
    assert len(resp.headers.get_list("via")) == 2


def test_without_rport_the_via_is_copied_as_it_came() -> None:
    data = INVITE.replace(b";rport\r\n", b"\r\n")
    assert parsed(refuse(data)).headers.get_list("via")[0] == (
        "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKaaa"
    )


@pytest.mark.parametrize(
    "data",
    [
        INVITE.replace(b"To: <sip:+18005550100@192.0.2.1>", b"To: <sip:x@y>;tag=1"),
        INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: 7 OPTIONS"),
        INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: seven INVITE"),
        INVITE.replace(b"Call-ID: call-1@10.0.0.5\r\n", b""),
        INVITE.replace(b"Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKbbb\r\n", b"")
        .replace(b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKaaa;rport\r\n", b""),
        INVITE.replace(b"Call-ID: call-1@10.0.0.5\r\n", b"Call-ID: a\r\nCall-ID: b\r\n"),
        INVITE.replace(b"From: <sip:+13125550199@10.0.0.5>;tag=abc\r\n",
                       b"From: <sip:+13125550199@10.0.0.5>\r\n ;tag=abc\r\n"),
        INVITE.replace(b"To: <sip:+18005550100@192.0.2.1>\r\n",
                       b"To: <sip:+18005550100@192.0.2.1>\nX: ;tag=1\r\n"),
        INVITE.replace(b"\r\n\r\n", b"\r\n"),
        INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards 70"),
    ],
    ids=["to-tag", "not-invite", "bad-cseq", "no-call-id", "no-via", "two-call-ids",
         "folded", "bare-lf", "no-blank-line", "no-colon"],
)
def test_anything_but_a_plain_initial_invite_is_left_to_the_core(data: bytes) -> None:
    assert refuse(data) is None


def test_credentials_are_seen_in_the_header_section_only() -> None:
    assert not has_credentials(INVITE)
    assert has_credentials(INVITE.replace(b"Max-Forwards", b"Authorization: Digest x\r\nMax-Forwards"))
    assert has_credentials(INVITE.replace(b"Max-Forwards", b"proxy-authorization : x\r\nMax-Forwards"))
    assert not has_credentials(INVITE.replace(b"v=0\n", b"\nAuthorization: x"))
