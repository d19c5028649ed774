"""One inbound call as the B2BUA sees it: the caller's leg (A), the buyer attempts (B), the CDR.

Theory of operation
-------------------
A call is created when an admitted INVITE arrives (state ROUTING, 100 Trying already sent).
The switch core asks the glue to route it (compliance gate, then the exchange) and receives
the ordered targets. Each target is one :class:`Attempt`: a fresh B-leg INVITE with its own
Call-ID and tags. Failover rules (SPEC.md "SIP"):

    ROUTING --targets--> CALLING --1xx--> EARLY --2xx--> ANSWERED --BYE--> ENDED
       |                   |  \\           |                  \\ (A ACK -> B ACK, end to end)
       |                   |   4xx/5xx/6xx (not 487), Timer B, ring timeout
       |                   |        -> next target (CALLING) or, none left, A gets the
       |                   |           last final status -> ENDED
       +-- rejected/no buyer: 403/480 + Reason -> ENDED
    CANCEL from A (before answer): A gets 200 + 487 at once; the live attempt is cancelled
    (after its first provisional, RFC 3261 §9.1) and its late 2xx, if any, is ACKed and BYEd.

Abandoned attempts (ring timeout, A cancelled) stay known to the core until their transaction
ends, so a late 2xx from a buyer that we no longer want is ACKed and hung up, never leaked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from exchange.routing import CallFacts, Target
from media.session import MediaSession
from store.cdr import Cdr, Disposition, HangupSide
from switch.dialog import Dialog
from switch.message import SipRequest
from switch.peer import Peer


class CallState(enum.Enum):
    ROUTING = "routing"
    CALLING = "calling"
    EARLY = "early"
    ANSWERED = "answered"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(slots=True)
class Attempt:
    """One B-leg INVITE toward one target."""

    index: int
    target: Target
    invite: SipRequest
    tx: str
    peer: Peer
    call_id: str
    from_tag: str
    ring_deadline: float
    provisional: bool = False
    cancel_pending: bool = False  # CANCEL wanted before any provisional arrived (§9.1)
    cancelled: bool = False
    abandoned: bool = False  # no longer the call's live attempt
    final_status: int | None = None
    dialog: Dialog | None = None
    ack: SipRequest | None = None  # our ACK for its 2xx, re-sent on 2xx retransmissions


@dataclass(slots=True)
class Reject:
    """Why routing refused a call: the SIP answer and the CDR fields."""

    status: int
    reason: str
    rule: str
    disposition: Disposition


@dataclass(slots=True)
class Call:
    call_id: str  # the switch's own id (CDR key)
    a_invite: SipRequest
    a_tx: str
    a_peer: Peer
    a_tag: str
    facts: CallFacts
    received_mono: float
    state: CallState = CallState.ROUTING
    a_dialog: Dialog | None = None
    targets: list[Target] = field(default_factory=list)
    attempt: Attempt | None = None
    attempts: int = 0
    last_status: int | None = None
    answered_mono: float | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    ended_mono: float | None = None
    hangup_side: HangupSide | None = None
    final_status: int | None = None  # what A got as final
    disposition: Disposition | None = None
    a_acked: bool = False
    # Extra CDR fields filled by routing (compliance verdict, auction record ...).
    cdr_extra: dict[str, object] = field(default_factory=dict)
    cdr_written: bool = False
    media: MediaSession | None = None
    byes_pending: int = 0  # our BYE transactions still running; the call is kept until 0

    def build_cdr(self) -> Cdr:
        """The CDR as far as the switch knows it; money is settled by the glue."""
        ended = self.ended_at or self.facts.received_at
        duration_ms = 0
        if self.answered_mono is not None and self.ended_mono is not None:
            duration_ms = max(0, int((self.ended_mono - self.answered_mono) * 1000))
        att = self.attempt
        cdr = Cdr(
            call_id=self.call_id,
            a_call_id=self.a_invite.call_id,
            b_call_id=att.call_id if att is not None else None,
            trunk_id=self.facts.trunk_id or None,
            source=self.facts.source,
            caller=self.facts.caller,
            called=self.facts.called,
            received_at=self.facts.received_at,
            answered_at=self.answered_at,
            ended_at=ended,
            duration_ms=duration_ms,
            disposition=self.disposition or Disposition.FAILED,
            sip_status=self.final_status or 500,
            hangup_side=self.hangup_side,
            buyer_id=att.target.buyer_id if att is not None else None,
            endpoint=att.target.uri if att is not None else None,
            attempts=self.attempts,
        )
        for name, value in self.cdr_extra.items():
            setattr(cdr, name, value)
        return cdr


def disposition_for_failure(status: int, ring_timeout: bool) -> Disposition:
    """Map the last failed attempt to a CDR disposition."""
    if ring_timeout or status in (408, 480):
        return Disposition.NO_ANSWER
    if status in (486, 600):
        return Disposition.BUSY
    return Disposition.FAILED
