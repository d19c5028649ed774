"""Who really sent a request that came through a trusted SIP proxy (sans-IO).

Behind Kamailio's dispatcher (config/kamailio/, docs/cluster.md) every packet comes from the
proxy's address, so whatever the switch decides by source address (trunk admission, the
password-guessing guard, per-source rate limits and bans, the media latching hint, log lines)
would see one peer. The proxy names the sender of each request it forwards in one header it
adds, after removing any copy that came from outside::

    X-DCE-Source: 192.0.2.10:5060;transport=udp        ([2001:db8::1]:5060 for IPv6)

The switch believes that header only on a packet whose own source address is a trusted proxy
(DCE_TRUSTED_PROXIES: IP addresses and networks). From anywhere else it is ignored (and
counted), so nobody gets a trunk's identity by writing its address. On a trusted proxy's
packet the *last* such header counts: the one the proxy appended. A trusted proxy's packet
without a usable header (its own OPTIONS probes, the responses it relays, a value that does
not parse) is the proxy's own, and its source is the proxy's address. Digest credentials
need nothing: they travel inside the request, untouched by the proxy.

The same answer comes two ways: :meth:`ProxyTrust.identity` reads a raw message (the
transports count rate limits before anything is parsed; dce/admit.py's stateless refusals),
:meth:`ProxyTrust.source_of` a parsed request (admission). Where to *send* never changes:
responses and in-dialog requests go to the hop the message came from (the proxy), or along the
route set. A trusted proxy is never rate-limited nor banned itself (dce/admit.py
``TrunkAdmitter.trusted``); its packets count against the sources they name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from switch.message import SipRequest
from switch.peer import Peer

__all__ = ["SOURCE_HEADER", "ProxyStats", "ProxyTrust", "format_source", "parse_source"]

SOURCE_HEADER: Final = "X-DCE-Source"
_KEY: Final = SOURCE_HEADER.lower()
# The header in a raw message: a line of its own (header names never start with white space).
_RAW: Final = re.compile(rb"\n" + _KEY.encode() + rb"[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CACHE_MAX: Final = 4096  # trust answers remembered for hosts matched against networks

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_source(value: str | bytes) -> tuple[str, int] | None:
    """``"192.0.2.10:5060;transport=udp"`` -> ("192.0.2.10", 5060); ``"[2001:db8::1]:5060"``
    -> ("2001:db8::1", 5060); a bare address has port 0. None for anything else (a host
    name, a bad port): an unusable value names nobody."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = value.partition(";")[0].strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if sep and port and not port.startswith(":"):
            return None
        port = port[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # a bare IPv4 or IPv6 address
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5
                     and 0 < int(port) <= 65535):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(port) if port else 0


def format_source(host: str, port: int, transport: str = "udp") -> str:
    """The header value a proxy writes (what the shipped Kamailio config sends)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port};transport={transport}"


@dataclass(slots=True)
class ProxyStats:
    """Counters for /metrics."""

    named: int = 0  # requests whose source a trusted proxy named (admission path)
    ignored: int = 0  # X-DCE-Source headers from sources that are not trusted proxies
    unusable: int = 0  # a trusted proxy's X-DCE-Source that did not parse


class ProxyTrust:
    """The trusted proxies and what their packets say about the real source (module docstring).

    ``networks``: IP addresses or networks (``"10.0.0.5"``, ``"10.0.0.0/24"``); ValueError
    naming the one that is neither.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        ranges: list[_Network] = []
        for text in networks:
            try:
                net = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {text!r}") from exc
            if net.num_addresses == 1:
                exact.add(str(net.network_address))
            else:
                ranges.append(net)
        self._exact = frozenset(exact)
        self._ranges = tuple(ranges)
        self._cache: dict[str, bool] = {}
        self.stats = ProxyStats()

    def __bool__(self) -> bool:
        """Whether any proxy is trusted (else every source is its own)."""
        return bool(self._exact or self._ranges)

    def trusts(self, host: str) -> bool:
        """Whether ``host`` (a packet's source address) is a trusted proxy."""
        if host in self._exact:
            return True
        if not self._ranges:
            return False
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
            if str(address) in self._exact:
                return True
        found = any(address in net for net in self._ranges)
        if len(self._cache) >= _CACHE_MAX:
            self._cache = {}  # sources are unbounded; the proxies are few and come back
        self._cache[host] = found
        return found

    def identity(self, data: bytes, host: str) -> str:
        """The address a raw message from ``host`` counts against: the source a trusted proxy
        names, else ``host`` itself."""
        if not self.trusts(host):
            return host
        named = self._from_bytes(data)
        return named[0] if named is not None else host

    def source_of(self, req: SipRequest, peer: Peer) -> Peer:
        """The request's real source: ``peer`` with the host and port a trusted proxy named
        (transport and connection stay the hop's), else ``peer`` itself. For identity only,
        never an address to send to."""
        values = req.headers.get_all(_KEY)
        if not values:
            return peer
        if not self.trusts(peer.host):
            self.stats.ignored += 1
            return peer
        named = parse_source(values[-1])
        if named is None:
            self.stats.unusable += 1
            return peer
        self.stats.named += 1
        host, port = named
        return Peer(peer.transport, host, port, peer.conn)

    @staticmethod
    def _from_bytes(data: bytes) -> tuple[str, int] | None:
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end]
        found = _RAW.findall(head)
        return parse_source(found[-1]) if found else None
