"""SIP messages: parsing and serialisation (RFC 3261 §7, §20, §25).

Theory of operation
-------------------
:func:`parse_message` turns one datagram (or one framed stream message, see ``framing.py``)
into a :class:`SipRequest` or :class:`SipResponse`. Header names are case-insensitive and the
compact forms of §7.3.3 (``v``, ``i``, ``f`` ...) are expanded; folded lines (§7.3.1) are
joined. Headers keep their order and repeats. Values are parsed lazily: the few fields the
transaction and dialog layers read on every message (top Via, Call-ID, CSeq, tags) are parsed
once and cached. A body longer than Content-Length is cut to it (§18.3); a shorter one is an
error. Anything a peer got wrong raises :class:`SipParseError` whose ``status`` the edge answers
with (requests) or which is logged and dropped (responses).

What is checked up front, because a later layer would trip on it or answer differently per
transport: the size limits (:data:`MAX_MESSAGE`, :data:`MAX_HEADER`: 513), the header section
ending at the first empty line of either kind (as the TCP framer cuts it), a start line of
three single-space-separated parts with a token method (methods are case-sensitive; an
unknown one is the core's 501, not a 400) and a case-insensitive ``SIP/2.0``, the mandatory
headers, no two different values of a header that may appear once (:data:`SINGLE`, so
conflicting Content-Length is 400 on UDP as on TCP), a CSeq below 2**31 naming the method,
the top Via and the Request-URI (a well-formed URI of another scheme: 416). Numbers are read
with ``isascii()`` too: ``str.isdigit`` alone takes digits ``int`` refuses.

:func:`stateless_response` answers what could not be parsed, from the raw lines.

Serialisation always recomputes Content-Length. Header names go out in their canonical
spelling (``Call-ID``, ``CSeq``, ``WWW-Authenticate``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Final

from switch.errors import MessageTooLarge, SipParseError
from switch.uri import NameAddr, SipUri, Via, split_unquoted

# The largest SIP message (start line, headers and body) and header section accepted on any
# transport (docs/sip.md); larger requests get 513 Message Too Large (§21.5.14).
MAX_MESSAGE: Final = 32768
MAX_HEADER: Final = 16384

COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}
_CANONICAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "p-asserted-identity": "P-Asserted-Identity",
}
REQUIRED_REQUEST = ("via", "to", "from", "call-id", "cseq")
# Headers that may appear once (§7.3.1) and that some layer reads: two different values make
# the message malformed (RFC 4475 §3.3.9 for Content-Length).
SINGLE: Final = frozenset(
    {"call-id", "cseq", "from", "to", "content-length", "max-forwards", "content-type"}
)
# RFC 3261 and its extensions' methods: any other token is an extension method we do not
# know (501), and these skip the token check below.
METHODS: Final = frozenset(
    {
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")  # §25.1 token


def canonical_name(key: str) -> str:
    """``call-id`` -> ``Call-ID``; ``x-foo-bar`` -> ``X-Foo-Bar``."""
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(p[:1].upper() + p[1:] for p in key.split("-"))
        if len(_CANONICAL) < 4096:  # bounded: a peer inventing names cannot grow it
            _CANONICAL[key] = name
    return name


# Header key -> what starts its line on the wire: "\r\nCanonical-Name: " (serialisation).
_PREFIXES: dict[str, str] = {"content-length": ""}


def _prefix(key: str) -> str:
    prefix = f"\r\n{canonical_name(key)}: "
    if len(_PREFIXES) < 4096:  # bounded, as _KEYS below
        _PREFIXES[key] = prefix
    return prefix


_KEYS: dict[str, str] = {}  # raw header name -> lookup key; names repeat, so this stays small


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact form expanded."""
    key = _KEYS.get(name)
    if key is None:
        key = name.strip().lower()
        key = COMPACT.get(key, key)
        # Bounded, so a peer inventing names cannot grow it without limit; and only sound
        # names, because the parser takes a name found here as already checked.
        if len(_KEYS) < 4096 and key and " " not in key and "\t" not in key:
            _KEYS[name] = key
    return key


