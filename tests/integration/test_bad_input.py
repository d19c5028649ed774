"""Bad input over real sockets never takes `dce run` down (issue 3 "Bad input").

Each test sends something broken, then proves the process is alive and still serving: an
OPTIONS over UDP gets 200. The switch runs with DCE_SIP_T1=50ms, so server transactions for
rejected requests linger 64*T1 = 3.2 s (Timer J) instead of 32 s and the flood test can check
that memory comes back to a plateau.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.integration import dce_process
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER
from tests.integration.sipwire import SDP_OFFER, SipSocket, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sw(switches: object) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{free_port()}"])],
    }
    return switches(config, name="badinput", env={"DCE_SIP_T1": "50ms"})  # type: ignore[operator]


def assert_serving(sw: Switch) -> None:
    assert sw.alive(), f"dce run died\n{sw.tail()}"
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        resp = s.options()
    assert resp is not None and resp.status == 200, f"OPTIONS got {resp}\n{sw.tail(10)}"


def headers_without(name: str, s: SipSocket, sw: Switch) -> list[tuple[str, str]]:
    hs = [s.via(), ("From", "<sip:probe@127.0.0.1>;tag=bad1"),
          ("To", f"<sip:{CALLED}@127.0.0.1>"), ("Call-ID", f"it-bad-{os.getpid()}"),
          ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70")]
    return [h for h in hs if h[0].lower() != name.lower()]


@pytest.mark.parametrize("missing", ["Call-ID", "CSeq", "From", "To"])
def test_missing_mandatory_header_400_names_it(sw: Switch, missing: str) -> None:
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        s.send(build_request("OPTIONS", f"sip:127.0.0.1:{sw.sip_port}",
                             headers_without(missing, s, sw)))
        resp, _ = s.recv_final(3.0)
    assert resp is not None and resp.status == 400, resp
    assert missing.lower() in resp.reason.lower(), f"400 reason {resp.reason!r} names no {missing}"
    assert_serving(sw)


def test_garbage_bytes(sw: Switch) -> None:
    blobs = [os.urandom(n) for n in (1, 17, 512, 1400, 9000, 60000)]
    blobs += [b"\r\n\r\n", b"\x00" * 64, b"INVITE\r\n\r\n", b"SIP/2.0\r\n\r\n",
              b"INVITE sip:x SIP/2.0\r\n" + b"\xff\xfe" * 50 + b"\r\n\r\n",
              b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n",  # a malformed response: dropped
              "OPTIONS sip:\u00e9\u00e9 SIP/2.0\r\nVia: \u2603\r\n\r\n".encode()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for blob in blobs:
            raw.sendto(blob, ("127.0.0.1", sw.sip_port))
    time.sleep(0.2)
    assert_serving(sw)


def test_truncated_request_400(sw: Switch) -> None:
    """RFC 3261 §18.3: a datagram that ends before Content-Length says: 400 for a request."""
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        msg = build_request("INVITE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
            s.via(), ("From", f"<sip:{CALLER}@127.0.0.1>;tag=tr1"),
            ("To", f"<sip:{CALLED}@127.0.0.1>"), ("Call-ID", "it-truncated-body"),
            ("CSeq", "1 INVITE"), ("Max-Forwards", "70"), ("Content-Type", "application/sdp")],
            SDP_OFFER)
        msg = msg.replace(f"Content-Length: {len(SDP_OFFER)}".encode(),
                          b"Content-Length: 500")
        s.send(msg)
        resp, _ = s.recv_final(3.0)
        assert resp is not None and resp.status == 400, resp
        # cut in the middle of the headers: no blank line at all
        s.send(msg[: msg.index(b"Call-ID")])
        time.sleep(0.1)
    assert_serving(sw)


def test_largest_udp_datagram(sw: Switch) -> None:
    """65,507 bytes, the IPv4 UDP maximum (a "> 64 KiB" datagram cannot exist over IPv4)."""
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        head = build_request("INVITE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
            s.via(), ("From", f"<sip:{CALLER}@127.0.0.1>;tag=big1"),
            ("To", f"<sip:{CALLED}@127.0.0.1>"), ("Call-ID", "it-big-datagram"),
            ("CSeq", "1 INVITE"), ("Max-Forwards", "70"), ("X-Pad", "{PAD}")])
        pad = 65507 - len(head) + len("{PAD}")
        msg = head.replace(b"{PAD}", b"p" * pad)
        assert len(msg) == 65507
        s.send(msg)
        resp, _ = s.recv_final(1.5)
    # Dropping it or answering 513 Message Too Large are both fine; crashing is not.
    assert resp is None or resp.status in (400, 413, 513), resp
    assert_serving(sw)


def test_oversized_tcp_message(sw: Switch) -> None:
    """A TCP peer announcing a huge body is refused without buffering it."""
    with socket.create_connection(("127.0.0.1", sw.sip_port), timeout=5) as c:
        c.sendall(build_request("INVITE", f"sip:{CALLED}@127.0.0.1", [
            ("Via", "SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKhuge"), ("From", "<sip:a@b>;tag=1"),
            ("To", "<sip:c@d>"), ("Call-ID", "it-huge-tcp"), ("CSeq", "1 INVITE"),
            ("Max-Forwards", "70")]).replace(b"Content-Length: 0", b"Content-Length: 99999999"))
        try:
            for _ in range(20):
                c.sendall(b"x" * 65536)
        except OSError:
            pass  # the switch closed the connection: fine
    assert_serving(sw)


def test_tcp_peer_sends_half_a_message_and_stalls(sw: Switch) -> None:
    """While one TCP peer sits on half a message, others (UDP and TCP) are served."""
    stalled = socket.create_connection(("127.0.0.1", sw.sip_port), timeout=5)
    try:
        stalled.sendall(b"INVITE sip:" + CALLED.encode() + b"@127.0.0.1 SIP/2.0\r\n"
                        b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKstall\r\nFrom: <sip:a@b>")
        time.sleep(0.3)
        assert_serving(sw)
        with SipSocket(("127.0.0.1", sw.sip_port), transport="tcp") as other:
            resp = other.options()
        assert resp is not None and resp.status == 200, resp
    finally:
        stalled.close()


def _flood(sw: Switch, count: int, tag: str) -> int:
    """Send ``count`` BYEs for dialogs that do not exist; return how many 481s came back."""
    got: set[str] = set()
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        batch = 200
        for start in range(0, count, batch):
            for i in range(start, min(count, start + batch)):
                s.send(build_request("BYE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
                    s.via(), ("From", f"<sip:a@127.0.0.1>;tag=f{i}"),
                    ("To", f"<sip:b@127.0.0.1>;tag=t{i}"), ("Call-ID", f"it-flood-{tag}-{i}"),
                    ("CSeq", "2 BYE"), ("Max-Forwards", "70")]))
            deadline = time.monotonic() + 3.0
            while len(got) < min(count, start + batch) and time.monotonic() < deadline:
                msg = s.recv(0.5)
                if msg is None:
                    break
                if msg.status == 481:
                    got.add(msg.header("Call-ID") or "")
    return len(got)


def test_flood_of_unknown_dialog_byes(sw: Switch) -> None:
    """2,000 BYEs for no dialog: every one gets 481, memory plateaus, the switch serves on."""
    assert _flood(sw, 500, "warm") == 500
    time.sleep(3.5)  # Timer J (64*T1) lets the rejected transactions go
    rss0 = sw.rss_kib()
    assert _flood(sw, 2000, "a") == 2000
    time.sleep(3.5)
    rss1 = sw.rss_kib()
    assert _flood(sw, 2000, "b") == 2000
    time.sleep(3.5)
    rss2 = sw.rss_kib()
    # A leak of even 1 KiB per request would show as ~2 MiB per round.
    assert rss2 - rss1 < 4096, f"RSS grew {rss0} -> {rss1} -> {rss2} KiB over two floods"
    assert rss2 - rss0 < 16384, f"RSS grew {rss0} -> {rss1} -> {rss2} KiB"
    assert_serving(sw)
