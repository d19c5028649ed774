"""Anchored media through a real `dce run` (issue 6 "Tests (real peers)").

One switch at a time, in its default DCE_MEDIA_MODE (relay), with DCE_MEDIA_IP on its own
loopback address and a small DCE_RTP_PORTS range; every test runs twice: the relay in the
switch process (DCE_MEDIA_WORKERS=0), then in two media worker processes. Every peer has its own address, so "the buyer
never sees the caller's address" is a real check:

* 127.0.0.1 - the switch's SIP (DCE_SIP_LISTEN) and the SIPp peers of the 1,000-call run;
* 127.0.0.2 - the Python caller: UDP SIP plus its own RTP/RTCP sockets;
* 127.0.0.3 - the Python buyer (a UAS on a fixed SIP port) with its own RTP/RTCP sockets;
* 127.0.0.4 - DCE_MEDIA_IP, where the switch binds its relay ports;
* 127.0.0.9 - a spoofer.

The Python peers are driven step by step from the test (no threads), so each RTP packet is sent
and then read on the far side: the payloads, their order, the source ports and the CDR's packet
and byte counters are all exact.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch, wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, Sipp, sipp_command, start_uas
from tests.integration.sipwire import SipMessage, build_request, parse_sip
from tests.ports import free_port, free_port_range, rtp_socket_pair, unbindable_udp_ports

pytestmark = pytest.mark.integration

SIP_IP = "127.0.0.1"
CALLER_IP = "127.0.0.2"
BUYER_IP = "127.0.0.3"
MEDIA_IP = "127.0.0.4"
SPOOF_IP = "127.0.0.9"
MEDIA_TIMEOUT = 2.0  # DCE_MEDIA_TIMEOUT
WATCHDOG = 1.0  # media/transport.py sweeps for media timeouts once a second
RTP_PORTS = 400  # DCE_RTP_PORTS size: 200 pairs, 100 concurrent calls
BULK_NUMBER = "18005550190"
BULK_CALLS = 1000
BULK_RATE = 100  # half what one slow core carries in relay mode: no overload shedding


@dataclass
class Env:
    sw: Switch
    buyer_port: int
    bulk_port: int
    rtp_low: int
    rtp_high: int
    workers: int  # DCE_MEDIA_WORKERS


# The relay in the switch process (DCE_MEDIA_WORKERS=0), then in two worker processes.
@pytest.fixture(scope="module", params=[0, 2], ids=["in-process", "2-workers"])
def env(switches: Any, request: pytest.FixtureRequest) -> Env:
    workers: int = request.param
    buyer_port = free_port(BUYER_IP)
    bulk_port = free_port()
    low, high = free_port_range(RTP_PORTS)
    config = {
        "trunks": [dce_process.ip_trunk(sources=["127.0.0.0/8"])],
        "campaigns": [
            dce_process.campaign("main", ["+" + CALLED]),
            dce_process.campaign("bulk", ["+" + BULK_NUMBER]),
        ],
        "buyers": [
            # No profiles: the fallback buyer of campaign main (and the Python UAS).
            dce_process.buyer("py", [f"sip:buyer@{BUYER_IP}:{buyer_port}"]),
            # Bids on campaign bulk only: the SIPp UAS of the 1,000-call run.
            dce_process.buyer("bulk", [f"sip:buyer@127.0.0.1:{bulk_port}"],
                              profiles=[{"id": "bulk", "campaign_id": "bulk", "bid": "1.00"}]),
        ],
    }
    sw = switches(config, name=f"media-{workers}", env={
        "DCE_MEDIA_IP": MEDIA_IP,
        "DCE_MEDIA_TIMEOUT": f"{MEDIA_TIMEOUT}s",
        "DCE_RTP_PORTS": f"{low}-{high}",
        "DCE_MEDIA_WORKERS": str(workers),
    })
    assert f"RTP  {MEDIA_IP} ports {low}-{high} (relay)" in sw.tail(), sw.tail()
    assert ("relayed by 2 media worker processes" in sw.tail()) == (workers == 2), sw.tail()
    return Env(sw, buyer_port, bulk_port, low, high, workers)


# ---------------------------------------------------------------------------------------------
# RTP peers


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes,
               marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


class Media:
    """One endpoint's RTP (even port) and RTCP (port + 1) sockets, and what it sent."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.rtp, self.rtcp = rtp_socket_pair(ip)
        self.port = self.rtp.getsockname()[1]
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts = secrets.randbits(32)
        self.sent: list[bytes] = []  # every datagram sent towards the switch
        self.remote: tuple[str, int] | None = None  # the switch's RTP port facing us

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()

    def sdp(self, direction: str = "sendrecv") -> bytes:
        return (
            f"v=0\r\no=py 1 1 IN IP4 {self.ip}\r\ns=-\r\nc=IN IP4 {self.ip}\r\nt=0 0\r\n"
            f"m=audio {self.port} RTP/AVP 0 8 101\r\n"
            f"a=rtcp:{self.port + 1} IN IP4 {self.ip}\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
            f"a={direction}\r\n"
        ).encode()

    def _send(self, sock: socket.socket, data: bytes, rtcp: bool = False) -> bytes:
        assert self.remote is not None
        host, port = self.remote
        sock.sendto(data, (host, port + 1 if rtcp else port))
        self.sent.append(data)
        return data

    def audio(self, payload: bytes) -> bytes:
        """One 20 ms PCMU packet."""
        self.seq += 1
        self.ts += 160
        return self._send(self.rtp, rtp_packet(0, self.seq, self.ts, self.ssrc, payload))

    def dtmf(self, event: int) -> list[bytes]:
        """An RFC 4733 event: 3 packets while the key is down, then 3 copies of the end."""
        self.ts += 160
        out = []
        for i, duration in enumerate((160, 320, 480, 640, 640, 640)):
            end = 0x80 if i >= 3 else 0
            self.seq += 1
            payload = struct.pack("!BBH", event, end | 10, duration)
            out.append(self._send(self.rtp, rtp_packet(101, self.seq, self.ts, self.ssrc,
                                                       payload, marker=i == 0)))
        return out

    def rtcp_report(self) -> bytes:
        """An RTCP sender report without report blocks (RFC 3550 §6.4.1), on port + 1."""
        info = struct.pack("!IIIII", secrets.randbits(32), secrets.randbits(32), self.ts,
                           len(self.sent), sum(map(len, self.sent)) & 0xFFFFFFFF)
        return self._send(self.rtcp, struct.pack("!BBHI", 0x80, 200, 6, self.ssrc) + info,
                          rtcp=True)

    @staticmethod
    def read(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
        sock.settimeout(timeout)
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data, addr

    def expect(self, sock: socket.socket, want: bytes, source: tuple[str, int]) -> None:
        got = self.read(sock)
        assert got is not None, f"{self.ip}: nothing arrived (expected {want[:16].hex()}...)"
        data, addr = got
        assert data == want, f"{self.ip}: payload changed in the relay: {data!r} != {want!r}"
        assert addr == source, f"{self.ip}: packet came from {addr}, not the switch's {source}"

    def silent(self, wait: float = 0.2) -> list[bytes]:
        """Whatever arrives on either socket within ``wait`` seconds (expected: nothing)."""
        got = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.rtp, self.rtcp], [], [], left)
            for sock in ready:
                got.append(sock.recv(65535))
        return got

    @property
    def counters(self) -> tuple[int, int]:
        return len(self.sent), sum(map(len, self.sent))


