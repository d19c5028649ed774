"""Stream framing (switch/framing.py): messages, keep-alives, limits, random splits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch import errors
from switch.framing import (
    BadContentLength,
    ContentLengthRequired,
    ContentTooLarge,
    FramingError,
    HeaderTooLarge,
    StreamFramer,
)

OPTIONS = (
    b"OPTIONS sip:dce.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"Call-ID: a@b\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
BODY = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n\r\ns=-\r\n"  # a blank line inside the body
INVITE = (
    b"INVITE sip:+18005550100@dce.example.net SIP/2.0\r\n"
    b"Call-ID: c@d\r\n"
    b"Content-Type: application/sdp\r\n"
    + f"Content-Length: {len(BODY)}\r\n".encode()
    + b"\r\n"
    + BODY
)
RESPONSE = b"SIP/2.0 200 OK\r\nl: 5\r\n\r\nhello"


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) is not None:
        out.append(message)
    return out


def feed(framer: StreamFramer, chunks: list[bytes]) -> list[bytes]:
    out = []
    for chunk in chunks:
        framer.receive_data(chunk)
        out += drain(framer)
    return out


def msg(headers: bytes, body: bytes = b"") -> bytes:
    return b"MESSAGE sip:a@b SIP/2.0\r\n" + headers + b"\r\n" + body


FRAMES = [
    pytest.param([OPTIONS], [OPTIONS], id="one-no-body"),
    pytest.param([INVITE], [INVITE], id="body-with-blank-line"),
    pytest.param([RESPONSE], [RESPONSE], id="compact-l"),
    pytest.param([OPTIONS + INVITE + RESPONSE], [OPTIONS, INVITE, RESPONSE], id="three-in-one"),
    pytest.param([INVITE[:10], INVITE[10:77], INVITE[77:]], [INVITE], id="three-segments"),
    pytest.param([INVITE + OPTIONS[:5], OPTIONS[5:]], [INVITE, OPTIONS], id="boundary-in-chunk"),
    pytest.param([b"\r\n\r\n" + OPTIONS + b"\r\n"], [OPTIONS], id="crlf-around"),
    pytest.param([b"", OPTIONS, b""], [OPTIONS], id="empty-reads"),
    pytest.param(
        [msg(b"content-LENGTH:3\r\n", b"abc")], [msg(b"content-LENGTH:3\r\n", b"abc")], id="case"
    ),
    pytest.param(
        [msg(b"Content-Length \t:  \t3 \t\r\n", b"abc")],
        [msg(b"Content-Length \t:  \t3 \t\r\n", b"abc")],
        id="whitespace",
    ),
    pytest.param([msg(b"L: 2\r\n", b"ab")], [msg(b"L: 2\r\n", b"ab")], id="compact-upper"),
    pytest.param(
        [msg(b"Content-Length:\r\n   4\r\n", b"abcd")],
        [msg(b"Content-Length:\r\n   4\r\n", b"abcd")],
        id="folded-value",
    ),
    pytest.param(
        [msg(b"Content-Length: 2\r\nl: 2\r\n", b"ab")],
        [msg(b"Content-Length: 2\r\nl: 2\r\n", b"ab")],
        id="repeated-same-value",
    ),
    pytest.param(
        [msg(b"X-Content-Length: 9\r\nContent-Length-X: 9\r\nContent-Length: 1\r\n", b"z")],
        [msg(b"X-Content-Length: 9\r\nContent-Length-X: 9\r\nContent-Length: 1\r\n", b"z")],
        id="similar-names-ignored",
    ),
    pytest.param(
        [b"SIP/2.0 180 Ringing\nl: 3\n\nabcSIP/2.0 100 Trying\nl:0\n\n"],
        [b"SIP/2.0 180 Ringing\nl: 3\n\nabc", b"SIP/2.0 100 Trying\nl:0\n\n"],
        id="bare-lf",
    ),
    pytest.param(
        # The start line is never read as a header, however it looks (the parser rejects it).
        [b"Content-Length: 5\r\nl: 0\r\n\r\n"],
        [b"Content-Length: 5\r\nl: 0\r\n\r\n"],
        id="start-line-is-not-a-header",
    ),
    pytest.param(
        [msg(b"Content-Length: 0007\r\n", b"1234567")],
        [msg(b"Content-Length: 0007\r\n", b"1234567")],
        id="leading-zeros",
    ),
]


@pytest.mark.parametrize(("chunks", "expected"), FRAMES)
def test_frames(chunks: list[bytes], expected: list[bytes]) -> None:
    framer = StreamFramer()
    assert feed(framer, chunks) == expected
    assert framer.buffered == 0


@pytest.mark.parametrize("message", [OPTIONS, INVITE, RESPONSE], ids=["options", "invite", "200"])
def test_byte_by_byte(message: bytes) -> None:
    framer = StreamFramer()
    data = message * 3
    out = feed(framer, [data[i : i + 1] for i in range(len(data))])
    assert out == [message] * 3
    assert framer.buffered == 0


def test_waits_for_whole_body() -> None:
    framer = StreamFramer()
    framer.receive_data(INVITE[:-1])
    assert framer.next_message() is None
    assert framer.next_message() is None  # asking again changes nothing
    framer.receive_data(INVITE[-1:])
    assert framer.next_message() == INVITE
    assert framer.next_message() is None


def test_scan_resumes_instead_of_restarting() -> None:
    """Data a byte at a time: each search starts near the end, so the cost stays linear."""
    framer = StreamFramer()
    header = b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Pad: " + b"p" * 8000 + b"\r\n"
    for i, byte in enumerate(header):
        framer.receive_data(bytes([byte]))
        assert framer.next_message() is None
        assert framer._scan >= i - 1  # white box: the resume point follows the data


# -- keep-alives --------------------------------------------------------------------------

PINGS = [
    pytest.param([b"\r\n\r\n"], 1, id="one"),
    pytest.param([b"\r\n", b"\r\n"], 1, id="split-in-two"),
    pytest.param([b"\r", b"\n", b"\r", b"\n"], 1, id="split-in-four"),
    pytest.param([b"\r\n"], 0, id="lone-crlf-is-a-pong-not-a-ping"),
    pytest.param([b"\r\n\r\n\r\n"], 1, id="three-crlf"),
    pytest.param([b"\r\n" * 6], 3, id="three-pings"),
    pytest.param([b"\r\n\r\n", OPTIONS, b"\r\n\r\n", OPTIONS], 2, id="between-messages"),
    pytest.param([OPTIONS + b"\r\n", b"\r\n\r\n"], 1, id="after-slack-crlf"),
    pytest.param([b"\n\n"], 1, id="bare-lf"),
    pytest.param([b"\r\r\r\r"], 0, id="bare-cr"),
    pytest.param([INVITE[:-2] + b"\r\n\r\n"], 0, id="crlf-inside-body-is-not-a-ping"),
]


@pytest.mark.parametrize(("chunks", "pings"), PINGS)
def test_pings(chunks: list[bytes], pings: int) -> None:
    framer = StreamFramer()
    feed(framer, chunks)
    assert framer.pings == pings
    assert framer.data_to_send() == b"\r\n" * pings
    assert framer.data_to_send() == b""


def test_pong_owed_as_soon_as_ping_completes() -> None:
    framer = StreamFramer()
    framer.receive_data(b"\r\n\r\n")
    assert framer.next_message() is None
    assert framer.data_to_send() == b"\r\n"
    framer.receive_data(b"\r\n\r\n" + OPTIONS)
    assert drain(framer) == [OPTIONS]
    assert framer.data_to_send() == b"\r\n"
    assert framer.pings == 2


# -- errors -------------------------------------------------------------------------------

ERRORS = [
    pytest.param(
        [msg(b"Call-ID: x\r\n")],
        ContentLengthRequired,
        400,
        "Content-Length required on stream transport",
        id="missing",
    ),
    pytest.param([msg(b"Content-Length: abc\r\n")], BadContentLength, 400, "abc", id="not-number"),
    pytest.param([msg(b"Content-Length: -1\r\n")], BadContentLength, 400, "-1", id="negative"),
    pytest.param([msg(b"Content-Length: 1.5\r\n")], BadContentLength, 400, "1.5", id="fraction"),
    pytest.param([msg(b"Content-Length:\r\n")], BadContentLength, 400, "''", id="empty"),
    pytest.param(
        [msg("Content-Length: \u0663\r\n".encode())], BadContentLength, 400, "", id="arabic-digit"
    ),
    pytest.param(
        [msg(b"Content-Length: 1\r\nl: 2\r\n")],
        BadContentLength,
        400,
        "conflicting Content-Length values 1 and 2",
        id="conflicting",
    ),
    pytest.param(
        [msg(b"Content-Length: 32768\r\n")],
        ContentTooLarge,
        513,
        "exceeds 32768",
        id="body-too-large",
    ),
    pytest.param(
        [msg(b"Content-Length: " + b"9" * 40 + b"\r\n")],
        ContentTooLarge,
        513,
        "40 digits",
        id="absurd-length",
    ),
    pytest.param(
        [b"INVITE sip:x SIP/2.0\r\n" + b"X: " + b"y" * 16384],
        HeaderTooLarge,
        513,
        "without a blank line",
        id="endless-header",
    ),
    pytest.param(
        [b"INVITE sip:x SIP/2.0\r\nX: " + b"y" * 16370 + b"\r\nl: 0\r\n\r\n"],
        HeaderTooLarge,
        513,
        "exceeds 16384",
        id="header-too-large-complete",
    ),
]


@pytest.mark.parametrize(("chunks", "error", "status", "text"), ERRORS)
def test_errors(chunks: list[bytes], error: type[FramingError], status: int, text: str) -> None:
    framer = StreamFramer()
    with pytest.raises(error) as info:
        feed(framer, chunks)
    exc = info.value
    assert exc.status == status
    assert text in exc.reason and text in str(exc)
    assert isinstance(exc, errors.SipParseError)
    assert isinstance(exc, errors.MessageTooLarge) == (status == 513)
    # The framer stays failed: the caller must close the connection.
    with pytest.raises(error) as again:
        framer.next_message()
    assert again.value is exc
    with pytest.raises(error):
        framer.receive_data(OPTIONS)


def test_error_after_good_messages() -> None:
    framer = StreamFramer()
    framer.receive_data(OPTIONS + msg(b"Call-ID: x\r\n"))
    assert framer.next_message() == OPTIONS
    with pytest.raises(ContentLengthRequired):
        framer.next_message()


def test_too_large_detected_before_body_arrives() -> None:
    framer = StreamFramer(max_message=1000, max_header=500)
    framer.receive_data(msg(b"Content-Length: 5000\r\n"))
    with pytest.raises(ContentTooLarge, match="exceeds 1000"):
        framer.next_message()


@pytest.mark.parametrize("extra", [0, 1], ids=["at-limit", "one-over"])
def test_message_limit_is_inclusive(extra: int) -> None:
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 00000\r\n\r\n"
    limit = 200
    length = limit - len(head) + extra
    message = head.replace(b"00000", b"%05d" % length) + b"x" * length
    framer = StreamFramer(max_message=limit, max_header=100)
    framer.receive_data(message)
    if extra:
        with pytest.raises(ContentTooLarge):
            framer.next_message()
    else:
        assert framer.next_message() == message


@pytest.mark.parametrize("extra", [0, 1], ids=["at-limit", "one-over"])
def test_header_limit_is_inclusive(extra: int) -> None:
    head = b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\nX: "
    limit = 100
    message = head + b"p" * (limit - len(head) - 4 + extra) + b"\r\n\r\n"
    assert len(message) == limit + extra
    for chunks in ([message], [message[i : i + 1] for i in range(len(message))]):
        framer = StreamFramer(max_message=1000, max_header=limit)
        if extra:
            with pytest.raises(HeaderTooLarge):
                feed(framer, chunks)
        else:
            assert feed(framer, chunks) == [message]


def test_endless_header_byte_by_byte_stays_bounded() -> None:
    framer = StreamFramer(max_message=1000, max_header=100)
    framer.receive_data(b"INVITE sip:x SIP/2.0\r\n")
    with pytest.raises(HeaderTooLarge):
        for _ in range(1000):
            framer.receive_data(b"y")
            framer.next_message()
            assert framer.buffered <= 101
    assert framer.buffered == 101


@pytest.mark.parametrize(
    ("max_message", "max_header"),
    [(0, 0), (100, 0), (100, 200)],
    ids=["zero", "zero-hdr", "hdr>msg"],
)
def test_bad_limits(max_message: int, max_header: int) -> None:
    with pytest.raises(ValueError):
        StreamFramer(max_message=max_message, max_header=max_header)


# -- property tests -------------------------------------------------------------------------

_NAMES = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"l", b"L"]
_OTHER_NAMES = [b"Via", b"v", b"Call-ID", b"From", b"To", b"CSeq", b"X-Length", b"Content-Type"]
_VALUES = st.binary(max_size=40).map(lambda b: bytes(32 + x % 95 for x in b))
_START = [b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"BYE sip:x@y;transport=tcp SIP/2.0"]


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    """A message with random headers, a random body and one way or another of writing CL."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    body = draw(st.binary(max_size=300) | st.sampled_from([b"\r\n\r\n", b"\n\n\n", b"a\r\n\r\nb"]))
    lines = [draw(st.sampled_from(_START))]
    others = [
        name + b": " + value
        for name, value in draw(
            st.lists(st.tuples(st.sampled_from(_OTHER_NAMES), _VALUES), max_size=6)
        )
    ]
    cl = draw(st.sampled_from(_NAMES)) + draw(st.sampled_from([b": ", b":", b" : ", b":\t"]))
    cl += str(len(body)).encode()
    lines += others
    lines.insert(draw(st.integers(1, len(lines))), cl)
    return eol.join(lines) + eol + eol + body


