"""Hypothesis strategies for SIP messages: mostly well-formed, often odd, sometimes broken.

Messages are built from RFC 3261's grammar with the variations RFC 4475 and RFC 5118 probe
(white space and folding where LWS is allowed, compact and oddly cased header names, every
token character, IPv6 references, quoted strings with escapes, repeated and missing headers,
Content-Length right, wrong, repeated or absent, bare LF line ends), then optionally mutated
byte by byte. The fuzz tests (test_fuzz_parser.py, test_fuzz_core.py) feed them to the parser
and to a whole switch core.
"""

from __future__ import annotations

from hypothesis import strategies as st

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
METHODS = [
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
]
SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\n"
)
# Characters that break parsers: controls, quotes, separators, digits int() refuses, non-ASCII.
ODD = "\x00\x01\x7f\"'\\<>;,:=?@[]/ \t\u00b2\u0663\u00e9\u2603\ufeff"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
odd_text = st.text(TOKEN_CHARS + ODD, max_size=16)
sws = st.sampled_from(["", "", "", " ", "  ", "\t", " \r\n ", "\r\n\t"])  # [LWS]
lws = st.sampled_from([" ", " ", "  ", "\t", " \r\n ", "\r\n  "])  # LWS


@st.composite
def hosts(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(
            [
                "192.0.2.7", "example.com", "EXAMPLE.net.", "h-1.example.org", "[2001:db8::1]",
                "[::ffff:192.0.2.1]", "[2001:db8::10:5070]", "under_score.example", "[::1]",
            ]
        )
        | st.sampled_from(["2001:db8::1", "", "[2001:db8::1", "[]", "[1.2.3.4]"])
        | tokens
    )


@st.composite
def ports(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(["", "", ":5060", ":5080", ":0", ":65535"])
        | st.integers(0, 99999).map(lambda p: f":{p}")
        | st.sampled_from([":", ":-1", ":\u00b9\u00b2", ":abc", ":5060:5060"])
    )


@st.composite
def params(draw: st.DrawFn, names: list[str]) -> str:
    out = ""
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(names) | tokens)
        value = draw(
            st.none()
            | tokens
            | st.just('"quoted, with; separators"')
            | st.just('"esc \\" quote"')
            | odd_text
        )
        out += draw(sws) + ";" + draw(sws) + name
        if value is not None:
            out += draw(sws) + "=" + draw(sws) + value
    return out


@st.composite
def vias(draw: st.DrawFn) -> str:
    proto = draw(st.sampled_from(["SIP", "SIP", "sip", "Sip"]) | tokens)
    version = draw(st.sampled_from(["2.0", "2.0", "2.0", "3.0"]) | tokens)
    transport = draw(
        st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "UNKNOWN"]) | tokens
    )
    branch = draw(st.sampled_from(["z9hG4bK", "z9hG4bK", "z9hG4bK", ""])) + draw(tokens)
    via = (
        f"{proto}{draw(sws)}/{draw(sws)}{version}{draw(sws)}/{draw(sws)}{transport}{draw(lws)}"
        f"{draw(hosts())}{draw(ports())}{draw(sws)};{draw(sws)}branch={branch}"
        f"{draw(params(['rport', 'received', 'ttl', 'maddr', 'x']))}"
    )
    return draw(st.sampled_from([via, via, via, via.replace(" ", "", 1), via + ","]))


@st.composite
def uris(draw: st.DrawFn) -> str:
    scheme = draw(
        st.sampled_from(["sip", "sip", "sip", "sips", "SIP", "tel", "im", "http", "soap.beep"])
        | st.sampled_from(["", "<sip", "1sip"])
    )
    if scheme == "tel":
        return f"tel:{draw(st.sampled_from(['+18005550100', '+1-800-555-0100', '911']))}"
    user = draw(
        st.none()
        | st.sampled_from(["+18005550100", "alice", "a%40b", "user;par=u%40x", "%00", ""])
        | tokens
    )
    out = f"{scheme}:"
    if user is not None:
        out += user + draw(st.sampled_from(["", "", ":secret"])) + "@"
    out += draw(hosts()) + draw(ports())
    out += draw(params(["transport", "lr", "user", "maddr", "method"]))
    out += draw(st.sampled_from(["", "", "?Subject=hi", "?Route=%3Csip:x%3E"]))
    return out


@st.composite
def name_addrs(draw: st.DrawFn, tag: bool) -> str:
    display = draw(
        st.sampled_from(["", "", "Alice ", '"Alice" ', '"A \\"q\\" <x>" ', '"unterminated ', "A"])
        | odd_text.map(lambda t: f'"{t}" ')
    )
    uri = draw(uris())
    core = draw(st.sampled_from([f"{display}<{uri}>", f"{display}<{uri}>", uri, f"<{uri}"]))
    if tag:
        core += f"{draw(sws)};{draw(sws)}tag{draw(sws)}={draw(sws)}{draw(tokens)}"
    return core + draw(params(["x", "expires", "q"]))