# ---------------------------------------------------------------------------------------------
# SIP peers


def response_to(req: SipMessage, status: int, reason: str, *, to_tag: str | None = None,
                contact: str | None = None, body: bytes = b"") -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    for name, value in req.headers:
        low = name.lower()
        if low in ("via", "v", "from", "f", "call-id", "i", "cseq"):
            lines.append(f"{name}: {value}")
        elif low in ("to", "t"):
            if to_tag and ";tag=" not in value:
                value += f";tag={to_tag}"
            lines.append(f"{name}: {value}")
    if contact:
        lines.append(f"Contact: {contact}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def uri_of(contact: str) -> str:
    return contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else contact


def method_of(msg: SipMessage) -> str:
    return "" if msg.start.startswith("SIP/2.0") else msg.start.split(" ", 1)[0]


class Caller:
    """A UDP SIP caller on CALLER_IP: INVITE with SDP, ACK, re-INVITE, BYE, answers a BYE."""

    def __init__(self, sw: Switch) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((CALLER_IP, 0))
        self.local = self.sock.getsockname()
        self.target = (sw.host, sw.sip_port)
        self.uri = f"sip:{CALLED}@{sw.host}:{sw.sip_port}"
        self.call_id = f"it-media-{secrets.token_hex(6)}"
        self.from_hdr = f"<sip:{CALLER}@{self.local[0]}:{self.local[1]}>;tag={secrets.token_hex(5)}"
        self.contact = f"<sip:{CALLER}@{self.local[0]}:{self.local[1]}>"
        self.cseq = 0
        self.to_hdr = f"<{self.uri}>"
        self.remote_target = self.uri

    def close(self) -> None:
        self.sock.close()

    def via(self) -> tuple[str, str]:
        return ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};"
                       f"branch=z9hG4bK{secrets.token_hex(8)};rport")

    def request(self, method: str, body: bytes = b"", cseq: int | None = None) -> None:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        headers = [self.via(), ("From", self.from_hdr), ("To", self.to_hdr),
                   ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}"),
                   ("Contact", self.contact), ("Max-Forwards", "70")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        uri = self.uri if method == "INVITE" and cseq == 1 else self.remote_target
        self.sock.sendto(build_request(method, uri, headers, body), self.target)

    def recv(self, timeout: float) -> SipMessage | None:
        """The next message of this call (others, e.g. strays of earlier tests, are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            msg = parse_sip(data)
            if msg.header("Call-ID") == self.call_id:
                return msg
        return None

    def final(self, method: str, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while (msg := self.recv(deadline - time.monotonic())) is not None:
            if msg.status >= 200 and method in (msg.header("CSeq") or ""):
                return msg
        raise AssertionError(f"caller: no final response to {method} within {timeout}s")

    def ack(self, ok: SipMessage) -> None:
        if self.cseq == 1:
            self.to_hdr = ok.header("To") or self.to_hdr
            self.remote_target = uri_of(ok.header("Contact") or self.uri)
        self.request("ACK", cseq=self.cseq)

    def expect_bye(self, timeout: float) -> SipMessage | None:
        """Wait for the switch's BYE and answer it 200; None when none came."""
        deadline = time.monotonic() + timeout
        while (msg := self.recv(deadline - time.monotonic())) is not None:
            if method_of(msg) == "BYE":
                self.sock.sendto(response_to(msg, 200, "OK"), self.target)
                return msg
        return None


