"""SIP URIs, name-addr values and Via headers (RFC 3261 §19.1, §20.10, §20.42, §25.1).

Parameter names are compared case-insensitively and so are the values of ``transport``,
``user``, ``method``, ``ttl`` and ``maddr`` (§19.1.4): SIPp writes ``transport=UDP``.
User parts are %-unescaped (§19.1.2) when read as a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from switch.errors import SipParseError

# Parameters whose values are case-insensitive tokens (§19.1.4).
_CI_VALUES = frozenset({"transport", "user", "method", "maddr", "ttl", "lr"})

# The URI schemes the switch serves (Request-URI, From); any other well-formed one is 416.
URI_SCHEMES: Final = frozenset({"sip", "sips", "tel"})
# §19.1.1 / RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# §25.1 token (protocol name, version and transport in a Via).
_TOKEN: Final = r"[A-Za-z0-9.!%*_+`'~-]+"
# §25.1 quoted-string, with quoted-pairs, at the start of a value.
_QUOTED_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
# §20.42: via-parm = sent-protocol LWS sent-by *( SEMI via-params ), where SLASH, COLON and
# SEMI may carry white space on both sides (SWS) and sent-by is host [ COLON port ]. Folded
# lines are already joined, so LWS here is spaces and tabs. The host is read leniently (a
# hostname, an IPv4 address or an IPv6 reference); its port must be digits.
_VIA_RE: Final = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^\s:;\[\]]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*(;.*)?",
    re.S,
)

# Via.parse's fast path: the usual transports, a host of name characters, no extra spaces.
_VIA_FAST_RE: Final = re.compile(
    r"SIP/2\.0/(UDP|TCP|TLS|SCTP|WSS?|udp|tcp|tls|sctp|wss?) ([A-Za-z0-9.-]+)"
    r"(?::([0-9]{1,5}))?(;.*)?",
    re.S,
)


def split_params(text: str) -> dict[str, str]:
    """``;a=1;B;c="x;y"`` -> {"a": "1", "b": "", "c": "x;y"} with lower-case names."""
    out: dict[str, str] = {}
    if not text:
        return out
    # split_unquoted's own fast path, inlined: most parameter lists hold no quotes.
    parts = split_unquoted(text, ";") if '"' in text or "<" in text else text.split(";")
    names = _PARAM_NAMES
    for part in parts:
        # Partitioning the unstripped part and stripping each side gives what stripping it
        # first would; a part of white space only (no "=") is skipped.
        raw, sep, value = part.partition("=")
        name = names.get(raw)
        if name is None:
            name = raw.strip().lower()
            if len(names) < 1024:  # bounded: a peer inventing names cannot grow it
                names[raw] = name
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = unquote_string(value)
            elif name in _CI_VALUES:
                value = value.lower()
        elif not name:
            continue
        out[name] = value
    return out


# Raw parameter name (white space and case as sent) -> its lookup name; names repeat.
_PARAM_NAMES: dict[str, str] = {}


def unquote_string(value: str) -> str:
    """A quoted-string without its quotes, with quoted-pairs resolved (§25.1)."""
    inner = value[1:-1]
    if "\\" not in inner:
        return inner
    out = []
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\" and i + 1 < len(inner):
            i += 1
            ch = inner[i]
        out.append(ch)
        i += 1
    return "".join(out)


def split_unquoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings and ``<...>`` (header lists, parameters)."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    special = _SPECIAL.get(sep)
    if special is None:
        special = _SPECIAL[sep] = re.compile("[" + re.escape('\\"<>' + sep) + "]")
    # Jump from one character that matters to the next (the regex finds them in C).
    search = special.search
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    pos = 0
    while (m := search(text, pos)) is not None:
        i = m.start()
        ch = text[i]
        pos = i + 1
        if quoted:
            if ch == "\\":
                pos = i + 2  # a quoted-pair: the next character is taken as it is
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            if depth:
                depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = pos
    parts.append(text[start:])
    return parts


# Separator -> the characters split_unquoted stops at: quotes, escapes, angle brackets, it.
_SPECIAL: dict[str, re.Pattern[str]] = {}


@dataclass(slots=True)
class SipUri:
    """A parsed ``sip:``/``sips:`` (or ``tel:``) URI. ``str()`` gives it back canonically."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: str = ""
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, user, password, host, port, params, headers = _split_uri(text)
        return cls(scheme, user, host, port, split_params(params), headers, password)

    @staticmethod
    def check(text: str) -> None:
        """Raise what :meth:`parse` would, without building the URI (the Request-URI check)."""
        _split_uri(text)

    @property
    def user_unescaped(self) -> str | None:
        return unquote(self.user) if self.user is not None else None

    @property
    def transport(self) -> str:
        """The ``transport`` parameter, lower case; ``udp`` when absent (§18)."""
        return self.params.get("transport", "tcp" if self.scheme == "sips" else "udp")

    def __str__(self) -> str:
        if self.scheme == "tel":
            out = f"tel:{self.user}"
        else:
            out = f"{self.scheme}:"
            if self.user is not None:
                out += self.user
                if self.password is not None:
                    out += ":" + self.password
                out += "@"
            out += f"[{self.host}]" if ":" in self.host else self.host
            if self.port is not None:
                out += f":{self.port}"
        for name, value in self.params.items():
            out += f";{name}={value}" if value else f";{name}"
        if self.headers:
            out += "?" + self.headers
        return out