def _names(canonical: str, compact: str | None = None) -> st.SearchStrategy[str]:
    choices = [canonical, canonical, canonical.lower(), canonical.upper()]
    if compact:
        choices.append(compact)
    return st.sampled_from(choices) | st.sampled_from([canonical + " ", canonical + "\t"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request, usually one the switch could take, with knobs turned at random."""
    method = draw(
        st.sampled_from(["INVITE", "INVITE", "OPTIONS", "OPTIONS", "BYE", "CANCEL", "ACK"])
        | st.sampled_from(METHODS)
        | st.sampled_from(["invite", "NEWMETHOD", "!interesting-Method0123456789_*+`.%indeed'~"])
        | tokens
    )
    cseq_method = draw(st.sampled_from([method] * 6 + ["INVITE", method.lower()]))
    cseq_num = draw(
        st.sampled_from(["1", "1", "0", "2147483647", "2147483648", "0009", "\u00b2", "-1", "x"])
        | st.integers(0, 2**33).map(str)
    )
    body = draw(
        st.sampled_from(["", "", SDP, SDP])
        | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
    )
    headers: list[tuple[str, str]] = [
        (draw(_names("Via", "v")), draw(vias())),
        (draw(_names("Max-Forwards")), draw(st.sampled_from(["70", "0", "255", "256", "0068"]))),
        (draw(_names("From", "f")), draw(name_addrs(tag=True))),
        (draw(_names("To", "t")), draw(name_addrs(tag=draw(st.booleans())))),
        (draw(_names("Call-ID", "i")), draw(tokens | st.just("a@b") | odd_text)),
        (draw(_names("CSeq")), f"{cseq_num}{draw(lws)}{cseq_method}"),
    ]
    extra = st.sampled_from(
        [
            ("Via", "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKlow, SIP/2.0/UDP [2001:db8::2]"),
            ("Contact", "<sip:caller@192.0.2.7:5060>;expires=60"),
            ("Contact", "*"),
            ("Route", "<sip:proxy.example.com;lr>, <sip:[2001:db8::1];lr>"),
            ("Record-Route", "<sip:rr.example.com;lr>"),
            ("Require", "100rel"),
            ("Require", "timer, foo"),
            ("Proxy-Require", "bar"),
            ("Supported", "100rel, timer"),
            ("Content-Type", "application/sdp"),
            ("Content-Type", "application/SDP; charset=x"),
            ("Content-Type", "text/plain"),
            ("Content-Type", "multipart/mixed;boundary=x"),
            ("Content-Encoding", "gzip"),
            ("Max-Forwards", "69"),
            ("Call-ID", "another@x"),
            ("CSeq", "9 INVITE"),
            ("From", "<sip:other@x>;tag=o"),
            ("To", "<sip:other@x>"),
            ("P-Asserted-Identity", '"Caller" <sip:+12125551234@192.0.2.7>'),
            ("Subject", ""),
            ("X-Folded", "first\r\n second"),
            ("Timestamp", "54"),
        ]
    ) | st.tuples(tokens, odd_text)
    headers += draw(st.lists(extra, max_size=4))
    headers = draw(st.permutations(headers)) if draw(st.integers(0, 4)) == 0 else headers
    if draw(st.integers(0, 9)) == 0:  # drop a header
        del headers[draw(st.integers(0, len(headers) - 1))]
    clen = draw(
        st.sampled_from(["right"] * 6 + ["none", "short", "long", "two", "two-same", "odd"])
    )
    blen = len(body.encode("utf-8", "surrogateescape"))
    if clen == "right":
        headers.append((draw(_names("Content-Length", "l")), str(blen)))
    elif clen == "short":
        headers.append(("Content-Length", str(max(0, blen - 3))))
    elif clen == "long":
        headers.append(("Content-Length", str(blen + 5)))
    elif clen == "two":
        headers += [("Content-Length", str(blen)), ("l", str(blen + 1))]
    elif clen == "two-same":
        headers += [("Content-Length", str(blen)), ("l", str(blen))]
    elif clen == "odd":
        headers.append(("Content-Length", draw(st.sampled_from(["-1", "\u00b2", "1.5", "", "0x10"]))))
    version = draw(st.sampled_from(["SIP/2.0"] * 8 + ["sip/2.0", "SIP/3.0", "SIP/2.0 "]))
    sep = draw(st.sampled_from([" "] * 8 + ["  ", "\t"]))
    start = f"{method}{sep}{draw(uris())}{sep}{version}"
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    head = eol.join([start, *(f"{n}:{draw(sws)}{v}" for n, v in headers)])
    lead = draw(st.sampled_from(["", "", "", "\r\n", "\r\n\r\n"]))
    text = lead + head + eol + eol + body
    return text.encode("utf-8", "surrogateescape")


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(
        st.sampled_from(["100", "180", "183", "200", "202", "486", "487", "503", "603"])
        | st.sampled_from(["99", "700", "2000", "\u0662\u0660\u0660", "abc", ""])
    )
    reason = draw(st.sampled_from(["OK", "", "Ringing", "\u043e\u043a", "= 2**3"]) | odd_text)
    cseq = draw(st.sampled_from(["1 INVITE", "1 INVITE", "2 BYE", "1 CANCEL", "x INVITE", "1"]))
    lines = [
        f"{draw(st.sampled_from(['SIP/2.0'] * 6 + ['SIP/3.0', 'sip/2.0']))} {status} {reason}",
        f"Via: {draw(vias())}",
        f"From: {draw(name_addrs(tag=True))}",
        f"To: {draw(name_addrs(tag=draw(st.booleans())))}",
        f"Call-ID: {draw(tokens)}",
        f"CSeq: {cseq}",
    ]
    if draw(st.booleans()):
        lines.append("Contact: <sip:buyer@192.0.2.9:5070>")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with up to three byte-level edits (insert, delete, replace, duplicate)."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "dup"]))
        piece = draw(st.sampled_from([b" ", b"\r\n", b"\n", b":", b";", b",", b'"', b"<", b"\x00",
                                      b"\xff", b"\r\n ", b"/", b"["]) | st.binary(max_size=3))
        if kind == "insert":
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace":
            data[at : at + len(piece)] = piece
        else:
            end = min(len(data), at + draw(st.integers(1, 40)))
            data[at:at] = data[at:end]
    return bytes(data)


messages = mutated(requests() | responses()) | requests() | st.binary(max_size=200)