class Buyer:
    """The Python UAS on BUYER_IP:buyer_port: answers with its own SDP, answers BYE."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((BUYER_IP, port))
        self.contact = f"<sip:buyer@{BUYER_IP}:{port}>"
        self.tag = secrets.token_hex(5)
        self.call_id: str | None = None  # the B leg's Call-ID, from the first INVITE

    def close(self) -> None:
        self.sock.close()

    def recv(self, method: str, timeout: float = 5.0) -> tuple[SipMessage, Any] | None:
        """The next ``method`` request of this call (the first INVITE starts the call)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            msg = parse_sip(data)
            if method_of(msg) != method:
                continue
            to_tagged = ";tag=" in (msg.header("To") or "")
            if self.call_id is None and method == "INVITE" and not to_tagged:
                self.call_id = msg.header("Call-ID")
            if msg.header("Call-ID") == self.call_id:
                return msg, addr
        return None

    def expect(self, method: str, timeout: float = 5.0) -> tuple[SipMessage, Any]:
        got = self.recv(method, timeout)
        assert got is not None, f"buyer: no {method} within {timeout}s"
        return got

    def respond(self, req: SipMessage, addr: Any, status: int, reason: str,
                body: bytes = b"") -> None:
        self.sock.sendto(response_to(req, status, reason, to_tag=self.tag, contact=self.contact,
                                     body=body), addr)

    def expect_bye(self, timeout: float) -> SipMessage | None:
        got = self.recv("BYE", timeout)
        if got is None:
            return None
        self.respond(*got, 200, "OK")
        return got[0]


