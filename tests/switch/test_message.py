"""SIP message parsing and serialisation (RFC 3261 §7, §20, §25; RFC 4475-style cases)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.errors import SipParseError
from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.uri import NameAddr, SipUri, Via

BASE = (
    "INVITE sip:+18005550100@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-abc;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:2125551234@127.0.0.1>;tag=f1\r\n"
    "To: <sip:+18005550100@127.0.0.1>\r\n"
    "Call-ID: c1@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 4\r\n"
    "\r\n"
    "v=0\n"
)


def test_parses_a_plain_invite() -> None:
    msg = parse_message(BASE.encode())
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:+18005550100@127.0.0.1:5060"
    assert msg.call_id == "c1@127.0.0.1"
    assert msg.cseq == (1, "INVITE")
    assert msg.via.branch == "z9hG4bK-abc"
    assert msg.via.transport == "UDP"
    assert msg.via.port == 5080
    assert msg.from_tag == "f1"
    assert msg.to_tag is None
    assert msg.body == b"v=0\n"


def test_compact_forms_case_insensitive_names_and_folding() -> None:
    raw = (
        "INVITE sip:bob@example.com SIP/2.0\r\n"
        "v: SIP/2.0/udp 192.0.2.1;branch=z9hG4bK1\r\n"
        "mAx-fOrWaRdS: 70\r\n"
        "f: Alice <sip:alice@example.com>\r\n"
        " ;tag=folded\r\n"
        "t: sip:bob@example.com\r\n"
        "i: compact@x\r\n"
        "cseq  :   7    INVITE\r\n"
        "Subject: one\r\n"
        "\ttwo\r\n"
        "l: 0\r\n\r\n"
    )
    msg = parse_message(raw.encode())
    assert msg.call_id == "compact@x"
    assert msg.from_tag == "folded"
    assert msg.headers.get("SUBJECT") == "one two"
    assert msg.via.transport == "UDP"
    assert msg.cseq == (7, "INVITE")


def test_multiple_values_in_one_header_and_repeated_headers() -> None:
    raw = BASE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK2, "
        "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK3\r\nRoute: <sip:p1;lr>, <sip:p2;lr>\r\n"
        "Route: <sip:p3;lr>\r\n",
    )
    msg = parse_message(raw.encode())
    assert len(msg.headers.get_list("via")) == 3
    assert msg.headers.get_list("route") == ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]
    assert msg.via.branch == "z9hG4bK-abc"  # the top one


def test_body_longer_than_content_length_is_cut() -> None:
    msg = parse_message(BASE.encode() + b"trailing junk")
    assert msg.body == b"v=0\n"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (BASE.replace("Call-ID: c1@127.0.0.1\r\n", ""), "Missing Call-ID"),
        (BASE.replace("CSeq: 1 INVITE\r\n", ""), "Missing CSeq"),
        (BASE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"), "does not match"),
        (BASE.replace("CSeq: 1 INVITE", "CSeq: x INVITE"), "Malformed CSeq"),
        (BASE.replace("Content-Length: 4", "Content-Length: 99"), "exceeds"),
        (BASE.replace("Content-Length: 4", "Content-Length: -1"), "Content-Length"),
        (BASE.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia", 1), "version"),
        (BASE.replace("Via: SIP/2.0/UDP", "Via: SIP/2.0"), "Via"),
        (BASE.replace("From: <sip:", "From <sip:"), "Malformed header"),
        ("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", "Truncated"),
        ("garbage\r\n\r\n", "request line"),
        ("", "Empty"),
        (BASE.replace("INVITE sip:+18005550100@127.0.0.1:5060", "INVITE <sip:x@h>"), "Request-URI"),
    ],
    ids=[
        "no-call-id",
        "no-cseq",
        "cseq-method",
        "cseq-number",
        "short-body",
        "negative-clen",
        "version",
        "via-proto",
        "no-colon",
        "no-blank-line",
        "garbage",
        "empty",
        "bracketed-uri",
    ],
)
def test_malformed_requests_raise_with_a_reason(raw: str, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw.encode())
    assert fragment.lower() in info.value.reason.lower()
    assert info.value.status in (400, 505)


def test_unsupported_request_uri_scheme_is_416() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(BASE.replace("INVITE sip:+18005550100@127.0.0.1:5060", "INVITE http://x")
                      .encode())
    assert info.value.status == 416
    assert info.value.reason == "Unsupported URI Scheme 'http'"


def test_oversized_message_is_513() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(BASE.encode() + b"x" * 70000)
    assert info.value.status == 513


def test_response_parses_and_roundtrips() -> None:
    req = parse_message(BASE.encode())
    assert isinstance(req, SipRequest)
    resp = make_response(req, 180, "Ringing", to_tag="t9")
    again = parse_message(resp.to_bytes())
    assert isinstance(again, SipResponse)
    assert again.status == 180
    assert again.to_tag == "t9"
    assert again.via.branch == "z9hG4bK-abc"
    assert again.cseq == (1, "INVITE")
    assert again.headers.get("Content-Length") == "0"


def test_serialisation_recomputes_content_length_and_uses_canonical_names() -> None:
    req = parse_message(BASE.encode())
    assert isinstance(req, SipRequest)
    req.body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    out = req.to_bytes().decode()
    assert f"Content-Length: {len(req.body)}\r\n" in out
    assert "Call-ID: c1@127.0.0.1\r\n" in out
    assert "CSeq: 1 INVITE\r\n" in out
    assert parse_message(req.to_bytes()).body == req.body


def test_uri_parameters_are_case_insensitive() -> None:
    uri = SipUri.parse("sip:127.0.0.1:5070;TRANSPORT=UDP;lr")
    assert uri.transport == "udp"
    assert uri.port == 5070
    assert uri.user is None
    assert SipUri.parse("sip:%2B1800@h").user_unescaped == "+1800"
    assert SipUri.parse("sips:b@h").transport == "tcp"
    assert SipUri.parse("sip:u@[2001:db8::1]:5061").host == "2001:db8::1"


@pytest.mark.parametrize(
    "text",
    ["http://x", "sip:", "sip:u@h:99999", "sip:u@[::1"],
    ids=["scheme", "empty", "port", "ipv6"],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        SipUri.parse(text)


def test_name_addr_quoted_display_with_escapes_and_addr_spec_params() -> None:
    na = NameAddr.parse('"A \\"quoted\\" name" <sip:a@h;transport=tcp>;tag=x;foo=BAR')
    assert na.display == 'A "quoted" name'
    assert na.uri == "sip:a@h;transport=tcp"
    assert na.tag == "x"
    assert na.params["foo"] == "BAR"
    bare = NameAddr.parse("sip:a@h;tag=y")  # addr-spec: ;tag belongs to the header
    assert bare.uri == "sip:a@h"
    assert bare.tag == "y"
    assert NameAddr.parse(str(na)).display == na.display


def test_via_received_rport_roundtrip() -> None:
    via = Via.parse("SIP/2.0/tcp client.example.com:5060;branch=z9hG4bK74b;RPORT")
    via.params["rport"] = "4321"
    via.params["received"] = "192.0.2.9"
    again = Via.parse(str(via))
    assert again.transport == "TCP"
    assert again.params == {"branch": "z9hG4bK74b", "rport": "4321", "received": "192.0.2.9"}


@given(st.binary(max_size=2000))
def test_garbage_never_raises_anything_but_parse_errors(data: bytes) -> None:
    try:
        parse_message(data)
    except SipParseError:
        pass


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_random_header_values_never_crash(value: str) -> None:
    raw = BASE.replace("Subject", "X").replace(
        "Max-Forwards: 70", f"Max-Forwards: 70\r\nX-Any: {value}"
    )
    try:
        msg = parse_message(raw.encode())
        msg.to_bytes()
    except SipParseError:
        pass


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("SIP/2.0 200 OK\r\nVia: garbage\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
         "Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n", "Via"),
        ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
         "To: <sip:c@d>\r\nCall-ID: x\r\nCSeq: one INVITE\r\n\r\n", "CSeq"),
        ("SIP/2.0 200 OK\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
         "Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n", "Via"),
    ],
    ids=["bad-via", "bad-cseq", "no-via"],
)
def test_malformed_responses_are_refused_at_parse(raw: str, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw.encode())
    assert fragment.lower() in info.value.reason.lower()


@pytest.mark.parametrize(
    ("text", "transport", "host", "port", "branch"),
    [
        ("SIP/2.0/UDP h:5060;branch=z9hG4bK1", "UDP", "h", 5060, "z9hG4bK1"),
        ("SIP / 2.0 / tcp  h : 5061 ; branch = z9hG4bK2 ; rport", "TCP", "h", 5061, "z9hG4bK2"),
        ("SIP/2.0/SCTP\th\t;branch=z9hG4bK3", "SCTP", "h", None, "z9hG4bK3"),
        ("SIP/2.0/X-NEW [2001:DB8::1]:7;branch=z9hG4bK4", "X-NEW", "2001:db8::1", 7, "z9hG4bK4"),
        ("SIP/2.0/UDP [::ffff:192.0.2.1];received=2001:db8::9;branch=z9hG4bK5", "UDP",
         "::ffff:192.0.2.1", None, "z9hG4bK5"),
    ],
    ids=["plain", "lws", "tabs-sctp", "ipv6-unknown-transport", "received-ipv6"],
)
def test_via_takes_what_the_abnf_allows(
    text: str, transport: str, host: str, port: int | None, branch: str
) -> None:
    via = Via.parse(text)
    assert (via.transport, via.host, via.port, via.branch) == (transport, host, port, branch)
    assert Via.parse(str(via)) == via


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0 h;branch=z", "SIP/2.0/UDP 2001:db8::1;branch=z", "SIP/2.0/UDP h:70000",
     "SIP/2.0/UDP ;branch=z", "SIP/2.0/UDP h:\u00b9", "SIP/2.0/UDP [1.2.3.4]"],
    ids=["two-fields", "bare-ipv6", "port", "no-host", "superscript-port", "bracketed-ipv4"],
)
def test_via_refuses_what_it_does_not(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_an_odd_via_protocol_survives_the_received_rewrite() -> None:
    via = Via.parse("ACME/7.1/UDP h;branch=z9hG4bKx")
    via.params["received"] = "192.0.2.1"
    assert str(via) == "ACME/7.1/UDP h;branch=z9hG4bKx;received=192.0.2.1"


def test_quoted_display_names_may_hold_separators_but_must_close() -> None:
    na = NameAddr.parse('"a <b>; c, d" <sip:x@y>;tag=t')
    assert (na.display, na.uri, na.tag) == ("a <b>; c, d", "sip:x@y", "t")
    with pytest.raises(SipParseError):
        NameAddr.parse('"Mr. J. User <sip:j@example.com>')
    with pytest.raises(SipParseError):
        NameAddr.parse('"name" sip:j@example.com')


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (BASE.replace("Call-ID: c1@127.0.0.1\r\n", "Call-ID: c1@127.0.0.1\r\ni: other\r\n"),
         "Conflicting Call-ID"),
        (BASE.replace("Content-Length: 4\r\n", "Content-Length: 4\r\nl: 3\r\n"),
         "Conflicting Content-Length"),
        (BASE.replace("Call-ID: c1@127.0.0.1\r\n", "Call-ID:\r\nCall-ID:\r\n c1\r\n"),
         "Conflicting Call-ID"),
        (BASE.replace("Call-ID: c1@127.0.0.1\r\n", "Call-ID:\r\n"), "Missing Call-ID"),
        (BASE.replace("CSeq: 1 INVITE", "CSeq: 1 invite"), "does not match"),
    ],
    ids=["call-id", "content-length", "empty-then-folded", "empty-call-id", "cseq-case"],
)
def test_headers_that_may_appear_once(raw: str, fragment: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(raw.encode())
    assert fragment in info.value.reason


def test_the_same_header_twice_with_the_same_value_is_fine() -> None:
    raw = BASE.replace("Content-Length: 4\r\n", "Content-Length: 4\r\nl: 04\r\n")
    assert parse_message(raw.encode()).body == b"v=0\n"


def test_a_fold_adds_one_space_and_no_more() -> None:
    raw = BASE.replace("Call-ID: c1@127.0.0.1\r\n", "Call-ID: \r\n c1@127.0.0.1\r\n")
    raw = raw.replace("Max-Forwards: 70\r\n", "Subject: a\r\n \r\n b\r\nMax-Forwards: 70\r\n")
    msg = parse_message(raw.encode())
    assert msg.call_id == "c1@127.0.0.1"
    assert msg.headers.get("subject") == "a b"


def test_the_header_section_ends_at_the_first_empty_line_of_either_kind() -> None:
    """As the TCP framer cuts it: a bare-LF line end followed by CRLF is an empty line."""
    head, _, _ = BASE.partition("Content-Type")
    raw = head + "X-A: 1\n\r\nX-B: 2\r\n\r\n"
    msg = parse_message(raw.encode())
    assert msg.headers.get("x-a") == "1" and msg.body == b"X-B: 2\r\n\r\n"


def test_methods_are_case_sensitive_tokens() -> None:
    for method in ("invite", "NEW-METHOD.1", "!%*_+`'~"):
        raw = BASE.replace("INVITE sip:", f"{method} sip:").replace("1 INVITE", f"1 {method}")
        msg = parse_message(raw.encode())
        assert isinstance(msg, SipRequest) and msg.method == method
    with pytest.raises(SipParseError, match="Malformed method"):
        parse_message(BASE.replace("INVITE sip:", "IN/VITE sip:").encode())


@pytest.mark.parametrize("code", ["099", "700", "999", "1000", "20", "\u0662\u0660\u0660", "2x0"])
def test_status_codes_outside_100_699_are_refused(code: str) -> None:
    raw = f"SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n"
    with pytest.raises(SipParseError, match="status code"):
        parse_message(raw.encode())


@pytest.mark.parametrize("code", [100, 199, 200, 302, 486, 500, 503, 699])
def test_status_codes_inside_100_699_are_taken(code: int) -> None:
    raw = f"SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n"
    msg = parse_message(raw.encode())
    assert isinstance(msg, SipResponse) and msg.status == code