@settings(max_examples=200)
@given(
    messages=st.lists(st.tuples(st.integers(0, 2), sip_messages()), min_size=1, max_size=6),
    trailing_pings=st.integers(0, 2),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_random_splits_reproduce_messages(
    messages: list[tuple[int, bytes]], trailing_pings: int, cuts: list[int]
) -> None:
    stream = b"".join(b"\r\n\r\n" * pings + m for pings, m in messages)
    stream += b"\r\n\r\n" * trailing_pings
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    framer = StreamFramer(max_message=4096, max_header=1024)
    out: list[bytes] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        out += drain(framer)
        # Memory stays bounded: at most one partial message is kept between reads.
        assert framer.buffered < framer.max_message
    assert out == [m for _, m in messages]
    assert framer.pings == sum(p for p, _ in messages) + trailing_pings
    assert framer.buffered == 0


@settings(max_examples=100)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_garbage_never_crashes_and_stays_bounded(data: bytes, sizes: list[int]) -> None:
    framer = StreamFramer(max_message=1024, max_header=256)
    pos = 0
    try:
        while pos < len(data):
            size = sizes[pos % len(sizes)]
            framer.receive_data(data[pos : pos + size])
            pos += size
            drain(framer)
            assert framer.buffered <= framer.max_message
    except FramingError as exc:
        assert exc.status in (400, 513)