# ---------------------------------------------------------------------------------------------
# one call


def sdp_audio(body: bytes) -> tuple[str, int, str]:
    """(c= address, m=audio port, full text) of an SDP body; asserts there is one of each."""
    text = body.decode("latin-1")
    conns = re.findall(r"(?m)^c=IN IP4 (\S+)\r?$", text)
    ports = re.findall(r"(?m)^m=audio (\d+) ", text)
    assert conns and len(ports) == 1, f"no c=/m=audio in SDP:\n{text}"
    assert len(set(conns)) == 1, f"several c= addresses:\n{text}"
    return conns[0], int(ports[0]), text


@dataclass
class Call:
    caller: Caller
    buyer: Buyer
    a: Media
    b: Media
    b_invite: SipMessage  # the INVITE the buyer got from the switch
    ok: SipMessage  # the 200 the caller got from the switch
    answered: float  # monotonic time the caller read the 200

    def hang_up(self) -> None:
        """The caller sends BYE; both legs finish."""
        self.caller.request("BYE")
        assert self.caller.final("BYE").status == 200
        assert self.buyer.expect_bye(5.0) is not None, "the buyer got no BYE"


@pytest.fixture
def call(env: Env) -> Iterator[Call]:
    """An answered call between the Python caller and buyer, each with its RTP sockets."""
    a, b = Media(CALLER_IP), Media(BUYER_IP)
    caller, buyer = Caller(env.sw), Buyer(env.buyer_port)
    try:
        caller.request("INVITE", a.sdp())
        invite, addr = buyer.expect("INVITE")
        buyer.respond(invite, addr, 180, "Ringing")
        buyer.respond(invite, addr, 200, "OK", body=b.sdp())
        ok = caller.final("INVITE")
        answered = time.monotonic()
        assert ok.status == 200, ok.start
        caller.ack(ok)
        buyer.expect("ACK")
        b.remote = sdp_audio(invite.body)[:2]  # the switch's ports facing each leg
        a.remote = sdp_audio(ok.body)[:2]
        yield Call(caller, buyer, a, b, invite, ok, answered)
    finally:
        for thing in (caller, buyer, a, b):
            thing.close()
    env.sw.wait_idle()


def exchange_audio(call: Call, n_a: int, n_b: int, size_a: int = 160, size_b: int = 160) -> None:
    """``n_a`` packets A -> B and ``n_b`` B -> A, each read on the far side and compared."""
    a, b = call.a, call.b
    assert a.remote is not None and b.remote is not None
    for i in range(max(n_a, n_b)):
        if i < n_a:
            sent = a.audio(struct.pack("!4sI", b"A->B", i) + secrets.token_bytes(size_a - 8))
            b.expect(b.rtp, sent, b.remote)
        if i < n_b:
            sent = b.audio(struct.pack("!4sI", b"B->A", i) + secrets.token_bytes(size_b - 8))
            a.expect(a.rtp, sent, a.remote)


# ---------------------------------------------------------------------------------------------
# (1) SDP: both legs see only DCE_MEDIA_IP and the switch's ports


