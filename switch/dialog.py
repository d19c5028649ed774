"""SIP dialogs as the B2BUA keeps them, one per leg (RFC 3261 §12).

A dialog is identified by Call-ID plus the local and remote tags. The switch builds in-dialog
requests (ACK for 2xx, BYE, relayed re-INVITE/UPDATE/INFO) from it: Request-URI is the remote
target (the peer's Contact), Route is the route set, CSeq grows by one per new request
(§12.2.1.1); ACK and CANCEL reuse the CSeq number of the request they belong to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from switch.message import Headers, SipRequest, SipResponse
from switch.peer import Peer
from switch.uri import NameAddr


class Leg(enum.Enum):
    """The B2BUA's two sides: A is the caller's dialog, B the buyer's."""

    A = "a"
    B = "b"

    @property
    def other(self) -> Leg:
        return Leg.B if self is Leg.A else Leg.A


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str  # our From/To header value (name-addr without tag)
    remote_uri: str
    local_seq: int
    remote_seq: int | None
    remote_target: str  # Request-URI for requests we send
    # A tuple: most dialogs have no route set, and () is one shared object the collector
    # never walks, where an empty list per dialog is one more tracked object (issue 13).
    route_set: tuple[str, ...] = ()
    peer: Peer | None = None  # where in-dialog requests go (the flow, for callers)
    contact: str = ""  # our Contact header value for this leg
    confirmed: bool = False

    def snapshot(self) -> DialogSnapshot:
        """What it takes to end this dialog later, even from another process (crash recovery)."""
        peer = self.peer
        return DialogSnapshot(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=self.remote_tag,
            local_uri=self.local_uri,
            remote_uri=self.remote_uri,
            local_seq=self.local_seq,
            remote_target=self.remote_target,
            route_set=list(self.route_set),
            transport=peer.transport if peer is not None else "udp",
            host=peer.host if peer is not None else "",
            port=peer.port if peer is not None else 5060,
        )

    def next_seq(self) -> int:
        self.local_seq += 1
        return self.local_seq

    def request(
        self,
        method: str,
        branch: str,
        via_host: str,
        via_port: int,
        *,
        seq: int | None = None,
        body: bytes = b"",
        extra: list[tuple[str, str]] | None = None,
    ) -> SipRequest:
        """An in-dialog request per §12.2.1.1 with our Via on top."""
        cseq = self.next_seq() if seq is None else seq
        transport = self.peer.via_transport if self.peer is not None else "UDP"
        h = Headers()
        h.add("via", f"SIP/2.0/{transport} {via_host}:{via_port};branch={branch};rport")
        h.add("max-forwards", "70")
        for route in self.route_set:
            h.add("route", route)
        h.add("from", f"{self.local_uri};tag={self.local_tag}")
        to = (
            self.remote_uri
            if self.remote_tag is None
            else f"{self.remote_uri};tag={self.remote_tag}"
        )
        h.add("to", to)
        h.add("call-id", self.call_id)
        h.add("cseq", f"{cseq} {method}")
        if self.contact and method not in ("BYE", "ACK", "CANCEL"):
            h.add("contact", self.contact)
        for name, value in extra or ():
            h.add(name, value)
        return SipRequest(method, self.remote_target, h, body)


class DialogSnapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A dialog as plain data: enough to send a BYE in it (RFC 3261 §12.2.1.1)."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: str
    remote_uri: str
    local_seq: int
    remote_target: str
    route_set: list[str]
    transport: str
    host: str
    port: int

    def dialog(self, contact: str, seq_gap: int = 0) -> Dialog:
        """A dialog to send requests in, its CSeq moved ``seq_gap`` ahead: requests sent
        after the snapshot was taken (a re-INVITE) used numbers we no longer know, and a CSeq
        may jump forward but never back (§12.2.1.1)."""
        return Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=self.remote_tag,
            local_uri=self.local_uri,
            remote_uri=self.remote_uri,
            local_seq=self.local_seq + seq_gap,
            remote_seq=None,
            remote_target=self.remote_target,
            route_set=tuple(self.route_set),
            peer=Peer(self.transport, self.host, self.port),
            contact=contact,
            confirmed=True,
        )


def strip_tag(value: str) -> str:
    """A From/To value without its tag parameter (the dialog's URI part)."""
    na = NameAddr.parse(value)
    na.params.pop("tag", None)
    return str(na)


def target_from(msg: SipRequest | SipResponse, fallback: str) -> str:
    """The remote target: the URI of the first Contact, else ``fallback`` (§12.1.1/§12.1.2)."""
    contact = msg.headers.get_list("contact")
    if contact:
        try:
            return NameAddr.parse(contact[0]).uri
        except Exception:
            return fallback
    return fallback
