"""Loopback ports for tests: free SIP/HTTP ports, RTP ranges, RTP/RTCP socket pairs.

Unit tests (media relay, WebRTC bridge) and integration tests (``dce run``, SIPp, baresip) both
need ports that nothing else holds. Single ports come from below the kernel's ephemeral range
and port ranges from above it, so that no outgoing socket anywhere can take one of them. A single
port (or RTP/RTCP pair) handed out once is not handed out again in the same test process.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from pathlib import Path

_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral (local) port range, inclusive; Linux's default if unreadable."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _udp_and_tcp_free(host: str, port: int) -> bool:
    with contextlib.ExitStack() as stack:
        try:
            u = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            u.bind((host, port))
            t = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            t.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (SIP listens on both), not handed out yet.

    Ports come from below the kernel's ephemeral range: polling a not-yet-listening port in
    that range can make the client connect to itself (TCP simultaneous open) and then hold
    the very port the server wants.
    """
    eph_lo, _ = ephemeral_range()
    lo, hi = 10000, min(eph_lo, 32768) - 1
    for _ in range(500):
        port = lo + secrets.randbelow(hi - lo)
        if port in _handed_out:
            continue
        if _udp_and_tcp_free(host, port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free UDP+TCP port found")


def free_port_range(size: int = 200) -> tuple[int, int]:
    """An even-aligned range of ``size`` ports above the ephemeral range for DCE_RTP_PORTS."""
    _, eph_hi = ephemeral_range()
    lo = max(eph_hi + 1, 61000)
    base = lo + 2 * secrets.randbelow((65000 - lo - size) // 2)
    return base, base + size - 1


def port_bound(port: int, host: str = "127.0.0.1", transport: str = "udp") -> bool:
    """True when something listens on ``host:port`` (we cannot bind it ourselves)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_bound(port: int, host: str = "127.0.0.1", transport: str = "udp",
               timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_bound(port, host, transport):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing bound {transport} {host}:{port} within {timeout}s")
        time.sleep(0.02)


def rtp_socket_pair(host: str = "127.0.0.1") -> tuple[socket.socket, socket.socket]:
    """Two bound UDP sockets on ``host``: RTP on an even port, RTCP on the next (RFC 3550 §11).

    Ports come from below the kernel's ephemeral range, like :func:`free_port`.
    """
    eph_lo, _ = ephemeral_range()
    lo, hi = 10000, min(eph_lo, 32768) - 2
    for _ in range(500):
        port = (lo + secrets.randbelow(hi - lo)) & ~1
        if port in _handed_out or port + 1 in _handed_out:
            continue
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            rtcp.bind((host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        _handed_out.update((port, port + 1))
        for s in (rtp, rtcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        return rtp, rtcp
    raise RuntimeError(f"no free even/odd UDP port pair on {host}")


def unbindable_udp_ports(host: str, low: int, high: int) -> list[int]:
    """The ports of ``low..high`` (inclusive) that cannot be bound for UDP on ``host`` now."""
    taken = []
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                taken.append(port)
    return taken