def test_sdp_anchored_on_both_legs(env: Env, call: Call) -> None:
    a, b = call.a, call.b
    b_ip, b_port, offer = sdp_audio(call.b_invite.body)
    a_ip, a_port, answer = sdp_audio(call.ok.body)
    assert (b_ip, a_ip) == (MEDIA_IP, MEDIA_IP), f"buyer offer:\n{offer}\ncaller answer:\n{answer}"
    for port in (a_port, b_port):
        assert env.rtp_low <= port < env.rtp_high and port % 2 == 0, (port, env.rtp_low)
    assert a_port != b_port, "one switch port for both legs"
    # Never a peer's own address or port, anywhere in the body (o=, c=, m=, a=rtcp).
    in_offer, in_answer = set(re.findall(r"\d+", offer)), set(re.findall(r"\d+", answer))
    assert CALLER_IP not in offer and {str(a.port), str(a.port + 1)}.isdisjoint(in_offer), offer
    assert BUYER_IP not in answer and {str(b.port), str(b.port + 1)}.isdisjoint(in_answer), answer
    assert f"a=rtcp:{b_port + 1} IN IP4 {MEDIA_IP}\r\n" in offer, offer
    assert f"a=rtcp:{a_port + 1} IN IP4 {MEDIA_IP}\r\n" in answer, answer
    # Codecs and attributes pass through untouched.
    for text in (offer, answer):
        assert "m=audio" in text and " RTP/AVP 0 8 101\r\n" in text, text
        for line in ("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
                     "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:20",
                     "a=sendrecv"):
            assert line + "\r\n" in text, (line, text)
    call.hang_up()


# ---------------------------------------------------------------------------------------------
# (2) + (5) payloads unchanged both ways, RTCP, RFC 4733 events; the CDR's counters


def test_payload_rtcp_and_dtmf_relayed_unchanged_and_counted(env: Env, call: Call) -> None:
    a, b = call.a, call.b
    assert a.remote is not None and b.remote is not None
    exchange_audio(call, 50, 52, size_a=160, size_b=172)
    # RFC 4733 telephone-events (PT 101), both ways, marker bit and end bit intact.
    for sent in a.dtmf(5):
        b.expect(b.rtp, sent, b.remote)
    for sent in b.dtmf(11):
        a.expect(a.rtp, sent, a.remote)
    # RTCP on RTP port + 1, both ways, out of the switch's RTCP ports.
    for _ in range(3):
        b.expect(b.rtcp, a.rtcp_report(), (MEDIA_IP, b.remote[1] + 1))
        a.expect(a.rtcp, b.rtcp_report(), (MEDIA_IP, a.remote[1] + 1))
    # A few more audio packets after DTMF/RTCP: the stream goes on.
    exchange_audio(call, 5, 5)
    assert not a.silent(0.1) and not b.silent(0.1), "duplicated packets"
    call.hang_up()
    cdr = wait_cdr(env.sw.dsn, call.caller.call_id)
    (pa, ba), (pb, bb) = a.counters, b.counters
    assert pa == 50 + 6 + 3 + 5 and pb == 52 + 6 + 3 + 5
    got = {k: cdr[k] for k in ("disposition", "hangup_side", "packets_a_to_b", "packets_b_to_a",
                               "bytes_a_to_b", "bytes_b_to_a", "packets_dropped")}
    assert got == {"disposition": "answered", "hangup_side": "caller",
                   "packets_a_to_b": pa, "packets_b_to_a": pb,
                   "bytes_a_to_b": ba, "bytes_b_to_a": bb, "packets_dropped": 0}, cdr


# ---------------------------------------------------------------------------------------------
# (3) a spoofed source mid-call is ignored and counted