class Headers:
    """Ordered SIP headers with case-insensitive lookup; repeats are kept in order."""

    __slots__ = ("_first", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(header_key(k), v) for k, v in items]
        # First value per key, built on the first lookup and dropped on every change: a
        # message is read many times and edited rarely.
        self._first: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (for list headers: the first whole line)."""
        first = self._first
        if first is None:
            first = self._first = dict(reversed(self._items))
        value = first.get(name)
        if value is None and name not in first:
            value = first.get(header_key(name))
        return value

    def get_all(self, name: str) -> list[str]:
        """Every line of ``name``, in order."""
        key = header_key(name)
        return [v for k, v in self._items if k == key]

    def get_list(self, name: str) -> list[str]:
        """Every element of a list header, split at commas outside quotes and ``<>``."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(p.strip() for p in split_unquoted(line, ",") if p.strip())
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` with one value, kept where the first one stood."""
        key = header_key(name)
        self._first = None
        for i, (k, _) in enumerate(self._items):
            if k == key:
                self._items[i] = (key, value)
                self._items[i + 1 :] = [kv for kv in self._items[i + 1 :] if kv[0] != key]
                return
        self._items.append((key, value))

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        key = header_key(name)
        self._first = None
        if first:
            self._items.insert(0, (key, value))
        else:
            self._items.append((key, value))

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._first = None
        self._items = [kv for kv in self._items if kv[0] != key]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first element of a list header (e.g. the top Via)."""
        key = header_key(name)
        self._first = None
        for i, (k, v) in enumerate(self._items):
            if k == key:
                parts = split_unquoted(v, ",")
                if len(parts) > 1:
                    self._items[i] = (k, ",".join(parts[1:]).strip())
                else:
                    del self._items[i]
                return parts[0].strip()
        return None

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class _Message:
    __slots__ = ("_cseq", "_from", "_to", "_via", "body", "headers")

    def __init__(self, headers: Headers, body: bytes) -> None:
        self.headers = headers
        self.body = body
        self._via: Via | None = None
        self._cseq: tuple[int, str] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None

    # Cached views of the headers every layer reads. They raise SipParseError when broken.
    @property
    def via(self) -> Via:
        """The top Via."""
        if self._via is None:
            line = self.headers.get("via")
            if line is None:
                raise SipParseError("Missing Via header")
            self._via = Via.parse(split_unquoted(line, ",")[0])
        return self._via

    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if not value:
            raise SipParseError("Missing Call-ID header")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        if self._cseq is None:
            value = self.headers.get("cseq")
            if value is None:
                raise SipParseError("Missing CSeq header")
            # §20.16: CSeq = 1*DIGIT LWS Method; the number below 2**31, the method as
            # case-sensitive as the request line's.
            parts = value.split()
            # isascii: str.isdigit() also takes digits int() refuses (superscripts).
            if (
                len(parts) != 2
                or not (parts[0].isascii() and parts[0].isdigit())
                or len(parts[0]) > 10
                or int(parts[0]) >= 2**31
            ):
                raise SipParseError(f"Malformed CSeq {value[:40]!r}")
            self._cseq = (int(parts[0]), parts[1])
        return self._cseq

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            value = self.headers.get("from")
            if value is None:
                raise SipParseError("Missing From header")
            self._from = NameAddr.parse(value)
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            value = self.headers.get("to")
            if value is None:
                raise SipParseError("Missing To header")
            self._to = NameAddr.parse(value)
        return self._to

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    def _serialize(self, start_line: str) -> bytes:
        prefixes = _PREFIXES
        parts = [start_line]
        append = parts.append
        for key, value in self.headers._items:
            prefix = prefixes.get(key)
            if prefix is None:
                prefix = _prefix(key)
            if prefix:  # Content-Length's is empty: recomputed below
                append(prefix)
                append(value)
        body = self.body
        append(f"\r\nContent-Length: {len(body)}\r\n\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + body


class SipRequest(_Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        # _Message.__init__ inlined: one frame less for every message parsed or built.
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._via: Via | None = None
        self._cseq: tuple[int, str] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self.method = method
        self.uri = uri

    def to_bytes(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"


class SipResponse(_Message):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._via: Via | None = None
        self._cseq: tuple[int, str] | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self.status = status
        self.reason = reason

    def to_bytes(self) -> bytes:
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


SipMessage = SipRequest | SipResponse


def header_end(data: bytes) -> tuple[int, int] | None:
    """(end of the header section, start of the body): the first empty line, CRLF or bare LF
    (the framer's rule too, so a stream and a datagram cut a message alike), or None."""
    end = data.find(b"\n\r\n")
    bare = data.find(b"\n\n", 0, end if end >= 0 else len(data))
    if bare >= 0:
        return (bare - 1 if bare and data[bare - 1] == 13 else bare), bare + 2
    if end >= 0:
        return (end - 1 if end and data[end - 1] == 13 else end), end + 3
    return None


def _number(text: str) -> int | None:
    """A decimal number of at most 10 digits, or None (``str.isdigit`` alone also accepts
    digits such as superscripts that ``int`` refuses)."""
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return int(text)
    return None


def _check_repeats(items: list[tuple[str, str]]) -> None:
    """Raise if a header that may appear once (§7.3.1) has two different values."""
    values: dict[str, set[str]] = {}
    for key, value in items:
        if key in SINGLE:
            values.setdefault(key, set()).add(value)
    for key, seen in values.items():
        if len(seen) < 2:
            continue
        if key == "content-length":
            numbers = {_number(v) for v in seen}
            if None in numbers or len(numbers) == 1:
                continue  # a malformed value is reported below; 0 and 00 agree
            raise SipParseError(f"Conflicting Content-Length values {', '.join(sorted(seen))[:40]}")
        raise SipParseError(f"Conflicting {canonical_name(key)} headers")


def _header_lines(lines: list[str], items: list[tuple[str, str]]) -> None:
    """The header lines (all but the start line) into ``items``, folding and checking."""
    keys = _KEYS
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                raise SipParseError("Header continuation before any header")
            key, value = items[-1]
            # The fold is one SP (§7.3.1); an empty side adds none.
            more = line.strip()
            joined = f"{value} {more}" if value and more else value or more
            items[-1] = (key, joined)
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise SipParseError(f"Malformed header line {line[:60]!r}")
        cached = keys.get(name)
        if cached is None:
            name = name.strip()
            if not name or " " in name or "\t" in name:
                raise SipParseError(f"Malformed header name {name[:40]!r}")
            cached = header_key(name)
        items.append((cached, value.strip()))


def parse_message(data: bytes, *, max_size: int = MAX_MESSAGE) -> SipMessage:
    """Parse one SIP message. Raises SipParseError (``status`` 400, 416, 505 or 513)."""
    if len(data) > max_size:
        raise MessageTooLarge(f"Message of {len(data)} bytes exceeds {max_size}")
    # Leading CRLFs before a message are allowed and ignored (§7.5).
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("Empty message")
    # The first empty line ends the header section (header_end(), inlined: the hot path).
    end = data.find(b"\n\r\n")
    bare = data.find(b"\n\n", 0, end if end >= 0 else len(data))
    if bare >= 0:
        head, body = data[: bare - 1 if bare and data[bare - 1] == 13 else bare], data[bare + 2 :]
    elif end >= 0:
        head, body = data[: end - 1 if end and data[end - 1] == 13 else end], data[end + 3 :]
    else:
        raise SipParseError("Truncated message: no blank line after the headers")
    if len(head) > MAX_HEADER:
        raise MessageTooLarge(f"Header section of {len(head)} bytes exceeds {MAX_HEADER}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # §25: headers are UTF-8; keep going byte-transparently so a bad display name is
        # relayed rather than answered 400.
        text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    if text.count("\n") != len(lines) - 1:
        lines = text.replace("\r\n", "\n").split("\n")  # bare LF line ends too
    start = lines[0]
    items: list[tuple[str, str]] = []
    if "\n " in text or "\n\t" in text:
        _header_lines(lines, items)  # folded lines
    else:
        # The usual message: no folding, every name one seen before (so already checked).
        keys = _KEYS
        append = items.append
        for i in range(1, len(lines)):
            name, sep, value = lines[i].partition(":")
            key = keys.get(name)
            if key is None or not sep:
                items.clear()
                _header_lines(lines, items)  # the full rules, for the exact error
                break
            append((key, value.strip()))
    # The first value of each header (what lookups read), built once here.
    first = dict(reversed(items))
    if len(first) != len(items):
        _check_repeats(items)  # some header came twice (a Via list, often): rare enough
    headers = Headers.__new__(Headers)
    headers._items = items
    headers._first = first

    clen_text = first.get("content-length")
    if clen_text is not None:
        if not (clen_text.isascii() and clen_text.isdigit()) or len(clen_text) > 10:
            raise SipParseError(f"Malformed Content-Length {clen_text[:20]!r}")
        clen = int(clen_text)
        if clen > len(body):
            raise SipParseError(
                f"Content-Length {clen} exceeds the {len(body)} body bytes received"
            )
        body = body[:clen]

    msg: SipMessage
    if start.startswith("SIP/"):
        proto, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if proto != "SIP/2.0":
            raise SipParseError(f"Unsupported protocol {proto[:20]!r}", 505)
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] in "0789":
            raise SipParseError(f"Malformed status code {code[:10]!r}")
        msg = SipResponse(int(code), reason.strip(), headers, body)
        # What the transaction layer matches on (top Via, CSeq) must be sound: a response
        # mangling one is dropped here, at the edge (§18.1.2), rather than failing deep inside
        # a transaction. From/To stay lazy (most responses never need them parsed); the core
        # drops a message whose late-read header turns out broken.
        msg.via  # noqa: B018 - validates now
        msg.cseq  # noqa: B018
    else:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise SipParseError(f"Malformed request line {start[:80]!r}")
        method, uri, proto = parts
        if proto != "SIP/2.0":
            # §7.1: the version string is case-insensitive (sent in upper case).
            upper = proto.upper()
            if upper.startswith("SIP/") and upper != "SIP/2.0":
                raise SipParseError(f"Unsupported SIP version {proto[:20]!r}", 505)
            if upper != "SIP/2.0":
                raise SipParseError(f"Malformed request line {start[:80]!r}")
        # §7.1, §25.1: a method is a case-sensitive token; one we do not know is answered
        # 405 or 501 by the core, not refused here.
        if method not in METHODS and _TOKEN_RE.fullmatch(method) is None:
            raise SipParseError(f"Malformed method {method[:20]!r}")
        msg = SipRequest(method, uri, headers, body)
        for key in REQUIRED_REQUEST:
            if not first.get(key):
                raise SipParseError(f"Missing {canonical_name(key)} header")
        cseq_method = msg.cseq[1]
        if cseq_method != method:
            raise SipParseError(f"CSeq method {cseq_method[:20]} does not match {method[:20]}")
        msg.via  # noqa: B018 - validates the top Via now, so a bad one gets 400 up front
        try:
            SipUri.check(uri)
        except SipParseError as exc:
            if exc.status == 416:
                raise
            raise SipParseError(f"Malformed Request-URI: {exc.reason}") from exc
    return msg


def make_response(
    req: SipRequest,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to ``req`` per §8.2.6.2: Via, From, Call-ID, CSeq copied; To gets ``to_tag``."""
    rh = req.headers
    items = [kv for kv in rh._items if kv[0] == "via"]
    to = rh.get("to") or ""
    if to_tag is not None and req.to_tag is None:
        to = f"{to};tag={to_tag}"
    items += (
        ("from", rh.get("from") or ""),
        ("to", to),
        ("call-id", req.call_id),
        ("cseq", rh.get("cseq") or ""),
    )
    items += [(header_key(name), value) for name, value in headers]
    h = Headers.__new__(Headers)
    h._items = items
    h._first = None
    return SipResponse(status, reason, h, body)


# Kept from a request we cannot take, for the stateless answer (§8.2.6.2).
_ECHOED: Final = ("via", "from", "to", "call-id", "cseq")
_LINE_END: Final = re.compile(rb"\r?\n")
_TAG_RE: Final = re.compile(rb";[ \t]*tag[ \t]*=", re.I)
# Statuses a stateless answer may carry; anything else from a parse error becomes 400.
STATELESS_STATUSES: Final = frozenset({400, 413, 414, 416, 420, 505, 513})


def stateless_response(data: bytes, status: int, reason: str) -> bytes | None:
    """A response to a request we could not parse or take, built from its raw bytes.

    The Via, From, To, Call-ID and CSeq lines are copied as they came (§8.2.6.2) and a To
    tag is added when there is none: a hash of the request's header section, so that a
    retransmission gets the same tag, as §8.2.7 asks of a stateless UAS. None for what must
    not or cannot be answered: a response, an ACK (§17), a request without any Via line.
    """
    data = data.lstrip(b"\r\n")
    if data[:4].upper() == b"SIP/":
        return None
    cut = header_end(data)
    head = data[: cut[0] if cut is not None and cut[0] < MAX_HEADER else MAX_HEADER]
    lines = _LINE_END.split(head)
    if lines[0][:4] == b"ACK ":
        return None
    kept: dict[str, list[bytes]] = {key: [] for key in _ECHOED}
    last: list[bytes] | None = None
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):  # a folded continuation (§7.3.1)
            if last:
                last[-1] = (last[-1] + b" " + line.strip()).strip()
            continue
        name, sep, value = line.partition(b":")
        last = kept.get(header_key(name.decode("latin-1"))) if sep else None
        if last is not None:
            last.append(value.strip())
    if not kept["via"]:
        return None  # §18.2.1: nowhere to send a response
    to = kept["to"]
    if status > 100 and to:
        value = to[0]
        params = value[value.rfind(b">") + 1 :] if b"<" in value else value
        if _TAG_RE.search(params) is None:
            to[0] = value + b";tag=%08x" % zlib.crc32(head)
    reason = "".join(ch if ch.isprintable() else " " for ch in reason[:120]) or "Bad Request"
    out = [f"SIP/2.0 {status} {reason}".encode("utf-8", "replace")]
    for key in _ECHOED:
        name = canonical_name(key).encode()
        out.extend(name + b": " + value for value in kept[key])
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"
