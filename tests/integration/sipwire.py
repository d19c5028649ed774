"""Hand-written SIP over raw sockets, for what SIPp cannot do (malformed input, SHA-256 digest).

:class:`SipSocket` sends SIP over UDP or TCP and reads whole messages back; :func:`parse_sip`
and :func:`build_request` are deliberately naive, independent of the switch's own parser.
:class:`DigestUac` is a small Python caller that answers digest challenges (SIPp 3.6 can only
compute MD5). :class:`UdpWatcher` listens on a buyer port to prove that nothing reached it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.integration.sipp import CALLED, CALLER


@dataclass
class SipMessage:
    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def status(self) -> int:
        parts = self.start.split(" ", 2)
        return int(parts[1]) if self.start.startswith("SIP/2.0 ") else 0

    @property
    def reason(self) -> str:
        parts = self.start.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_sip(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers = []
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return SipMessage(lines[0], headers, body)


def build_request(method: str, uri: str, headers: Sequence[tuple[str, str]],
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {uri} SIP/2.0"] + [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class SipSocket:
    """A UDP (or TCP) socket that speaks SIP to the switch and reads whole responses."""

    def __init__(self, target: tuple[str, int], local_ip: str = "127.0.0.1",
                 transport: str = "udp") -> None:
        self.target = target
        self.transport = transport
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.sock.bind((local_ip, 0))
        else:
            self.sock = socket.create_connection(target, timeout=5, source_address=(local_ip, 0))
        self.local = self.sock.getsockname()
        self._buf = b""

    @property
    def via_transport(self) -> str:
        return self.transport.upper()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.target)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 3.0) -> SipMessage | None:
        """The next SIP message, or None when nothing arrived within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                data, _ = self.sock.recvfrom(65535)
                return parse_sip(data)
            deadline = time.monotonic() + timeout
            while True:
                msg = self._frame()
                if msg is not None:
                    return msg
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self._buf += chunk
        except TimeoutError:
            return None

    def _frame(self) -> SipMessage | None:
        self._buf = self._buf.lstrip(b"\r\n")
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", self._buf[:end])
        length = int(m.group(1)) if m else 0
        total = end + 4 + length
        if len(self._buf) < total:
            return None
        data, self._buf = self._buf[:total], self._buf[total:]
        return parse_sip(data)

    def recv_final(self, timeout: float = 5.0) -> tuple[SipMessage | None, list[SipMessage]]:
        """Read until a final response (>= 200); returns it and every message read."""
        seen: list[SipMessage] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            seen.append(msg)
            if msg.status >= 200:
                return msg, seen
        return None, seen

    def via(self, branch: str | None = None) -> tuple[str, str]:
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        return ("Via", f"SIP/2.0/{self.via_transport} {self.local[0]}:{self.local[1]};"
                       f"branch={branch};rport")

    def options(self, call_id: str | None = None) -> SipMessage | None:
        """Send OPTIONS outside a dialog and return the final response."""
        req = build_request("OPTIONS", f"sip:{self.target[0]}:{self.target[1]}", [
            self.via(),
            ("From", f"<sip:keepalive@{self.local[0]}>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:{self.target[0]}:{self.target[1]}>"),
            ("Call-ID", call_id or f"it-options-{secrets.token_hex(6)}"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ])
        self.send(req)
        final, _ = self.recv_final(3.0)
        return final


SDP_OFFER = (
    b"v=0\r\no=py 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)


def digest_response(algorithm: str, username: str, realm: str, password: str, method: str,
                    uri: str, nonce: str, nc: str, cnonce: str, qop: str = "auth") -> str:
    """RFC 7616 §3.4.1 response for qop=auth (RFC 8760: MD5 or SHA-256), lower-case hex."""
    name = algorithm.upper()
    hname = {"MD5": "md5", "SHA-256": "sha256"}[name]

    def h(text: str) -> str:
        return hashlib.new(hname, text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def parse_challenge(value: str) -> dict[str, str]:
    """The parameters of one ``Digest ...`` challenge (names lower-case, quotes removed)."""
    scheme, _, rest = value.strip().partition(" ")
    assert scheme.lower() == "digest", value
    params = {}
    for m in re.finditer(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)', rest):
        v = m.group(2)
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[m.group(1).lower()] = v
    return params


@dataclass
class CallOutcome:
    challenge: SipMessage | None
    final: SipMessage | None
    seen: list[SipMessage]
    bye_response: SipMessage | None = None


class DigestUac:
    """A minimal Python caller: INVITE, answers one digest challenge, ACK, hold, BYE.

    It exists because SIPp 3.6 computes only MD5 digests; RFC 8760 SHA-256 needs our own code.
    """

    def __init__(self, sock: SipSocket, username: str, password: str, algorithm: str,
                 called: str = CALLED) -> None:
        self.sock = sock
        self.username = username
        self.password = password
        self.algorithm = algorithm
        self.call_id = f"it-digest-{algorithm.lower()}-{secrets.token_hex(5)}"
        self.from_tag = secrets.token_hex(5)
        host, port = sock.target
        self.uri = f"sip:{called}@{host}:{port}"
        self.local = f"{sock.local[0]}:{sock.local[1]}"

    def _invite(self, cseq: int, auth: str | None, branch: str) -> bytes:
        headers = [
            self.sock.via(branch),
            ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", f"<{self.uri}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<sip:{CALLER}@{self.local}>"),
            ("Max-Forwards", "70"),
        ]
        if auth is not None:
            headers.append(("Authorization", auth))
        headers.append(("Content-Type", "application/sdp"))
        return build_request("INVITE", self.uri, headers, SDP_OFFER)

    def _ack(self, uri: str, to: str, cseq: int, branch: str) -> bytes:
        return build_request("ACK", uri, [
            self.sock.via(branch), ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", to), ("Call-ID", self.call_id), ("CSeq", f"{cseq} ACK"),
            ("Max-Forwards", "70")])

    def authorization(self, challenge: SipMessage) -> str:
        offers = [parse_challenge(v) for v in challenge.all("WWW-Authenticate")]
        chosen = [o for o in offers if o.get("algorithm", "MD5").upper() == self.algorithm]
        assert chosen, f"no {self.algorithm} challenge among {offers}"
        c = chosen[0]
        cnonce, nc = secrets.token_hex(8), "00000001"
        resp = digest_response(self.algorithm, self.username, c["realm"], self.password,
                               "INVITE", self.uri, c["nonce"], nc, cnonce)
        return (f'Digest username="{self.username}", realm="{c["realm"]}", '
                f'nonce="{c["nonce"]}", uri="{self.uri}", response="{resp}", '
                f'algorithm={self.algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"')

    def call(self, hold: float = 0.3, timeout: float = 8.0) -> CallOutcome:
        b1 = "z9hG4bK" + secrets.token_hex(8)
        self.sock.send(self._invite(1, None, b1))
        first, seen = self.sock.recv_final(timeout)
        if first is None or first.status != 401:
            return CallOutcome(None, first, seen)
        self.sock.send(self._ack(self.uri, first.header("To") or "", 1, b1))
        b2 = "z9hG4bK" + secrets.token_hex(8)
        self.sock.send(self._invite(2, self.authorization(first), b2))
        final, seen2 = self.sock.recv_final(timeout)
        outcome = CallOutcome(first, final, seen + seen2)
        if final is None:
            return outcome
        to = final.header("To") or ""
        if final.status >= 300:
            self.sock.send(self._ack(self.uri, to, 2, b2))
            return outcome
        contact = final.header("Contact") or f"<{self.uri}>"
        target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else contact
        self.sock.send(self._ack(target, to, 2, "z9hG4bK" + secrets.token_hex(8)))
        time.sleep(hold)
        self.sock.send(build_request("BYE", target, [
            self.sock.via(), ("From", f"<sip:{CALLER}@{self.local}>;tag={self.from_tag}"),
            ("To", to), ("Call-ID", self.call_id), ("CSeq", "3 BYE"), ("Max-Forwards", "70")]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.sock.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            if msg.status and "BYE" in (msg.header("CSeq") or ""):
                outcome.bye_response = msg
                break
        return outcome


class UdpWatcher:
    """A UDP socket on a buyer port that answers nothing: proves no request reached it."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))

    def received(self, wait: float = 0.5) -> list[bytes]:
        got = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(65535))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.sock.close()
