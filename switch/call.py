"""One inbound call as the B2BUA sees it, and every transition of its state machine.

Theory of operation
-------------------
A call is created when an admitted INVITE arrives (state ROUTING, 100 Trying already sent)
and the glue is asked to route it (``RouteCall``). Routing answers with the ordered target
URIs or a rejection; with targets the glue is asked to open the call's media (``OpenMedia``,
state MEDIA), and once it has, each target is one :class:`Attempt`: a fresh B-leg INVITE with
its own Call-ID and tags. Failover rules (docs/sip.md):

    ROUTING --Routed--> MEDIA --media opened--> CALLING --1xx--> EARLY --2xx--> ANSWERED
       |                  |                       |  \\           |               |
       |                  |                       |   4xx/5xx/6xx (not 487), Timer B,
       |                  |                       |   ring timeout -> next target (CALLING)
       |                  |                       |   or, none left, A gets the last
       |                  |                       |   final status -> ENDED
       +-- Rejected: 4xx/5xx + Reason -> ENDED    |         BYE from either leg, media
           media refused: 488/503 -> ENDED        |         timeout, drain -> ENDING -> ENDED
    CANCEL from A (before answer): A gets 200 + 487 at once; the live attempt is cancelled
    (after its first provisional, RFC 3261 §9.1) and its late 2xx, if any, is ACKed and BYEd.

Every state change goes through :meth:`Calls._move`, which checks it against ``_NEXT``. A
call reports ``CallEnded`` exactly once, when it reaches ENDED; it stays reachable through its
dialogs only until our BYEs are answered, then every reference to it is dropped (RFC 6026
transactions live on for 32 s but need nothing from the call).

Abandoned attempts (ring timeout, A cancelled) stay known until their transaction ends, so a
late 2xx from a buyer that we no longer want is ACKed and hung up, never leaked.

Why one module of about 700 lines: every transition of a call, and the failover it drives,
lives here so that the machine can be read (and checked against ``_NEXT``) in one place; the
requests that feed it are parsed and dispatched elsewhere (outside.py, indialog.py).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from urllib.parse import quote

from switch.calllog import CallLog
from switch.context import ALLOW, RETRY_AFTER_S, Context, TimerKind, reason_header, reason_phrase
from switch.dialog import Dialog, Leg, strip_tag, target_from
from switch.effects import CallAnswered, CallConfirmed, CallEnded, OpenMedia, RouteCall
from switch.errors import InvalidStateError, SipParseError
from switch.media_session import MediaSession
from switch.message import Headers, SipRequest, SipResponse
from switch.peer import Peer
from switch.record import (
    OPERATOR_HANGUP,
    CallRecord,
    HangupSide,
    Outcome,
    outcome_for_failure,
)
from switch.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)


class CallState(enum.Enum):
    ROUTING = "routing"  # waiting for RouteCall's answer
    MEDIA = "media"  # routed; waiting for the media session
    CALLING = "calling"  # an attempt is out, no provisional yet
    EARLY = "early"  # the attempt sent a provisional
    ANSWERED = "answered"
    ENDING = "ending"  # our BYEs are out
    ENDED = "ended"


_NEXT: dict[CallState, frozenset[CallState]] = {
    CallState.ROUTING: frozenset({CallState.MEDIA, CallState.ENDED}),
    CallState.MEDIA: frozenset({CallState.CALLING, CallState.ENDED}),
    CallState.CALLING: frozenset(
        {CallState.CALLING, CallState.EARLY, CallState.ANSWERED, CallState.ENDED}
    ),
    CallState.EARLY: frozenset(
        {CallState.CALLING, CallState.EARLY, CallState.ANSWERED, CallState.ENDED}
    ),
    CallState.ANSWERED: frozenset({CallState.ENDING, CallState.ENDED}),
    CallState.ENDING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}
_BEFORE_ANSWER = (CallState.ROUTING, CallState.MEDIA, CallState.CALLING, CallState.EARLY)
_RINGING = (CallState.CALLING, CallState.EARLY)


@dataclass(slots=True)
class Attempt:
    """One B-leg INVITE toward one target."""

    index: int
    uri: str
    # None once answered: nothing reads it then but its CSeq (``invite_seq``), and it was a
    # parsed message of three tracked objects kept for the life of the call (issue 13).
    invite: SipRequest | None
    tx: str
    peer: Peer
    call_id: str
    from_tag: str
    invite_seq: int  # the INVITE's CSeq number: our ACK for its 2xx reuses it (§13.2.2.4)
    provisional: bool = False
    responded: bool = False  # any response at all, 100 Trying included
    cancel_pending: bool = False  # CANCEL wanted before any provisional arrived (§9.1)
    cancelled: bool = False
    abandoned: bool = False  # no longer the call's live attempt
    final_status: int | None = None
    dialog: Dialog | None = None
    # Our ACK for its 2xx, serialised once: re-sent as is on 2xx retransmissions, and bytes
    # weigh a fraction of the message object they came from (issue 13).
    ack: bytes | None = None


@dataclass(slots=True)
class Call:
    call_id: str  # the switch's own id (CDR key)
    a_invite: SipRequest
    a_tx: str
    a_peer: Peer
    a_tag: str
    trunk_id: str
    source: str  # sip | webrtc
    caller: str  # as received
    called: str
    received: float
    # The caller's address: a_peer's, or behind a trusted proxy the one it named
    # (switch/proxy.py). Identity and the media latching hint; never where to send.
    source_ip: str = ""
    state: CallState = CallState.ROUTING
    a_dialog: Dialog | None = None
    targets: tuple[str, ...] = ()  # a tuple: the collector untracks a tuple of strings
    present_as: str | None = None  # the caller number the buyer sees (routing's choice)
    attempt: Attempt | None = None
    attempts: int = 0
    answered: float | None = None
    ended: float | None = None
    hangup_side: HangupSide | None = None
    final_status: int | None = None  # what A got as final
    outcome: Outcome | None = None
    rule: str | None = None  # the Reason rule A got
    a_acked: bool = False  # the caller's ACK for our 2xx arrived
    confirmed: bool = False  # ... or another request of the caller in the answered dialog
    reported: bool = False  # CallEnded sent
    media: MediaSession | None = None
    byes_pending: int = 0  # our BYE transactions still running; the call is kept until 0
    # A relayed re-INVITE's 2xx: the requesting leg's ACK goes on with this CSeq. Made on the
    # first such 2xx: most calls never have one, and an empty dict each is 64 B (issue 13).
    pending_ack: dict[Leg, int] | None = None
    first_response: float | None = None  # the first buyer response relayed (not 100)
    ringing: float | None = None  # the first 18x relayed
    _log: CallLog | None = None

    @property
    def log(self) -> CallLog:
        if self._log is None:
            self._log = CallLog(logger, self.call_id)
        return self._log

    def dialog_of(self, leg: Leg) -> Dialog | None:
        if leg is Leg.A:
            return self.a_dialog
        return self.attempt.dialog if self.attempt is not None else None

    def record(self) -> CallRecord:
        duration_ms = 0
        if self.answered is not None and self.ended is not None and self.confirmed:
            duration_ms = max(0, int((self.ended - self.answered) * 1000))
        att = self.attempt
        return CallRecord(
            call_id=self.call_id,
            a_call_id=self.a_invite.call_id,
            b_call_id=att.call_id if att is not None else None,
            trunk_id=self.trunk_id,
            source=self.source,
            caller=self.caller,
            called=self.called,
            received=self.received,
            answered=self.answered,
            confirmed=self.confirmed,
            ended=self.ended if self.ended is not None else self.received,
            duration_ms=duration_ms,
            outcome=self.outcome or Outcome.FAILED,
            sip_status=self.final_status or 500,
            hangup_side=self.hangup_side,
            target_index=att.index if att is not None else None,
            endpoint=att.uri if att is not None else None,
            attempts=self.attempts,
            rule=self.rule,
            first_response=(
                self.first_response if self.first_response is not None else self.answered
            ),
            ringing=self.ringing,
        )


class Calls:
    """The live calls and their transitions: routing, attempts and failover, answer, end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.live: dict[str, Call] = {}  # by switch call id
        self.by_a_tx: dict[str, Call] = {}  # for CANCEL
        self.attempts: dict[str, tuple[Call, Attempt]] = {}  # B INVITE client tx -> attempt
        self.byes: dict[str, Call] = {}  # our BYE client tx -> call
        self.draining = False
        # Buyer endpoints as Peers, one object per endpoint: a Peer (a NamedTuple) is a
        # tracked object the collector walks, and each call (and each of its transactions,
        # for 32 s after it) kept one of its own (issue 13). Endpoints are few; bounded.
        self._peers: dict[Peer, Peer] = {}

    # ------------------------------------------------------------------ start

    def start(self, call: Call, req: SipRequest, now: float, limit: str | None = None) -> None:
        """An admitted INVITE: 503 when full, draining or over a trunk ``limit`` (the rule the
        admitter named), else 100 Trying and RouteCall."""
        ctx = self.ctx
        ctx.stats["calls_total"] += 1
        if limit is None and (self.draining or len(self.live) >= ctx.config.max_calls):
            limit = "overload"
        if limit is not None:
            ctx.stats["calls_rejected_overload"] += 1
            self._final_to_a(call, 503, "Service Unavailable", rule=limit,
                             extra=[("retry-after", str(RETRY_AFTER_S))])
            self._end(call, Outcome.OVERLOAD, HangupSide.SYSTEM, 503, registered=False)
            return
        ctx.respond(call.a_tx, req, 100, "Trying")
        self.live[call.call_id] = call
        self.by_a_tx[call.a_tx] = call
        ctx.arm(TimerKind.ROUTE, now + ctx.config.route_timeout, call.call_id)
        ctx.effects.append(
            RouteCall(
                call_id=call.call_id,
                trunk_id=call.trunk_id,
                source=call.source,
                caller=call.caller,
                called=call.called,
                at=now,
                identity=req.headers.get("identity"),
                pai=req.headers.get("p-asserted-identity"),
                source_ip=call.source_ip or call.a_peer.host,
            )
        )

    def routed(self, call: Call, targets: tuple[str, ...], present_as: str | None) -> None:
        """Routing found targets: open the media before the first attempt."""
        self._move(call, CallState.MEDIA)
        call.targets = targets
        call.present_as = present_as
        self.ctx.effects.append(
            OpenMedia(
                call_id=call.call_id,
                offer=call.a_invite.body,
                source_ip=call.source_ip or call.a_peer.host,
                webrtc=call.source == "webrtc",
            )
        )

    def rejected(self, call: Call, status: int, reason: str, rule: str) -> None:
        """Routing (or media) refused the call."""
        self._final_to_a(call, status, reason, rule=rule)
        self._end(call, Outcome.REJECTED, HangupSide.SYSTEM, status)

    def media_opened(self, call: Call, media: MediaSession, now: float) -> None:
        call.media = media
        self._next_attempt(call, now)

    def media_failed(self, call: Call, status: int, rule: str) -> None:
        """No media for the call: 488 for an offer we cannot anchor, 503 without free ports."""
        self._final_to_a(call, status, reason_phrase(status), rule=rule)
        self._end(call, Outcome.FAILED, HangupSide.SYSTEM, status)

    # ---------------------------------------------------------------- the caller

    def cancelled_by_caller(self, call: Call, now: float) -> None:
        """CANCEL from A (already answered 200): 487 and cancel the attempt, if not answered."""
        if call.state not in _BEFORE_ANSWER:
            return  # already answered or ended: CANCEL has no effect (§9.2)
        self._abandon_attempt(call, now)
        self._final_to_a(call, 487, "Request Terminated")
        self._end(call, Outcome.CANCELLED, HangupSide.CALLER, 487)

    def connection_closed(self, peer: Peer, now: float) -> None:
        """A caller's stream connection (TCP, WebSocket) went away: end its calls.

        Answered calls get BYE toward the buyer; calls still ringing are cancelled. The caller
        cannot be told (its connection is gone), so nothing is sent on that leg.
        """
        if not peer.conn:
            return
        for call in [c for c in self.live.values() if c.a_peer.conn == peer.conn
                     and c.a_peer.transport == peer.transport]:
            if call.state is CallState.ANSWERED:
                self.hangup(call, HangupSide.CALLER, now, by=Leg.A)
            else:
                self._abandon_attempt(call, now)
                call.final_status = 487
                self._end(call, Outcome.CANCELLED, HangupSide.CALLER, 487)

    def end_call(self, call: Call, outcome: Outcome, now: float) -> None:
        """The switch ends a call itself (media timeout, a browser whose media died).

        Answered: BYE both legs. Still ringing: the attempt is cancelled and the caller gets 480.
        """
        if call.state is CallState.ANSWERED:
            call.outcome = outcome
            self.hangup(call, HangupSide.SYSTEM, now, by=None)
        elif call.state in _RINGING:
            self._abandon_attempt(call, now)
            self._final_to_a(call, 480, "Temporarily Unavailable", rule=outcome.value)
            self._end(call, Outcome.FAILED, HangupSide.SYSTEM, 480)

    def operator_hangup(self, call: Call, now: float) -> None:
        """The operator ends a call (admin API, ``dce hangup``); ``hangup_side`` is operator.

        Answered: BYE both legs (the disposition stays ``answered``). Before the answer: the
        attempt is cancelled and the caller gets 480 with Reason ``operator_hangup``.
        """
        if call.state is CallState.ANSWERED:
            self.hangup(call, HangupSide.OPERATOR, now, by=None)
        elif call.state in _BEFORE_ANSWER:
            self._abandon_attempt(call, now)
            self._final_to_a(call, 480, "Temporarily Unavailable", rule=OPERATOR_HANGUP)
            self._end(call, Outcome.CANCELLED, HangupSide.OPERATOR, 480)

    def drain(self, now: float) -> None:
        """Shutdown: refuse new calls, end live ones (BYE when answered, 503 before)."""
        self.draining = True
        for call in list(self.live.values()):
            if call.state is CallState.ANSWERED:
                self.hangup(call, HangupSide.SYSTEM, now, by=None)
            elif call.state in _BEFORE_ANSWER:
                self._abandon_attempt(call, now)
                self._final_to_a(call, 503, "Service Unavailable", rule="shutdown")
                self._end(call, Outcome.FAILED, HangupSide.SYSTEM, 503)

    # ----------------------------------------------------------------- attempts

    def attempt_response(self, call: Call, att: Attempt, resp: SipResponse, now: float) -> None:
        """A response to one of our B-leg INVITEs."""
        att.responded = True
        status = resp.status
        if status < 200:
            first = not att.provisional
            att.provisional = True  # a 100 too: after any provisional a CANCEL may go (§9.1)
            if att.cancel_pending and first:
                self._send_cancel(att, now)
                return
            if status == 100:
                return
            if att.abandoned or call.attempt is not att or call.state not in _RINGING:
                return
            if resp.to_tag is not None:
                self._register_b_dialog(call, att, resp, confirmed=False)
            body = resp.body
            if body and call.media is not None:
                try:
                    body = call.media.b_answered(body)
                except self.ctx.config.media_error as exc:
                    self._bad_buyer_sdp(call, att, exc, now)
                    return
            self._move(call, CallState.EARLY)
            self.ctx.respond(
                call.a_tx,
                call.a_invite,
                status,
                resp.reason,
                to_tag=call.a_tag,
                headers=[*_relay_headers(resp), *_dialog_headers(call, self.ctx)],
                body=body,
            )
            if call.ringing is None:
                call.ringing = now
                if call.first_response is None:
                    call.first_response = now
            self._a_early_dialog(call)
            return
        if status < 300:
            self._attempt_answered(call, att, resp, now)
            return
        att.final_status = status
        if att.abandoned or call.attempt is not att or att.cancelled:
            return
        self._attempt_failed(call, att, status, now)

    def attempt_timed_out(self, call: Call, att: Attempt, now: float) -> None:
        """Timer B: the buyer never answered the INVITE at all (acts as a 408)."""
        att.final_status = 408
        if not att.abandoned and call.attempt is att and call.state in _RINGING:
            self._attempt_failed(call, att, 408, now)

    def attempt_over(self, tx: str) -> None:
        """The attempt's INVITE transaction is over: forget it and, unless it is the answered
        leg of a live call, its dialog."""
        found = self.attempts.pop(tx, None)
        if found is None:
            return
        call, att = found
        over = att.abandoned or call.attempt is not att or call.state is CallState.ENDED
        if att.dialog is not None and over and not (call.attempt is att and call.byes_pending):
            self.ctx.dialogs.pop((att.call_id, att.from_tag), None)

    def resend_ack(self, call: Call) -> None:
        """A 2xx retransmission from the buyer after its transaction ended (§13.2.2.4)."""
        att = call.attempt
        if att is not None and att.ack is not None and att.dialog is not None:
            self.ctx.send_bytes(att.ack, att.dialog.peer or att.peer)

    def b_ack(self, att: Attempt, seq: int, body: bytes, ctype: str | None) -> bytes:
        """Our ACK for the buyer's 2xx (end to end, §13.2.2.4), serialised."""
        assert att.dialog is not None
        extra = [("content-type", ctype)] if ctype and body else None
        cfg = self.ctx.config
        return att.dialog.request(
            "ACK", self.ctx.new_branch(), cfg.host, cfg.port, seq=seq, body=body, extra=extra
        ).to_bytes()

    def _next_attempt(self, call: Call, now: float) -> None:
        index = call.attempt.index + 1 if call.attempt is not None else 0
        if call.attempt is not None:
            self._abandon_attempt(call, now)
        while index < len(call.targets):
            target = call.targets[index]
            try:
                uri = SipUri.parse(target)
            except SipParseError:
                index += 1
                continue
            peer = Peer(uri.transport, uri.host, uri.port or 5060)
            known = self._peers.get(peer)
            if known is not None:
                peer = known
            elif len(self._peers) < 4096:
                self._peers[peer] = peer
            att = self._b_invite(call, index, target, uri, peer, now)
            call.attempt = att
            call.attempts += 1
            self._move(call, CallState.CALLING)
            self.attempts[att.tx] = (call, att)
            self.ctx.arm(TimerKind.RING, now + self.ctx.config.ring_timeout, call.call_id, index)
            if self.ctx.config.trying_timeout > 0:
                self.ctx.arm(
                    TimerKind.TRYING, now + self.ctx.config.trying_timeout, call.call_id, index
                )
            return
        self._final_to_a(call, 480, "Temporarily Unavailable", rule="no_reachable_endpoint")
        self._end(call, Outcome.FAILED, HangupSide.SYSTEM, 480)

    def _b_invite(
        self, call: Call, index: int, target: str, uri: SipUri, peer: Peer, now: float
    ) -> Attempt:
        ctx = self.ctx
        cfg = ctx.config
        a = call.a_invite
        call_id = ctx.new_id() + "@" + cfg.host
        from_tag = ctx.new_tag()
        mf = a.headers.get("max-forwards")
        mf_out = str(int(mf) - 1) if mf is not None and mf.strip().isdigit() else "69"
        h = Headers()
        h.add(
            "via",
            f"SIP/2.0/{peer.via_transport} {cfg.host}:{cfg.port}"
            f";branch={ctx.new_branch()};rport",
        )
        h.add("max-forwards", mf_out)
        user = sip_user(call.present_as or call.caller)
        h.add("from", f"<sip:{user}@{cfg.host}>;tag={from_tag}")
        h.add("to", f"<{target}>")
        h.add("call-id", call_id)
        h.add("cseq", "1 INVITE")
        h.add("contact", ctx.contact(peer))
        h.add("allow", ALLOW)
        for name in ("content-type", "p-asserted-identity", "identity"):
            value = a.headers.get(name)
            if value is not None:
                h.add(name, value)
        body = a.body
        if call.media is not None:
            call.media.new_attempt()
            body = call.media.b_offer
        req = SipRequest("INVITE", str(uri), h, body)
        tx = ctx.layer.send_request(req, peer, now)
        return Attempt(
            index=index,
            uri=target,
            invite=req,
            tx=tx,
            peer=peer,
            call_id=call_id,
            from_tag=from_tag,
            invite_seq=req.cseq[0],
        )

    def _attempt_answered(self, call: Call, att: Attempt, resp: SipResponse, now: float) -> None:
        ctx = self.ctx
        if att.dialog is None or not att.dialog.confirmed:
            self._register_b_dialog(call, att, resp, confirmed=True)
        assert att.dialog is not None
        if att.abandoned or call.attempt is not att or call.state not in _RINGING:
            if att.ack is not None:
                ctx.send_bytes(att.ack, att.dialog.peer or att.peer)  # 2xx retransmission
                return
            # A late answer from a buyer we no longer want: ACK it, then hang it up.
            att.ack = self.b_ack(att, att.invite_seq, b"", None)
            ctx.send_bytes(att.ack, att.dialog.peer or att.peer)
            if call.attempt is not att or call.state is CallState.ENDED:
                self.send_bye(att.dialog, att.peer, now)
            return
        body = resp.body
        if body and call.media is not None:
            try:
                body = call.media.b_answered(body)
            except ctx.config.media_error as exc:
                att.ack = self.b_ack(att, att.invite_seq, b"", None)
                ctx.send_bytes(att.ack, att.dialog.peer or att.peer)
                self.send_bye(att.dialog, att.peer, now)
                self._bad_buyer_sdp(call, att, exc, now)
                return
        self._move(call, CallState.ANSWERED)
        if call.media is not None:
            call.media.answered()
        call.answered = now
        call.final_status = 200
        ctx.respond(
            call.a_tx,
            call.a_invite,
            200,
            resp.reason or "OK",
            to_tag=call.a_tag,
            headers=[*_relay_headers(resp), *_dialog_headers(call, ctx)],
            body=body,
        )
        self._a_early_dialog(call)
        assert call.a_dialog is not None
        call.a_dialog.confirmed = True
        ctx.effects.append(
            CallAnswered(
                call_id=call.call_id,
                target_index=att.index,
                attempts=call.attempts,
                at=now,
                a_leg=call.a_dialog.snapshot(),
                b_leg=att.dialog.snapshot(),
            )
        )
        # Answered: no new attempt, offer, provisional, final or CANCEL needs the two INVITEs
        # any more, and they were half of what a long call kept (issue 13).
        call.a_invite = trimmed(call.a_invite)
        att.invite = None

    def confirm(self, call: Call) -> None:
        """The caller's side of the answered call is confirmed: it counts as connected."""
        if call.confirmed or call.answered is None:
            return
        call.confirmed = True
        self.ctx.effects.append(CallConfirmed(call_id=call.call_id))

    def _attempt_failed(
        self, call: Call, att: Attempt, status: int, now: float, *, timeout: str | None = None
    ) -> None:
        """The attempt failed with ``status``, or by one of our timers (``timeout``:
        "ring_timeout", "no_response"): fail over, or give the caller the last answer."""
        failover = (300 <= status < 700 and status != 487) or timeout is not None or status == 408
        if failover and att.index + 1 < len(call.targets):
            self._next_attempt(call, now)
            return
        if timeout is not None:
            self._final_to_a(call, 480, "Temporarily Unavailable", rule=timeout)
            self._end(call, outcome_for_failure(480, True), HangupSide.BUYER, 480)
            return
        if att.responded and call.first_response is None:
            call.first_response = now  # the caller gets this buyer's own final status
        self._final_to_a(call, status, reason_phrase(status))
        self._end(call, outcome_for_failure(status, False), HangupSide.BUYER, status)

    def _bad_buyer_sdp(self, call: Call, att: Attempt, exc: Exception, now: float) -> None:
        """A buyer answered with SDP we cannot anchor: that attempt failed (488)."""
        call.log.info("buyer SDP refused", extra={"reason": getattr(exc, "reason", str(exc))})
        att.final_status = 488
        self._abandon_attempt(call, now)
        self._attempt_failed(call, att, 488, now)

    def _abandon_attempt(self, call: Call, now: float) -> None:
        att = call.attempt
        if att is None or att.abandoned:
            return
        att.abandoned = True
        if att.final_status is None and (att.dialog is None or not att.dialog.confirmed):
            if att.provisional:
                self._send_cancel(att, now)
            else:
                att.cancel_pending = True  # §9.1: no CANCEL before a provisional response

    def _send_cancel(self, att: Attempt, now: float) -> None:
        inv = att.invite
        if att.cancelled or inv is None:  # None: answered, nothing left to cancel
            return
        att.cancelled = True
        att.cancel_pending = False
        h = Headers()
        h.add("via", inv.headers.get("via") or "")
        h.add("max-forwards", "70")
        h.add("from", inv.headers.get("from") or "")
        h.add("to", inv.headers.get("to") or "")
        h.add("call-id", inv.call_id)
        h.add("cseq", f"{inv.cseq[0]} CANCEL")
        self.ctx.layer.send_request(SipRequest("CANCEL", inv.uri, h), att.peer, now)
        # §9.1: with no final response 64*T1 after the CANCEL, the INVITE transaction is
        # considered cancelled and destroyed (its Proceeding state has no timer of its own).
        self.ctx.arm(TimerKind.CANCEL_GUARD, now + 64 * self.ctx.config.timers.t1, att.tx)

    def send_bye(self, dialog: Dialog, fallback: Peer, now: float) -> str:
        cfg = self.ctx.config
        bye = dialog.request("BYE", self.ctx.new_branch(), cfg.host, cfg.port)
        return self.ctx.layer.send_request(bye, dialog.peer or fallback, now)

    # ------------------------------------------------------------------ the end

    def hangup(self, call: Call, side: HangupSide, now: float, by: Leg | None) -> None:
        """End a call: BYE every leg that did not send the BYE itself (``by``)."""
        if call.state in _RINGING:
            # A BYE in an early dialog (rare): treat as a cancel of the attempt.
            self._abandon_attempt(call, now)
            self._final_to_a(call, 487, "Request Terminated")
            self._end(call, Outcome.CANCELLED, side, 487)
            return
        if call.state is not CallState.ANSWERED:
            return
        self._move(call, CallState.ENDING)
        att = call.attempt
        if by is not Leg.A and call.a_dialog is not None:
            self.byes[self.send_bye(call.a_dialog, call.a_peer, now)] = call
            call.byes_pending += 1
        if by is not Leg.B and att is not None and att.dialog is not None:
            if att.ack is None:
                # Ending before the caller's ACK: ACK the buyer's 2xx first so its dialog is
                # confirmed, then BYE (§15).
                att.ack = self.b_ack(att, att.invite_seq, b"", None)
                self.ctx.send_bytes(att.ack, att.dialog.peer or att.peer)
            self.byes[self.send_bye(att.dialog, att.peer, now)] = call
            call.byes_pending += 1
        self._end(call, Outcome.ANSWERED, side, 200)

    def caller_never_acked(self, call: Call, now: float) -> None:
        """RFC 6026 Timer L: no ACK for our 200; end both legs (RFC 3261 §13.3.1.4). The call
        never connected: it is a failure, not billable, with no duration."""
        if call.confirmed:
            return
        call.outcome = Outcome.FAILED
        call.rule = "no_ack"
        self.hangup(call, HangupSide.SYSTEM, now, by=None)

    def bye_done(self, tx: str) -> None:
        """One of our BYEs was answered (or its transaction ended)."""
        ended = self.byes.pop(tx, None)
        if ended is not None:
            ended.byes_pending -= 1
            if ended.byes_pending == 0:
                self._forget(ended)

    def _end(
        self,
        call: Call,
        outcome: Outcome,
        side: HangupSide,
        status: int,
        *,
        registered: bool = True,
    ) -> None:
        if call.reported:
            return
        # An outcome set earlier (media_timeout by end_call) wins over the generic one.
        call.outcome = call.outcome or outcome
        call.hangup_side = call.hangup_side or side
        if call.final_status is None:
            call.final_status = status
        self._move(call, CallState.ENDED)
        # Only live calls count (max_calls, /metrics); an ended call stays reachable through its
        # dialogs until our BYEs finish.
        self.live.pop(call.call_id, None)
        call.ended = self.ctx.now
        call.reported = True
        self.ctx.effects.append(CallEnded(record=call.record()))
        if registered and call.byes_pending == 0:
            self._forget(call)

    def _forget(self, call: Call) -> None:
        """Drop every reference to a finished call.

        The INVITE transactions live on for 32 s (RFC 6026 Timers L and M) to absorb
        retransmissions, but they need nothing from the call: keeping the call reachable
        from them would hold tens of thousands of finished calls at high rates, each a full
        object graph for the garbage collector to walk.
        """
        self.live.pop(call.call_id, None)
        self.by_a_tx.pop(call.a_tx, None)
        call.pending_ack = None
        att = call.attempt
        if att is not None and not att.abandoned:
            self.attempts.pop(att.tx, None)
        if call.a_dialog is not None:
            self.ctx.dialogs.pop((call.a_dialog.call_id, call.a_tag), None)
        if att is not None and att.dialog is not None and att.tx not in self.attempts:
            self.ctx.dialogs.pop((att.call_id, att.from_tag), None)

    # ------------------------------------------------------------------- timers

    def route_timeout(self, call: Call) -> None:
        if call.state in (CallState.ROUTING, CallState.MEDIA):
            self._final_to_a(call, 500, "Server Internal Error", rule="routing_timeout")
            self._end(call, Outcome.FAILED, HangupSide.SYSTEM, 500)

    def ring_timeout(self, call: Call, index: int, now: float) -> None:
        att = call.attempt
        if att is None or att.index != index or att.abandoned or call.state not in _RINGING:
            return
        self._abandon_attempt(call, now)
        self._attempt_failed(call, att, 408, now, timeout="ring_timeout")

    def trying_timeout(self, call: Call, index: int, now: float) -> None:
        """The endpoint sent nothing at all, not even 100 Trying: it is down, fail over now."""
        att = call.attempt
        if (
            att is None
            or att.index != index
            or att.abandoned
            or att.responded
            or call.state not in _RINGING
        ):
            return
        call.log.info("buyer endpoint did not respond", extra={"endpoint": att.uri})
        self._abandon_attempt(call, now)
        self._attempt_failed(call, att, 408, now, timeout="no_response")

    def cancel_guard(self, tx: str) -> None:
        found = self.attempts.get(tx)
        if found is None:
            return
        _, att = found
        if att.final_status is None and not (att.dialog is not None and att.dialog.confirmed):
            self.ctx.layer.terminate(tx)  # no TransactionTerminated follows a terminate()
            self.attempt_over(tx)

    # ------------------------------------------------------------------ helpers

    def _move(self, call: Call, state: CallState) -> None:
        if state not in _NEXT[call.state]:
            raise InvalidStateError(f"call {call.call_id}: {call.state.name} -> {state.name}")
        call.state = state

    def _final_to_a(
        self,
        call: Call,
        status: int,
        reason: str,
        rule: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if call.final_status is not None and call.final_status >= 200 and status != 487:
            return
        headers = list(extra or ())
        if rule:
            headers.append(reason_header(status, rule))
            call.rule = rule
        call.final_status = status
        self.ctx.respond(
            call.a_tx, call.a_invite, status, reason, to_tag=call.a_tag, headers=headers
        )

    def _a_early_dialog(self, call: Call) -> None:
        if call.a_dialog is not None:
            return
        a = call.a_invite
        route = list(a.headers.get_list("record-route"))
        call.a_dialog = Dialog(
            call_id=a.call_id,
            local_tag=call.a_tag,
            remote_tag=a.from_tag,
            local_uri=strip_tag(a.headers.get("to") or ""),
            remote_uri=strip_tag(a.headers.get("from") or ""),
            local_seq=self.ctx.rng.randint(1, 2**20),
            remote_seq=a.cseq[0],
            remote_target=target_from(a, a.uri),
            route_set=tuple(route),
            # §12.2.1.1: the first hop of the route set (behind a proxy, the proxy), else the
            # caller's flow itself.
            peer=_next_hop(route, target_from(a, a.uri), call.a_peer) if route else call.a_peer,
            contact=self.ctx.contact(call.a_peer),
        )
        self.ctx.dialogs[(a.call_id, call.a_tag)] = call

    def _register_b_dialog(
        self, call: Call, att: Attempt, resp: SipResponse, *, confirmed: bool
    ) -> None:
        if att.dialog is None:
            inv = att.invite
            assert inv is not None  # dropped only once answered, and its dialog made by then
            route = list(reversed(resp.headers.get_list("record-route")))
            peer = att.peer
            att.dialog = Dialog(
                call_id=att.call_id,
                local_tag=att.from_tag,
                remote_tag=resp.to_tag,
                local_uri=strip_tag(inv.headers.get("from") or ""),
                remote_uri=strip_tag(inv.headers.get("to") or ""),
                local_seq=att.invite_seq,
                remote_seq=None,
                remote_target=target_from(resp, inv.uri),
                route_set=tuple(route),
                peer=_next_hop(route, target_from(resp, inv.uri), peer),
                contact=self.ctx.contact(peer),
            )
            self.ctx.dialogs[(att.call_id, att.from_tag)] = call
        else:
            att.dialog.remote_tag = resp.to_tag
            att.dialog.remote_target = target_from(resp, att.dialog.remote_target)
        att.dialog.confirmed = att.dialog.confirmed or confirmed


def trimmed(req: SipRequest) -> SipRequest:
    """What an answered call still reads of the caller's INVITE: its Call-ID (the CDR, the
    live-call list). Nothing answers it, cancels it or copies its dialog headers any more:
    that all happens before the answer (the early dialogs are made by then). No body, no
    other header; of the parse caches only the CSeq's (the same tuple), should one read it.

    The values are the same strings, not copies. The Via, From, To, CSeq and Record-Route
    strings, the parsed Via, From and To, and the headers dict go (issue 13).
    """
    h = Headers.__new__(Headers)
    h._items = [("call-id", req.call_id)]
    h._first = None
    out = SipRequest(req.method, req.uri, h)
    out._cseq = req.cseq
    return out


def relay_headers(resp: SipResponse) -> list[tuple[str, str]]:
    """Headers of a response that travel to the other leg with it.

    Not Require, RSeq or Supported: the switch does no 100rel (it never PRACKs a buyer) and
    supports no option tag, so it must not pass them off as its own.
    """
    out = []
    for name in ("content-type", "allow"):
        value = resp.headers.get(name)
        if value is not None:
            out.append((name, value))
    return out


_relay_headers = relay_headers


def _dialog_headers(call: Call, ctx: Context) -> list[tuple[str, str]]:
    """What our 18x/2xx to the caller carry to make the dialog: our Contact, and the INVITE's
    Record-Route copied in order (RFC 3261 §12.1.1), so that the caller's ACK, BYE and
    re-INVITE come back through every proxy that asked to stay on the path."""
    rr = [("record-route", v) for v in call.a_invite.headers.get_list("record-route")]
    return [*rr, ("contact", ctx.contact(call.a_peer))]


# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved ); the rest is %-escaped.
_USER_SAFE = "-_.!~*'()&=+$,;?/"


def sip_user(value: str) -> str:
    """A user part as it may be written in a SIP URI: whatever the caller sent (it was
    unescaped when parsed, so CR, LF, '@' or '>' can be in it) cannot break the header."""
    return quote(value, safe=_USER_SAFE, errors="surrogateescape")


def _next_hop(route: list[str], target: str, fallback: Peer) -> Peer:
    """Where in-dialog requests go: the first loose route, else the remote target (§12.2.1.1)."""
    uri_text = NameAddr.parse(route[0]).uri if route else target
    try:
        uri = SipUri.parse(uri_text)
    except SipParseError:
        return fallback
    if fallback.reliable and uri.transport == fallback.transport:
        return fallback  # keep using the connection we have
    peer = Peer(uri.transport, uri.host, uri.port or 5060)
    return fallback if peer == fallback else peer  # the same hop: one object per call, not two
