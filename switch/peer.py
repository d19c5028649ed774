"""Where a message came from or goes to: transport, address and, for streams, the connection."""

from __future__ import annotations

from typing import NamedTuple


class Peer(NamedTuple):
    """A remote SIP hop. ``conn`` names the connection for stream transports (0 for UDP)."""

    transport: str  # "udp" | "tcp" | "ws" | "wss"
    host: str
    port: int
    conn: int = 0

    @property
    def reliable(self) -> bool:
        """RFC 3261 §17: reliable transports skip retransmission timers A, E and G."""
        return self.transport != "udp"

    @property
    def via_transport(self) -> str:
        return self.transport.upper()
