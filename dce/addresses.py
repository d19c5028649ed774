"""The addresses the switch advertises: in SIP (Via, Contact, From, Call-ID) and in SDP.

The transports bind DCE_SIP_LISTEN; what peers are told to reach is another matter. Behind a
NAT or in a container the listen address is often a wildcard (``0.0.0.0``, ``::``), which no
peer can send to. So SIP carries DCE_SIP_ADVERTISE when set, else the listen address, and a
wildcard listen address is replaced by the primary interface's address: the source address
the kernel picks for a route to a public address (a connected UDP socket's ``getsockname``;
connecting a UDP socket sends nothing). DCE_MEDIA_IP (SDP ``c=``/``o=`` and the RTP sockets)
follows the same rule. Each address picked this way is said at start, with the setting that
overrides it. With no route at all (a host or namespace with only a loopback) the loopback
address is used, and said too.

IPv6 addresses are written in brackets in SIP (RFC 3261 §25.1 ``IPv6reference``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from config.settings import Settings

__all__ = ["Advertised", "advertised", "primary_address", "sip_host"]

# Any public address will do: the kernel only looks the route up (no packet is sent).
_PROBES: Final[dict[int, str]] = {
    socket.AF_INET: "8.8.8.8",
    socket.AF_INET6: "2001:4860:4860::8888",
}
_LOOPBACK: Final[dict[int, str]] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_WILDCARDS: Final = ("0.0.0.0", "::")


def primary_address(family: int) -> str | None:
    """The source address of a route to a public address of ``family``; None without one."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((_PROBES[family], 9))
            host = str(sock.getsockname()[0])
    except OSError:
        return None
    return host.partition("%")[0]  # no zone id: it means nothing to a peer


def sip_host(host: str) -> str:
    """``host`` as written in a SIP URI or Via: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class Advertised:
    """What the switch tells peers. ``sip_host`` is written as in SIP (IPv6 in brackets)."""

    sip_host: str
    sip_port: int
    media_ip: str
    notes: list[str] = field(default_factory=list)  # addresses picked, for the start lines


def advertised(
    settings: Settings, primary: Callable[[int], str | None] = primary_address
) -> Advertised:
    """The advertised SIP address and the media address for ``settings``."""
    notes: list[str] = []
    listen_host, listen_port = settings.sip_listen
    if settings.sip_advertise is not None:
        host, port = settings.sip_advertise
        port = port or listen_port
        notes.append(f"SIP  advertised as {sip_host(host)}:{port} (DCE_SIP_ADVERTISE)")
    else:
        host, port = listen_host, listen_port
        if host in _WILDCARDS:
            host, how = _pick(host, primary)
            notes.append(f"SIP  advertised as {sip_host(host)}:{port}: {how} (listening on "
                         f"{listen_host}); DCE_SIP_ADVERTISE sets it")
    media = settings.media_ip
    if media in _WILDCARDS:
        wildcard = media
        media, how = _pick(media, primary)
        notes.append(f"RTP  on {media} (SDP c=): {how} (media address {wildcard}); "
                     "DCE_MEDIA_IP sets it")
    return Advertised(sip_host=sip_host(host), sip_port=port, media_ip=media, notes=notes)


def _pick(wildcard: str, primary: Callable[[int], str | None]) -> tuple[str, str]:
    """The primary interface's address for a wildcard (IPv6 first for ``::``: a dual-stack
    socket takes IPv4 too), and how it was found; the loopback address without a route."""
    v6 = ipaddress.ip_address(wildcard).version == 6
    families = (socket.AF_INET6, socket.AF_INET) if v6 else (socket.AF_INET,)
    for family in families:
        found = primary(family)
        if found is not None:
            return found, "the primary interface's address"
    return _LOOPBACK[families[0]], "no route to a public address, so the loopback"