def test_spoofed_sources_are_dropped_and_counted(env: Env, call: Call) -> None:
    a, b = call.a, call.b
    assert a.remote is not None and b.remote is not None
    # Both legs latched on RTP and RTCP (for a stream that never carried a packet yet, see
    # test_announced_source_wins_over_an_earlier_one_on_the_same_ip).
    exchange_audio(call, 10, 10)
    b.expect(b.rtcp, a.rtcp_report(), (MEDIA_IP, b.remote[1] + 1))
    a.expect(a.rtcp, b.rtcp_report(), (MEDIA_IP, a.remote[1] + 1))
    # Another host, and another port on the caller's own host (RTP Bleed while the latched
    # source is live), aimed at the switch's RTP and RTCP ports on both legs.
    spoofers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    spoofers[0].bind((SPOOF_IP, 0))
    spoofers[1].bind((CALLER_IP, 0))
    targets = [a.remote, (a.remote[0], a.remote[1] + 1), b.remote, (b.remote[0], b.remote[1] + 1)]
    spoofed = 0
    try:
        for i in range(40):
            for sock in spoofers:
                for host, port in targets:
                    head = (200 if port % 2 else 0)
                    pkt = struct.pack("!BBHI", 0x80, head, i, 0) + b"SPOOF" * 20
                    sock.sendto(pkt, (host, port))
                    spoofed += 1
            sent = a.audio(struct.pack("!4sI", b"A->B", i) + secrets.token_bytes(152))
            b.expect(b.rtp, sent, b.remote)
            sent = b.audio(struct.pack("!4sI", b"B->A", i) + secrets.token_bytes(152))
            a.expect(a.rtp, sent, a.remote)
        # The real stream kept flowing above (every packet compared in order); nothing
        # spoofed reached either side, and the spoofers were never sent anything back.
        leaked = a.silent(0.2) + b.silent(0.1)
        assert not leaked, f"spoofed packets reached a leg: {leaked[:3]}"
        for sock in spoofers:
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recvfrom(65535)
    finally:
        for sock in spoofers:
            sock.close()
    exchange_audio(call, 5, 5)
    call.hang_up()
    cdr = wait_cdr(env.sw.dsn, call.caller.call_id)
    assert cdr["packets_dropped"] == spoofed, (spoofed, cdr)
    assert (cdr["packets_a_to_b"], cdr["bytes_a_to_b"]) == a.counters, cdr
    assert (cdr["packets_b_to_a"], cdr["bytes_b_to_a"]) == b.counters, cdr


def test_announced_source_wins_over_an_earlier_one_on_the_same_ip(env: Env, call: Call) -> None:
    """Another socket on the caller's own host sends first to the switch's A-side RTP port.

    The caller's SDP announced CALLER_IP:a.port. Once the real caller sends from exactly that
    address, its stream must reach the buyer and the buyer's stream must reach it; the
    earlier sender must get nothing (RTP Bleed: media handed to whoever sent first).
    """
    a, b = call.a, call.b
    assert a.remote is not None and b.remote is not None
    target = a.remote
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind((CALLER_IP, 0))
    try:
        def spoof(i: int) -> None:
            spoofer.sendto(rtp_packet(0, i, i * 160, 0x5B00F, b"SPOOF" * 32), target)

        for i in range(5):
            spoof(i)  # before the caller's first packet
        b.silent(0.1)  # whatever reached the buyer so far is not the point here
        for i in range(5, 25):
            sent = a.audio(struct.pack("!4sI", b"A->B", i) + secrets.token_bytes(152))
            b.expect(b.rtp, sent, b.remote)
            spoof(i)
            sent = b.audio(struct.pack("!4sI", b"B->A", i) + secrets.token_bytes(152))
            a.expect(a.rtp, sent, a.remote)
        spoofer.settimeout(0.1)
        with pytest.raises(TimeoutError):
            spoofer.recvfrom(65535)
    finally:
        spoofer.close()
        call.hang_up()


# ---------------------------------------------------------------------------------------------
# (4) media timeout, and the hold exemption


