"""What the sans-IO switch core asks its glue to do, and the results the glue feeds back.

Effects are imperative and pulled with ``SwitchCore.next_effect()``; none touches a socket or
a clock. Results come back through ``SwitchCore.routed()`` and ``SwitchCore.media_opened()``.

One call's effects, in order: ``RouteCall`` -> (``Routed``) -> ``OpenMedia`` ->
(a media session) -> ``CallAnswered`` -> ``CallConfirmed`` -> [``SendDtmf`` ...] ->
``CallEnded``. A call refused
before routing (overload) or by routing gets only ``CallEnded``.
"""

from __future__ import annotations

import msgspec

from switch.dialog import DialogSnapshot
from switch.record import CallRecord


class RouteCall(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Decide who gets a new, admitted call; answer with ``SwitchCore.routed()``."""

    call_id: str
    trunk_id: str
    source: str  # sip | webrtc
    caller: str  # as received: P-Asserted-Identity user, else From user
    called: str  # Request-URI user
    at: float  # when the INVITE arrived (monotonic)
    identity: str | None = None  # RFC 8224 Identity header
    pai: str | None = None  # P-Asserted-Identity (verstat)
    source_ip: str = ""  # where the INVITE came from


class OpenMedia(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Open the call's media; answer with ``SwitchCore.media_opened()``."""

    call_id: str
    offer: bytes  # the caller's SDP offer (empty: offer in the 200, RFC 3261 §13.2.1)
    source_ip: str  # the caller's signalling address (latching behind NAT)
    webrtc: bool


class SendDtmf(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Send a DTMF digit toward the buyer in the call's media (RFC 4733)."""

    call_id: str
    digit: str
    duration_ms: int


class CallAnswered(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Target ``target_index`` answered (its 2xx was relayed to the caller): the slots held
    for the other targets can go, and both dialogs are known, so the call can be ended even
    after a crash (``a_leg``/``b_leg``: the caller's and the buyer's dialog)."""

    call_id: str
    target_index: int
    attempts: int  # B-leg INVITEs sent so far, this one included
    at: float  # the buyer's 2xx (monotonic)
    a_leg: DialogSnapshot
    b_leg: DialogSnapshot


class CallConfirmed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The caller confirmed the answered call (its ACK, or any request in the dialog): from
    now on it counts as connected (docs/cdr.md, "When a call is answered")."""

    call_id: str


class CallEnded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The call is over (exactly once per call): settle it and write its CDR."""

    record: CallRecord


class ProbeAnswered(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An OPTIONS probe (``SwitchCore.send_options``) got its final response, or none."""

    uri: str
    status: int | None  # None: no response before Timer F
    at: float


Effect = (
    RouteCall | OpenMedia | SendDtmf | CallAnswered | CallConfirmed | CallEnded | ProbeAnswered
)


class Routed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Routing's answer: SIP URIs to try in order (failover), and the caller number to present
    to the buyer (routing normalises it; None passes the received one on)."""

    targets: list[str]
    present_as: str | None = None


class Rejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Routing's answer: refuse the call with ``status`` and a Reason naming ``rule``."""

    status: int
    reason: str  # reason phrase
    rule: str


RouteResult = Routed | Rejected