def _split_uri(
    text: str,
) -> tuple[str, str | None, str | None, str, int | None, str, str]:
    """(scheme, user, password, host, port, parameters, headers) of a URI, or SipParseError."""
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in URI_SCHEMES:
        if sep and rest and _SCHEME_RE.fullmatch(scheme):
            # A well-formed URI we do not serve: 416, not 400 (§8.2.2.1, §21.4.15).
            raise SipParseError(f"Unsupported URI Scheme {scheme[:20]!r}", 416)
        raise SipParseError(f"malformed URI {text[:80]!r}")
    if scheme == "tel":
        number, _, params = rest.partition(";")
        return "tel", number, None, "", None, params, ""
    rest, _, headers = rest.partition("?")
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, _, pw = userinfo.partition(":")
        password = pw or None
    hostport, _, params = rest.partition(";")
    host, port = _split_hostport(hostport, text)
    return scheme, user, password, host, port, params, headers


def _split_hostport(hostport: str, context: str) -> tuple[str, int | None]:
    hostport = hostport.strip()
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {context[:80]!r}")
        host = hostport[1:end]
        rest = hostport[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise SipParseError(f"missing host in {context[:80]!r}")
    if port_text:
        # isascii: str.isdigit() also accepts digits int() refuses (superscripts).
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            raise SipParseError(f"bad port {port_text[:10]!r} in {context[:80]!r}")
        return host.lower(), int(port_text)
    return host.lower(), None


@dataclass(slots=True)
class NameAddr:
    """``"Alice" <sip:a@h>;tag=x`` (or an addr-spec ``sip:a@h;tag=x``) per §20.10/§20.20."""

    display: str | None
    uri: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        value = value.strip()
        display: str | None
        if value[:1] == '"':
            # A quoted display name may hold '<', ';' or ','; it must be closed (§25.1) and
            # followed by <addr-spec> (§20.10).
            end = value.find('"', 1) + 1
            if end and value.find("\\", 1, end) < 0:
                display = value[1 : end - 1]
            else:  # escapes: read the quoted-string fully
                quoted = _QUOTED_RE.match(value)
                if quoted is None:
                    raise SipParseError(f"unterminated quoted string in {value[:80]!r}")
                end = quoted.end()
                display = unquote_string(value[:end])
            lt = value.find("<", end)
            if lt < 0 or (lt > end and value[end:lt].strip()):
                raise SipParseError(f"quoted display name without <URI> in {value[:80]!r}")
        else:
            lt = value.find("<")
            display = (value[:lt].strip() or None) if lt >= 0 else None
        if lt >= 0:
            gt = value.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unterminated '<' in {value[:80]!r}")
            return cls(display, value[lt + 1 : gt].strip(), split_params(value[gt + 1 :]))
        # addr-spec form: parameters after the URI belong to the header, not the URI (§20.10).
        uri, _, params = value.partition(";")
        if not uri:
            raise SipParseError("empty address")
        return cls(None, uri.strip(), split_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def parsed_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __str__(self) -> str:
        out = f"<{self.uri}>"
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            out = f'"{escaped}" {out}'
        for name, value in self.params.items():
            out += f";{name}={value}" if value else f";{name}"
        return out


@dataclass(slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=z9hG4bK...;rport`` (§20.42, RFC 3581)."""

    transport: str  # upper case: UDP, TCP, WS, WSS, TLS, SCTP or any other token
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)
    # protocol-name "/" protocol-version: "SIP/2.0" but for the odd peer (any token, §20.42).
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, value: str) -> Via:
        """One via-parm as the ABNF of §20.42 allows it (white space around ``/``, ``:`` and
        ``;``, any transport token, IPv6 references)."""
        # The usual "SIP/2.0/UDP host:port;params" by a simpler pattern first: taken only
        # when the value is plainly within the grammar (one space, a host of name characters,
        # a port up to 65535); anything else goes the general pattern's way below.
        fast = _VIA_FAST_RE.fullmatch(value)
        if fast is not None:
            transport, host, port_text, params = fast.groups()
            port = int(port_text) if port_text is not None else None
            if port is None or port <= 65535:
                return cls(
                    transport.upper(), host.lower(), port, split_params(params) if params else {}
                )
        m = _VIA_RE.fullmatch(value)
        if m is None:
            raise SipParseError(f"malformed Via {value.strip()[:60]!r}")
        name, version, transport, host, port_text, params = m.groups()
        if host[0] == "[":
            host = host[1:-1]
            if ":" not in host:
                raise SipParseError(f"malformed IPv6 reference in Via {value.strip()[:60]!r}")
        port = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise SipParseError(f"bad port {port_text[:10]!r} in Via {value.strip()[:60]!r}")
        proto = "SIP/2.0" if name.upper() == "SIP" and version == "2.0" else f"{name}/{version}"
        return cls(
            transport.upper(), host.lower(), port, split_params(params) if params else {}, proto
        )

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        out = f"{self.protocol}/{self.transport} {host}"
        if self.port is not None:
            out += f":{self.port}"
        for name, value in self.params.items():
            out += f";{name}={value}" if value else f";{name}"
        return out