def _both_get_bye(call: Call, within: float) -> float:
    """Both legs get the switch's BYE; seconds from the answer to the caller's BYE."""
    bye = call.caller.expect_bye(within)
    at = time.monotonic() - call.answered
    assert bye is not None, f"the caller got no BYE within {within}s of the answer"
    assert call.buyer.expect_bye(2.0) is not None, "the buyer got no BYE"
    return at


def _media_timeout_cdr(env: Env, call: Call) -> dict[str, Any]:
    cdr = wait_cdr(env.sw.dsn, call.caller.call_id)
    got = (cdr["disposition"], cdr["hangup_side"], cdr["sip_status"])
    assert got == ("media_timeout", "system", 200), cdr
    return cdr


def test_silent_call_ends_as_media_timeout(env: Env, call: Call) -> None:
    limit = MEDIA_TIMEOUT + WATCHDOG + 1.0
    at = _both_get_bye(call, limit)
    assert at >= MEDIA_TIMEOUT - 0.1, f"ended {at:.2f}s after the answer, before the timeout"
    cdr = _media_timeout_cdr(env, call)
    assert cdr["packets_a_to_b"] == 0 and cdr["packets_b_to_a"] == 0, cdr


def test_one_silent_leg_ends_as_media_timeout(env: Env, call: Call) -> None:
    """The caller keeps talking, the buyer's side went dead: still a media timeout."""
    limit = MEDIA_TIMEOUT + WATCHDOG + 1.0
    assert call.b.remote is not None
    bye = None
    while bye is None and time.monotonic() - call.answered < limit:
        sent = call.a.audio(secrets.token_bytes(160))
        call.b.expect(call.b.rtp, sent, call.b.remote)
        bye = call.caller.expect_bye(0.02)
    at = time.monotonic() - call.answered
    assert bye is not None, f"no BYE within {limit}s though the buyer sent nothing"
    assert at >= MEDIA_TIMEOUT - 0.1, at
    assert call.buyer.expect_bye(2.0) is not None, "the buyer got no BYE"
    cdr = _media_timeout_cdr(env, call)
    assert cdr["packets_a_to_b"] == len(call.a.sent) and cdr["packets_b_to_a"] == 0, cdr


def test_held_call_is_exempt_from_media_timeout(env: Env, call: Call) -> None:
    """a=sendonly re-INVITE from the caller: the call stays up in silence, then resumes."""
    call.caller.request("INVITE", call.a.sdp("sendonly"))
    reinvite, addr = call.buyer.expect("INVITE")
    ip, port, text = sdp_audio(reinvite.body)
    assert (ip, port) == call.b.remote and "a=sendonly\r\n" in text, text
    call.buyer.respond(reinvite, addr, 200, "OK", body=call.b.sdp("recvonly"))
    ok = call.caller.final("INVITE")
    assert ok.status == 200, ok.start
    ip, port, text = sdp_audio(ok.body)
    assert (ip, port) == call.a.remote and "a=recvonly\r\n" in text, text
    call.caller.ack(ok)
    call.buyer.expect("ACK")
    quiet = MEDIA_TIMEOUT + WATCHDOG + 1.0
    assert call.caller.expect_bye(quiet) is None, "held call ended by the media timeout"
    # Resume, and media flows again through the same ports.
    call.caller.request("INVITE", call.a.sdp("sendrecv"))
    reinvite, addr = call.buyer.expect("INVITE")
    call.buyer.respond(reinvite, addr, 200, "OK", body=call.b.sdp("sendrecv"))
    ok = call.caller.final("INVITE")
    call.caller.ack(ok)
    call.buyer.expect("ACK")
    exchange_audio(call, 5, 5)
    call.hang_up()
    cdr = wait_cdr(env.sw.dsn, call.caller.call_id)
    assert (cdr["disposition"], cdr["hangup_side"]) == ("answered", "caller"), cdr
    assert cdr["duration_ms"] >= quiet * 1000, cdr


