"""Torture messages in the spirit of RFC 4475 (SIP torture tests) and RFC 5118 (IPv6), written
for DCE, with the answer each gets over every transport.

Each message is a file in ``data/torture/`` (bytes as sent: CRLF, bare LF, NUL, non-UTF-8).
The table gives the statuses sent back, in order, over UDP and WebSocket (a whole message to
the core) and over TCP (framed first, so a message must carry Content-Length and a datagram
holding two messages is two messages). ``[100]`` is an INVITE taken for routing; ``[]`` means
nothing is sent: a response, an ACK, a request without a Via, or (TCP) a message still waiting
for the rest of its bytes. Where RFC 4475 lets an element either accept or refuse, the comment
says which the switch does. Every answer is also checked against the request
(tests/switch/sipcheck.py): Via, Call-ID, CSeq copied, To tag, Allow, Unsupported, Accept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from switch.errors import SipParseError
from switch.message import parse_message
from tests.switch.sipcheck import TCP, UDP, WS, check_answer, feed, new_core, top_via

DATA = Path(__file__).parent / "data" / "torture"

SAME = None  # the TCP answer is the UDP one

# name: (UDP and WebSocket statuses, TCP statuses or SAME)
TORTURE: dict[str, tuple[list[int], list[int] | None]] = {
    # --- valid, if unusual (RFC 4475 §3.1.1, RFC 5118 §4) ------------------------------------
    "wsinv": ([481], SAME),  # all the LWS and folding parse; its To tag names no dialog
    "wsinv_to_tag_removed_new_call": ([100], SAME),  # the same shape as a new call
    "intmeth": ([501], SAME),  # every token character in the method: an unknown method
    "esc01": ([200], SAME),
    "escnull": ([200], SAME),
    "esc02": ([501], SAME),  # RE%47IST%45R is not REGISTER
    "lwsdisp": ([200], SAME),
    "longreq": ([100], SAME),  # 120 Vias, 3 KB header, 500-byte tag: under the limits
    "dblreq": ([200], [200, 100]),  # UDP: the rest after Content-Length is dropped
    "semiuri": ([200], SAME),
    "transports": ([200], SAME),  # UDP, SCTP, TLS, UNKNOWN, TCP Vias below ours
    "via_sctp_top": ([200], SAME),
    "via_unknown_transport_top": ([200], SAME),
    "via_lws_everywhere": ([200], SAME),  # SWS around "/", ":", ";" and "="
    "via_tabs": ([200], SAME),
    "via_folded": ([200], SAME),
    "via_lowercase": ([200], SAME),
    "via_other_protocol": ([200], SAME),  # protocol-name and version are any token
    "via_quoted_param_with_comma": ([200], SAME),
    "via_ipv6": ([200], SAME),
    "via_received_ipv6_with_brackets": ([200], SAME),  # RFC 5118 §4.5: both forms
    "via_received_ipv6_without_brackets": ([200], SAME),
    "via_ipv4_mapped_ipv6": ([200], SAME),
    "ipv6_good": ([200], SAME),
    "ipv6_port_ambiguous": ([200], SAME),  # [2001:db8::10:5070] is an address, no port
    "ipv6_port_unambiguous": ([200], SAME),
    "ipv6_invite_sdp": ([100], SAME),
    "ipv6_mixed_hosts": ([200], SAME),
    "version_lowercase": ([200], SAME),  # §7.1: "SIP/2.0" is case-insensitive
    "header_name_lws": ([200], SAME),
    "compact_everything": ([200], SAME),
    "bare_lf": ([200], SAME),
    "leading_crlf": ([200], SAME),
    "unknown_scheme_in_to_from": ([200], SAME),  # RFC 4475 §3.3.4: accepted
    "invite_unknown_scheme_in_from": ([100], SAME),  # the caller number is then unknown
    "invite_sdp_with_params": ([100], SAME),
    "invite_supported_only": ([100], SAME),  # Supported asks nothing of the switch
    "invite_no_body": ([100], SAME),  # offer in the 200 (§13.2.1)
    "tel_request_uri": ([200], SAME),
    "escaped_headers_in_ruri": ([200], SAME),  # RFC 4475 §3.1.2.11: ignored, not refused
    "unusual_reason_response": ([], SAME),  # responses to nothing: dropped, never answered
    "empty_reason_response": ([], SAME),
    "bye_no_dialog": ([481], SAME),
    "bye_without_to_tag": ([481], SAME),
    "method_not_allowed_register": ([405], SAME),
    "method_not_allowed_subscribe": ([405], SAME),
    "method_not_allowed_notify": ([405], SAME),
    "method_not_allowed_publish": ([405], SAME),
    "method_not_allowed_message": ([405], SAME),
    "method_not_allowed_refer": ([405], SAME),
    "method_not_allowed_prack": ([405], SAME),  # no 100rel: PRACK is not in Allow
    "prack_in_dialog": ([405], SAME),
    "method_unknown": ([501], SAME),
    "method_lowercase_is_another_method": ([501], SAME),  # §7.1: methods are case-sensitive
    "cancel_no_match": ([481], SAME),
    "ack_no_match": ([], SAME),
    "zero_max_forwards_invite": ([483], SAME),
    "zero_max_forwards_options": ([200], SAME),  # the switch is the UAS of an OPTIONS
    "content_length_duplicates_agree": ([200], SAME),
    "content_length_leading_zeros": ([200], SAME),
    "udp_body_longer_than_content_length": ([200], SAME),  # §18.3: the rest is dropped
    # --- refused (RFC 4475 §3.1.2, §3.3) --------------------------------------------------------
    "bext01": ([420], SAME),  # Unsupported lists the Require and Proxy-Require tags
    "require_in_dialog_bye": ([420], SAME),  # before the dialog is even looked up
    "require_on_cancel_exempt": ([481], SAME),  # §8.2.2.3: CANCEL is exempt
    "require_on_invite": ([420], SAME),  # 100rel is not supported
    "invut": ([415], SAME),
    "mpart01": ([415], SAME),  # the switch reads plain SDP only
    "invite_gzip_body": ([415], SAME),
    "unkscm": ([416], SAME),
    "novelsc": ([416], SAME),
    "unkscm_invite": ([416], SAME),
    "clerr": ([400], []),  # TCP: waits for the rest of the body
    "ncl": ([400], SAME),
    "mcl01": ([400], SAME),
    "multi01_call_id": ([400], SAME),
    "multi01_from": ([400], SAME),
    "multi01_to": ([400], SAME),
    "multi01_cseq": ([400], SAME),
    "scalar02": ([400], SAME),  # CSeq beyond 2**32
    "cseq_at_2_31": ([400], SAME),  # §8.1.1.5: below 2**31
    "max_forwards_300": ([400], SAME),  # §20.22: 0-255
    "scalarlg_response": ([], SAME),
    "bigcode_response": ([], SAME),
    "badvers_response": ([], SAME),
    "arabic_digit_status_response": ([], SAME),
    "lowercase_response": ([], SAME),  # a response is never answered, whatever its case
    "quotbal": ([400], SAME),
    "quotbal_invite_from": ([400], SAME),
    "ltgtruri": ([400], SAME),
    "lwsruri": ([400], SAME),
    "lwsstart": ([400], SAME),
    "trws": ([400], SAME),
    "badvers": ([505], SAME),
    "mismatch01": ([400], SAME),
    "mismatch02": ([400], SAME),
    "cseq_method_case": ([400], SAME),
    "insuf": ([400], SAME),
    "no_via": ([], SAME),  # §18.2.1: nowhere to answer
    "ack_malformed": ([], SAME),
    "ipv6_bad_ruri": ([400], SAME),  # RFC 5118 §4.2: an IPv6 host needs brackets
    "ipv6_bad_via": ([400], SAME),
    "via_port_too_big": ([400], SAME),
    "via_no_host": ([400], SAME),
    "via_two_fields": ([400], SAME),
    "superscript_cseq": ([400], SAME),  # digits str.isdigit() takes and int() refuses
    "superscript_content_length": ([400], SAME),
    "superscript_via_port": ([400], SAME),
    "superscript_max_forwards": ([400], SAME),
    "header_too_large": ([513], SAME),  # header section over 16 KiB
    "message_too_large_64983": ([513], SAME),  # message over 32 KiB
    "no_blank_line": ([400], []),
    "header_line_without_colon": ([400], SAME),
    "space_in_header_name": ([400], SAME),
    "continuation_first": ([], SAME),  # its only Via line is a continuation: no Via
}


def test_every_file_has_an_expectation_and_back() -> None:
    assert sorted(p.stem for p in DATA.glob("*.sip")) == sorted(TORTURE)


@pytest.mark.parametrize("transport", [UDP, WS, TCP], ids=["udp", "ws", "tcp"])
@pytest.mark.parametrize("name", sorted(TORTURE))
def test_torture(name: str, transport: object) -> None:
    data = (DATA / f"{name}.sip").read_bytes()
    udp, tcp = TORTURE[name]
    expected = tcp if transport is TCP and tcp is not None else udp
    core = new_core()
    got = feed(core, data, transport)  # type: ignore[arg-type]
    assert got.statuses() == expected
    for message, answer in got.answers:
        if top_via(message) is not None:
            check_answer(message, answer)


def test_the_same_corpus_twice_in_one_process_gives_the_same_answers() -> None:
    """Nothing a message leaves behind (caches, tables) changes how the next one is read."""
    def run() -> dict[str, list[bytes]]:
        return {n: feed(new_core(), (DATA / f"{n}.sip").read_bytes(), UDP).sent for n in TORTURE}

    assert run() == run()


@pytest.mark.parametrize(
    ("name", "parses"),
    [
        ("unusual_reason_response", True),
        ("empty_reason_response", True),
        ("scalarlg_response", False),
        ("bigcode_response", False),
        ("badvers_response", False),
        ("arabic_digit_status_response", False),
    ],
)
def test_responses_parse_or_not(name: str, parses: bool) -> None:
    """A response is never answered, so the parser's verdict is checked directly."""
    data = (DATA / f"{name}.sip").read_bytes()
    try:
        parse_message(data)
        ok = True
    except SipParseError:
        ok = False
    assert ok == parses