def media_workers(sw: Switch) -> set[int]:
    """Pids of the switch's media worker processes (its children running media.worker)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == sw.pid and b"media.worker" in cmdline:
            found.add(int(proc.name))
    return found


def test_dead_media_worker_ends_its_calls_and_is_replaced(env: Env, call: Call) -> None:
    if not env.workers:
        pytest.skip("the relay runs in the switch process")
    exchange_audio(call, 3, 3)
    killed = media_workers(env.sw)
    assert len(killed) == env.workers
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # The call's RTP died with its worker: it ends at once, not DCE_MEDIA_TIMEOUT later.
    _both_get_bye(call, MEDIA_TIMEOUT)
    _media_timeout_cdr(env, call)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        env.sw.tail(200).count('"media worker 0 started') < 2
        or env.sw.tail(200).count('"media worker 1 started') < 2
    ):
        time.sleep(0.1)
    restarted = media_workers(env.sw)
    assert len(restarted) == env.workers and not restarted & killed, env.sw.tail()
    # Calls after it are relayed by the new workers (the module's other tests).


# ---------------------------------------------------------------------------------------------
# (6) 1,000 calls: every relay port is free again


def test_ports_all_free_after_1000_calls(env: Env, sipp: str, workdir: Path) -> None:
    sw = env.sw
    uas = start_uas(workdir, "uas.xml", env.bulk_port, calls=BULK_CALLS, timeout_s=60,
                    name="uas-bulk")
    try:
        cmd, first = sipp_command("uac.xml", "uac-bulk", port=free_port(),
                                  remote=sw.sip_addr, calls=BULK_CALLS, timeout_s=60,
                                  service=BULK_NUMBER, trace=False,
                                  extra=["-r", str(BULK_RATE), "-d", "50"])
        t0 = time.monotonic()
        result = Sipp("uac-bulk", workdir, cmd, first).start().wait(75)
        elapsed = time.monotonic() - t0
        served = uas.wait(20)
    finally:
        uas.kill()
    assert result.ok, result.describe() + "\n" + sw.tail(20)
    assert served.ok, served.describe()
    sw.wait_idle(10)
    prefix = first.rsplit("-", 1)[0]
    rows = fetch(
        sw.dsn, "SELECT disposition, count(*) AS n FROM cdrs WHERE a_call_id LIKE $1 "
                "GROUP BY disposition", prefix + "-%")
    deadline = time.monotonic() + 10
    while sum(r["n"] for r in rows) < BULK_CALLS and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = fetch(
            sw.dsn, "SELECT disposition, count(*) AS n FROM cdrs WHERE a_call_id LIKE $1 "
                    "GROUP BY disposition", prefix + "-%")
    assert {r["disposition"]: r["n"] for r in rows} == {"answered": BULK_CALLS}, (rows, elapsed)
    # Every one of them was anchored: the buyer was offered the switch's media address.
    anchored = len(re.findall(rf"(?m)^c=IN IP4 {re.escape(MEDIA_IP)}\s*$", served.messages()))
    assert anchored == BULK_CALLS, f"{anchored} of {BULK_CALLS} buyer INVITEs had c={MEDIA_IP}"
    # The sockets close one loop iteration after the call ends: allow a moment.
    deadline = time.monotonic() + 2.0
    while (taken := unbindable_udp_ports(MEDIA_IP, env.rtp_low, env.rtp_high)) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert not taken, f"{len(taken)} relay ports still bound after {BULK_CALLS} calls: {taken[:20]}"
    # /metrics: no relay session left open, every port pair back in the pool.
    metrics = sw.metrics()
    gauges = {name: float(value) for name, value in re.findall(
        r"(?m)^(dce_media_(?:sessions_active|ports_free)) (\S+)$", metrics)}
    assert gauges == {"dce_media_sessions_active": 0, "dce_media_ports_free": RTP_PORTS // 2}, (
        "\n".join(ln for ln in metrics.splitlines() if ln.startswith("dce_media")))
