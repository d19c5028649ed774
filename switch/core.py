"""The sans-IO switch core: SIP messages in, SIP messages and effects out (SPEC.md "SIP").

Theory of operation
-------------------
``receive_datagram(data, peer, now)`` parses one message (a malformed request gets a stateless
400 naming the fault; a malformed response is dropped and counted) and hands it to the
transaction layer. The core then drains transaction events:

* a new INVITE: Max-Forwards (483), overload (503 + Retry-After), trunk admission (source
  IP/CIDR or digest: 401 challenge, 403), 100 Trying, then a :class:`Call` in ROUTING and the
  effect ``RouteCall``. ``route_done()`` brings the targets (or a rejection) back.
* in-dialog requests are found by (Call-ID, our tag) and relayed to the other leg (BYE ends
  both legs; ACK for a 2xx is sent end to end; re-INVITE/UPDATE/INFO are relayed and their
  responses relayed back); an unknown dialog gets 481.
* OPTIONS outside a dialog gets 200 (trunk keep-alives); CANCEL is matched to its INVITE.
* responses to B-leg INVITEs drive failover (see ``call.py``).

Outputs are pulled: ``datagrams_to_send()``, ``next_effect()``, ``get_timer()``; timers run
in ``handle_timer(now)``. Wall time for CDRs comes from the ``wall`` callable passed in;
randomness (tags, branches, Call-IDs) from the ``random.Random`` passed in.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from compliance.numbers import normalize
from exchange.routing import CallFacts, Target
from media.dtmf import parse_dtmf_info
from media.errors import MediaError
from media.session import MediaSession
from store.cdr import Disposition, HangupSide
from switch.call import Attempt, Call, CallState, disposition_for_failure
from switch.dialog import Dialog, strip_tag, target_from
from switch.effects import CallAnswered, Effect, RouteCall, RouteOutcome, WriteCdr
from switch.errors import SipParseError
from switch.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimedOut,
)
from switch.message import (
    Headers,
    SipRequest,
    SipResponse,
    header_key,
    make_response,
    parse_message,
)
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.transaction import TransactionLayer
from switch.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK"
RETRY_AFTER_S = 5


class Admitter(Protocol):
    """Trunk admission (switch/admission.py): who may send calls."""

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult: ...


@dataclass(slots=True)
class AdmitResult:
    trunk_id: str | None  # admitted when set
    challenge: list[str] | None = None  # WWW-Authenticate values for a 401
    reason: str = ""  # why not admitted (403)


@dataclass(slots=True)
class CoreConfig:
    host: str  # our SIP address (Via, Contact)
    port: int
    ring_timeout: float = 30.0
    max_calls: int = 5000
    timers: TimerConfig = field(default_factory=TimerConfig)
    route_timeout: float = 5.0  # routing (gate + auction) that never comes back fails the call
    source: str = "sip"


@dataclass(slots=True)
class _Relay:
    """An in-dialog request relayed from one leg's server tx to the other leg's client tx."""

    call: Call
    server_tx: str
    request: SipRequest  # the request as received, to answer on its server tx
    from_a: bool
    method: str
    seq: int


class SwitchCore:
    def __init__(
        self,
        config: CoreConfig,
        admitter: Admitter,
        wall: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.admitter = admitter
        self._wall = wall
        self._rng = rng
        # The core sends 100 itself, and only for admitted calls: a rejected INVITE costs one
        # datagram, not two.
        self.layer = TransactionLayer(config.timers, send_trying=False)
        self._out: list[tuple[bytes, Peer]] = []
        self._effects: deque[Effect] = deque()
        self.calls: dict[str, Call] = {}  # by switch call id
        self._by_a_tx: dict[str, Call] = {}
        self._dialogs: dict[
            tuple[str, str], tuple[Call, bool]
        ] = {}  # (Call-ID, our tag) -> (call, is_a)
        self._attempts: dict[str, tuple[Call, Attempt]] = {}  # B INVITE client tx -> attempt
        self._relays: dict[str, _Relay] = {}  # client tx -> relay
        self._byes: dict[str, Call] = {}  # our BYE client tx -> call
        self._timers: list[tuple[float, int, str, str]] = []  # (when, seq, call_id, kind)
        self._timer_seq = 0
        self._pending_ack: dict[tuple[str, bool], int] = {}
        self._now = 0.0
        self.draining = False
        self.stats: dict[str, int] = {
            "malformed_requests": 0,
            "malformed_responses": 0,
            "calls_total": 0,
            "calls_rejected_overload": 0,
            "calls_forbidden": 0,
            "calls_challenged": 0,
            "no_dialog_481": 0,
        }

    # ------------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None:
        """One message off the wire (a datagram or one framed stream message)."""
        self._now = now
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self._malformed(data, peer, exc)
            return
        if isinstance(msg, SipRequest):
            self._fix_via(msg, peer)
        try:
            self.layer.receive(msg, peer, now)
            self._drain(now)
        except SipParseError as exc:
            # A header no layer had read yet turned out malformed (e.g. a Contact or Route
            # only a dialog reads). The message is dropped; the calls it touched keep their
            # timers, which end them cleanly if the peer never sends a good one.
            self._malformed(data, peer, exc)

    def route_done(
        self, call_id: str, outcome: RouteOutcome, now: float, media: MediaSession | None = None
    ) -> bool:
        """The routing effect finished: try the targets or reject the call.

        Returns False when the call is gone (cancelled or timed out while routing): the glue
        then closes ``media`` itself and settles nothing.
        """
        self._now = now
        call = self.calls.get(call_id)
        if call is None or call.state is not CallState.ROUTING:
            return False
        call.media = media
        call.cdr_extra.update(outcome.cdr)
        if outcome.reject_status is not None or not outcome.targets:
            status = outcome.reject_status or 480
            reason = outcome.reject_reason or "Temporarily Unavailable"
            rule = outcome.rule or "no_buyer"
            disp = Disposition(outcome.disposition) if outcome.disposition else Disposition.NO_BUYER
            self._final_to_a(call, status, reason, rule=rule)
            self._end(call, disp, HangupSide.SYSTEM, status)
            self._drain(now)
            return True
        call.targets = list(outcome.targets)
        self._next_attempt(call, now)
        self._drain(now)
        return True

    def connection_closed(self, peer: Peer, now: float) -> None:
        """A caller's stream connection (TCP, WebSocket) went away: end its calls.

        Answered calls get BYE toward the buyer; calls still ringing are cancelled. The caller
        cannot be told (its connection is gone), so nothing is sent on that leg.
        """
        self._now = now
        for call in [c for c in self.calls.values() if c.a_peer.conn == peer.conn
                     and c.a_peer.transport == peer.transport and peer.conn]:
            if call.state is CallState.ANSWERED:
                self._bye_both(call, HangupSide.CALLER, now, from_a=True)
            else:
                self._abandon_attempt(call, now)
                call.final_status = 487
                self._end(call, Disposition.CANCELLED, HangupSide.CALLER, 487)
        self._drain(now)

    def end_call(self, call_id: str, disposition: Disposition, now: float) -> None:
        """The switch ends a call itself (media timeout, a browser whose media died).

        Answered: BYE both legs. Still ringing: the buyer attempt is cancelled and the caller
        gets 480.
        """
        self._now = now
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.state is CallState.ANSWERED:
            call.disposition = disposition
            self._bye_both(call, HangupSide.SYSTEM, now, from_a=None)
        elif call.state in (CallState.CALLING, CallState.EARLY):
            self._abandon_attempt(call, now)
            self._final_to_a(call, 480, "Temporarily Unavailable", rule=disposition.value)
            self._end(call, Disposition.FAILED, HangupSide.SYSTEM, 480)
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.layer.handle_timer(now)
        while self._timers and self._timers[0][0] <= now:
            _, _, key, kind = heapq.heappop(self._timers)
            if kind == "cancel-guard":
                self._cancel_guard(key)
                continue
            call = self.calls.get(key)
            if call is not None:
                self._call_timer(call, kind, now)
        self._drain(now)

    def drain(self, now: float) -> None:
        """Shutdown: refuse new calls, end live ones (BYE when answered, 503/487 before)."""
        self._now = now
        self.draining = True
        for call in list(self.calls.values()):
            if call.state is CallState.ANSWERED:
                self._bye_both(call, HangupSide.SYSTEM, now, from_a=None)
            elif call.state in (CallState.ROUTING, CallState.CALLING, CallState.EARLY):
                self._abandon_attempt(call, now)
                self._final_to_a(call, 503, "Service Unavailable", rule="shutdown")
                self._end(call, Disposition.FAILED, HangupSide.SYSTEM, 503)
        self._drain(now)

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        out = self.layer.datagrams_to_send()
        if self._out:
            out.extend(self._out)
            self._out = []
        return out

    def next_effect(self) -> Effect | None:
        return self._effects.popleft() if self._effects else None

    def get_timer(self) -> float | None:
        t = self.layer.get_timer()
        if self._timers:
            mine = self._timers[0][0]
            return mine if t is None or mine < t else t
        return t

    @property
    def live_calls(self) -> int:
        return len(self.calls)

    # ------------------------------------------------------------ event pump

    def _drain(self, now: float) -> None:
        layer = self.layer
        while (ev := layer.next_event()) is not None:
            if isinstance(ev, RequestReceived):
                self._on_request(ev, now)
            elif isinstance(ev, ResponseReceived):
                self._on_response(ev.tx, ev.response, now)
            elif isinstance(ev, TransactionTimedOut):
                self._on_timeout(ev, now)
            elif isinstance(ev, StrayResponse):
                self._on_stray(ev.response, ev.peer, now)
            elif isinstance(ev, TransactionTerminated):
                self._on_terminated(ev.tx)

    # -------------------------------------------------------------- requests

    def _on_request(self, ev: RequestReceived, now: float) -> None:
        req = ev.request
        method = req.method
        to_tag = req.to_tag
        if to_tag is not None:
            self._in_dialog(ev, to_tag, now)
            return
        if ev.tx is None:
            return  # an ACK outside any dialog/transaction: nothing to do (§17.2.3)
        if method == "INVITE":
            self._new_invite(ev, now)
        elif method == "CANCEL":
            self._cancel(ev, now)
        elif method == "OPTIONS":
            self._respond(
                ev.tx, req, 200, "OK", headers=[("allow", ALLOW), ("accept", "application/sdp")]
            )
        elif method in ("BYE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"):
            self.stats["no_dialog_481"] += 1
            self._respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
        else:
            self._respond(ev.tx, req, 405, "Method Not Allowed", headers=[("allow", ALLOW)])

    def _new_invite(self, ev: RequestReceived, now: float) -> None:
        req, tx, peer = ev.request, ev.tx, ev.peer
        assert tx is not None
        mf = req.headers.get("max-forwards")
        if mf is not None:
            mf = mf.strip()
            if not mf.isdigit():
                self._respond(tx, req, 400, "Malformed Max-Forwards")
                return
            if int(mf) == 0:
                self._respond(tx, req, 483, "Too Many Hops")
                return
        admit = self.admitter.admit_request(req, peer, now)
        if admit.trunk_id is None:
            if admit.challenge is not None:
                self.stats["calls_challenged"] += 1
                self._respond(
                    tx,
                    req,
                    401,
                    "Unauthorized",
                    headers=[("www-authenticate", v) for v in admit.challenge],
                )
            else:
                # No CDR: an unknown source is not a seller's call, and a flood of them must
                # not turn into database writes.
                self.stats["calls_forbidden"] += 1
                self._respond(
                    tx,
                    req,
                    403,
                    "Forbidden",
                    headers=[("reason", _reason(403, admit.reason or "unknown_source"))],
                )
            return
        try:
            ruri = SipUri.parse(req.uri)
            from_user = req.from_.parsed_uri().user_unescaped or ""
        except SipParseError as exc:
            self._respond(tx, req, 400, exc.reason[:120])
            return
        called_raw = ruri.user_unescaped or ""
        caller_raw = _pai_user(req.headers.get_list("p-asserted-identity")) or from_user
        facts = CallFacts(
            call_id=self._new_id(),
            trunk_id=admit.trunk_id,
            source=self.config.source if peer.transport not in ("ws", "wss") else "webrtc",
            caller=normalize(caller_raw) or caller_raw,
            called=normalize(called_raw) or called_raw,
            received_at=self._wall(),
        )
        a_tag = self._new_tag()
        call = Call(
            call_id=facts.call_id,
            a_invite=req,
            a_tx=tx,
            a_peer=peer,
            a_tag=a_tag,
            facts=facts,
            received_mono=now,
        )
        self.stats["calls_total"] += 1
        if self.draining or len(self.calls) >= self.config.max_calls:
            self.stats["calls_rejected_overload"] += 1
            self._respond(
                tx,
                req,
                503,
                "Service Unavailable",
                to_tag=a_tag,
                headers=[("retry-after", str(RETRY_AFTER_S)), ("reason", _reason(503, "overload"))],
            )
            call.final_status = 503
            self._end(call, Disposition.OVERLOAD, HangupSide.SYSTEM, 503, registered=False)
            return
        self._respond(tx, req, 100, "Trying")
        self.calls[call.call_id] = call
        self._by_a_tx[tx] = call
        self._arm(call, now + self.config.route_timeout, "route")
        self._effects.append(
            RouteCall(
                call_id=call.call_id,
                facts=facts,
                identity=req.headers.get("identity"),
                pai=req.headers.get("p-asserted-identity"),
                offer=req.body,
                source_ip=peer.host,
            )
        )

    def _cancel(self, ev: RequestReceived, now: float) -> None:
        req, tx = ev.request, ev.tx
        assert tx is not None
        invite_tx = self.layer.invite_tx_for_cancel(req)
        call = self._by_a_tx.get(invite_tx) if invite_tx is not None else None
        if call is None:
            self._respond(tx, req, 481, "Call/Transaction Does Not Exist")
            return
        self._respond(tx, req, 200, "OK")
        if call.state not in (CallState.ROUTING, CallState.CALLING, CallState.EARLY):
            return  # already answered or ended: CANCEL has no effect (§9.2)
        self._abandon_attempt(call, now)
        self._final_to_a(call, 487, "Request Terminated")
        self._end(call, Disposition.CANCELLED, HangupSide.CALLER, 487)

    def _in_dialog(self, ev: RequestReceived, to_tag: str, now: float) -> None:
        req = ev.request
        found = self._dialogs.get((req.call_id, to_tag))
        if found is None:
            if ev.tx is not None:
                self.stats["no_dialog_481"] += 1
                self._respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
            return
        call, is_a = found
        dialog = call.a_dialog if is_a else (call.attempt.dialog if call.attempt else None)
        if dialog is None:
            if ev.tx is not None:
                self._respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
            return
        seq = req.cseq[0]
        if req.method == "ACK":
            if is_a:
                self._a_ack(call, req, now)
            else:
                self._relay_ack(call, req, from_a=False)
            return
        assert ev.tx is not None
        if dialog.remote_seq is not None and seq < dialog.remote_seq:
            # §12.2.2: a lower CSeq is out of order.
            self._respond(ev.tx, req, 500, "Server Internal Error", headers=[("retry-after", "1")])
            return
        dialog.remote_seq = seq
        if req.method == "BYE":
            self._respond(ev.tx, req, 200, "OK")
            if call.state in (CallState.ANSWERED, CallState.EARLY, CallState.CALLING):
                self._bye_both(
                    call, HangupSide.CALLER if is_a else HangupSide.BUYER, now, from_a=is_a
                )
            return
        if call.state is not CallState.ANSWERED:
            self._respond(ev.tx, req, 491, "Request Pending")
            return
        self._relay_request(call, ev, is_a, now)

    def _relay_request(self, call: Call, ev: RequestReceived, from_a: bool, now: float) -> None:
        """re-INVITE, UPDATE, INFO ... across the legs, with their bodies."""
        req = ev.request
        assert ev.tx is not None
        other = call.attempt.dialog if from_a and call.attempt else call.a_dialog
        if other is None:
            self._respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
            return
        extra = [(k, v) for k in ("content-type",) if (v := req.headers.get(k)) is not None]
        if req.method == "INFO" and from_a and call.media is not None:
            dtmf = parse_dtmf_info(req.headers.get("content-type"), req.body)
            if dtmf is not None and call.media.send_dtmf(*dtmf):
                # The browser's keypad as SIP INFO: the buyer gets RFC 4733 in its media.
                self._respond(ev.tx, req, 200, "OK")
                return
        body = req.body
        if body and call.media is not None and req.method in ("INVITE", "UPDATE"):
            try:
                body = call.media.reoffer(from_a, body)
            except MediaError as exc:
                self._respond(
                    ev.tx,
                    req,
                    exc.status,
                    "Not Acceptable Here",
                    headers=[("warning", f'399 dce "{exc.reason[:100]}"')],
                )
                return
        out = other.request(
            req.method,
            self._new_branch(),
            self.config.host,
            self.config.port,
            body=body,
            extra=extra,
        )
        assert other.peer is not None
        ctx = self.layer.send_request(out, other.peer, now)
        self._relays[ctx] = _Relay(call, ev.tx, req, from_a, req.method, other.local_seq)

    def _a_ack(self, call: Call, req: SipRequest, now: float) -> None:
        """The caller's ACK for our 2xx: send the B-leg ACK (end to end)."""
        att = call.attempt
        if att is None or att.dialog is None:
            return
        if not call.a_acked:
            call.a_acked = True
            if att.ack is None:
                att.ack = self._b_ack(
                    att,
                    att.dialog.local_seq,
                    req.body,
                    req.headers.get("content-type"),
                )
            self._send_stateless(att.ack, att.dialog.peer or att.peer)
            return
        self._relay_ack(call, req, from_a=True)

    def _relay_ack(self, call: Call, req: SipRequest, *, from_a: bool) -> None:
        """ACK for a relayed re-INVITE's 2xx: on to the other leg with that leg's CSeq."""
        seq = self._pending_ack.pop((call.call_id, from_a), None)
        other = (call.attempt.dialog if call.attempt else None) if from_a else call.a_dialog
        if seq is None or other is None:
            return
        ctype = req.headers.get("content-type")
        extra = [("content-type", ctype)] if ctype and req.body else None
        ack = other.request(
            "ACK",
            self._new_branch(),
            self.config.host,
            self.config.port,
            seq=seq,
            body=req.body,
            extra=extra,
        )
        self._send_stateless(ack, other.peer or call.a_peer)

    # ------------------------------------------------------------- responses

    def _on_response(self, tx: str, resp: SipResponse, now: float) -> None:
        found = self._attempts.get(tx)
        if found is not None:
            self._attempt_response(found[0], found[1], resp, now)
            return
        relay = self._relays.get(tx)
        if relay is not None:
            self._relay_response(relay, resp, now)
            return
        if resp.status >= 200:
            # Our BYE is answered: the call can go now, not when the transaction ends
            # (Timer K), so a finished call's objects do not linger.
            self._bye_done(tx)

    def _bye_done(self, tx: str) -> None:
        ended = self._byes.pop(tx, None)
        if ended is not None:
            ended.byes_pending -= 1
            if ended.byes_pending == 0:
                self._forget(ended)

    def _attempt_response(self, call: Call, att: Attempt, resp: SipResponse, now: float) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            first = not att.provisional
            att.provisional = True
            if att.cancel_pending and first:
                self._send_cancel(att, now)
                return
            if att.abandoned or call.attempt is not att:
                return
            if resp.to_tag is not None:
                self._register_b_dialog(call, att, resp, confirmed=False)
            body = resp.body
            if body and call.media is not None:
                try:
                    body = call.media.b_answered(body)
                except MediaError as exc:
                    self._bad_buyer_sdp(call, att, exc, now)
                    return
            call.state = CallState.EARLY
            headers = _relay_headers(resp)
            self._respond(
                call.a_tx,
                call.a_invite,
                status,
                resp.reason,
                to_tag=call.a_tag,
                headers=[*headers, ("contact", self._contact(call.a_peer))],
                body=body,
            )
            self._a_early_dialog(call)
            return
        if status < 300:
            self._attempt_answered(call, att, resp, now)
            return
        att.final_status = status
        if att.abandoned or call.attempt is not att or att.cancelled:
            return
        self._attempt_failed(call, att, status, now, ring_timeout=False)

    def _attempt_answered(self, call: Call, att: Attempt, resp: SipResponse, now: float) -> None:
        if att.dialog is None or not att.dialog.confirmed:
            self._register_b_dialog(call, att, resp, confirmed=True)
        assert att.dialog is not None
        if (
            att.abandoned
            or call.attempt is not att
            or call.state not in (CallState.CALLING, CallState.EARLY)
        ):
            if att.ack is not None:
                self._send_stateless(att.ack, att.dialog.peer or att.peer)  # 2xx retransmission
                return
            # A late answer from a buyer we no longer want: ACK it, then hang it up.
            att.ack = self._b_ack(att, att.invite.cseq[0], b"", None)
            self._send_stateless(att.ack, att.dialog.peer or att.peer)
            if call.attempt is not att or call.state is CallState.ENDED:
                bye = att.dialog.request(
                    "BYE", self._new_branch(), self.config.host, self.config.port
                )
                self.layer.send_request(bye, att.dialog.peer or att.peer, now)
            return
        body = resp.body
        if body and call.media is not None:
            try:
                body = call.media.b_answered(body)
            except MediaError as exc:
                att.ack = self._b_ack(att, att.invite.cseq[0], b"", None)
                self._send_stateless(att.ack, att.dialog.peer or att.peer)
                bye = att.dialog.request(
                    "BYE", self._new_branch(), self.config.host, self.config.port
                )
                self.layer.send_request(bye, att.dialog.peer or att.peer, now)
                self._bad_buyer_sdp(call, att, exc, now)
                return
        call.state = CallState.ANSWERED
        self._effects.append(CallAnswered(facts=call.facts, target=att.target))
        if call.media is not None:
            call.media.answered()
        call.answered_mono = now
        call.answered_at = self._wall()
        call.final_status = 200
        headers = _relay_headers(resp)
        self._respond(
            call.a_tx,
            call.a_invite,
            200,
            resp.reason or "OK",
            to_tag=call.a_tag,
            headers=[*headers, ("contact", self._contact(call.a_peer))],
            body=body,
        )
        self._a_early_dialog(call)
        assert call.a_dialog is not None
        call.a_dialog.confirmed = True

    def _attempt_failed(
        self, call: Call, att: Attempt, status: int, now: float, *, ring_timeout: bool
    ) -> None:
        call.last_status = status
        failover = (300 <= status < 700 and status != 487) or ring_timeout or status == 408
        if failover and att.index + 1 < len(call.targets):
            self._next_attempt(call, now)
            return
        final = 480 if ring_timeout else status
        reason = "Temporarily Unavailable" if ring_timeout else _reason_phrase(status)
        self._final_to_a(call, final, reason)
        self._end(call, disposition_for_failure(final, ring_timeout), HangupSide.BUYER, final)

    def _bad_buyer_sdp(self, call: Call, att: Attempt, exc: MediaError, now: float) -> None:
        """A buyer answered with SDP we cannot anchor: that attempt failed (488)."""
        logger.info("buyer SDP refused", extra={"call_id": call.call_id, "reason": exc.reason})
        att.final_status = 488
        self._abandon_attempt(call, now)
        self._attempt_failed(call, att, 488, now, ring_timeout=False)

    def _relay_response(self, relay: _Relay, resp: SipResponse, now: float) -> None:
        call = relay.call
        dialog = call.a_dialog if relay.from_a else (call.attempt.dialog if call.attempt else None)
        if dialog is None:
            return
        body = resp.body
        if body and call.media is not None and relay.method in ("INVITE", "UPDATE"):
            try:
                body = call.media.reanswer(relay.from_a, body)
            except MediaError:
                body = b""
        headers = _relay_headers(resp)
        if relay.method == "INVITE":
            headers.append(("contact", dialog.contact))
        # Answer on the requester's own transaction: its Via/From/To/CSeq, our tag.
        out = make_response(
            relay.request,
            resp.status,
            resp.reason,
            to_tag=dialog.local_tag,
            headers=headers,
            body=body,
        )
        self.layer.send_response(relay.server_tx, out, now)
        if resp.status >= 200 and relay.method == "INVITE" and resp.status < 300:
            # The requester's ACK for this 2xx goes on to the other leg with this CSeq.
            self._pending_ack[(call.call_id, relay.from_a)] = relay.seq

    def _on_stray(self, resp: SipResponse, peer: Peer, now: float) -> None:
        """A 2xx retransmission after its transaction ended: re-ACK it (§13.2.2.4)."""
        if resp.status < 200 or resp.status >= 300 or resp.cseq[1] != "INVITE":
            return
        tag = resp.from_tag
        found = self._dialogs.get((resp.call_id, tag)) if tag else None
        if found is None:
            return
        call, is_a = found
        att = call.attempt
        if not is_a and att is not None and att.ack is not None and att.dialog is not None:
            self._send_stateless(att.ack, att.dialog.peer or att.peer)

    def _on_timeout(self, ev: TransactionTimedOut, now: float) -> None:
        found = self._attempts.get(ev.tx)
        if found is not None:
            call, att = found
            att.final_status = 408
            if (
                not att.abandoned
                and call.attempt is att
                and call.state in (CallState.CALLING, CallState.EARLY)
            ):
                self._attempt_failed(call, att, 408, now, ring_timeout=False)
            return
        relay = self._relays.pop(ev.tx, None)
        if relay is not None and relay.method == "INVITE":
            # RFC 4320: a timed-out non-INVITE gets no 408; the requester's Timer F settles it.
            self.layer.send_response(
                relay.server_tx, make_response(relay.request, 408, "Request Timeout"), now
            )
            return
        a_call = self._by_a_tx.get(ev.tx)
        if (
            a_call is not None
            and ev.timer == "L"
            and a_call.state is CallState.ANSWERED
            and not a_call.a_acked
        ):
            # The caller never ACKed our 200 (RFC 6026 Timer L): end both legs.
            self._bye_both(a_call, HangupSide.SYSTEM, now, from_a=None)

    def _on_terminated(self, tx: str) -> None:
        self._drop_attempt(tx)
        self._relays.pop(tx, None)
        self._bye_done(tx)  # a BYE that got no answer at all
        # A CANCEL can only match a live INVITE server transaction, so the map entry goes
        # with the transaction whatever state the call is in.
        self._by_a_tx.pop(tx, None)

    # ----------------------------------------------------------- call flow

    def _next_attempt(self, call: Call, now: float) -> None:
        index = call.attempt.index + 1 if call.attempt is not None else 0
        if call.attempt is not None:
            self._abandon_attempt(call, now)
        while index < len(call.targets):
            target = call.targets[index]
            try:
                uri = SipUri.parse(target.uri)
            except SipParseError:
                index += 1
                continue
            peer = Peer(uri.transport, uri.host, uri.port or 5060)
            att = self._b_invite(call, index, target, uri, peer, now)
            call.attempt = att
            call.attempts += 1
            call.state = CallState.CALLING
            self._attempts[att.tx] = (call, att)
            self._arm(call, att.ring_deadline, f"ring:{index}")
            return
        self._final_to_a(call, 480, "Temporarily Unavailable", rule="no_reachable_endpoint")
        self._end(call, Disposition.FAILED, HangupSide.SYSTEM, 480)

    def _b_invite(
        self, call: Call, index: int, target: Target, uri: SipUri, peer: Peer, now: float
    ) -> Attempt:
        a = call.a_invite
        call_id = self._new_id() + "@" + self.config.host
        from_tag = self._new_tag()
        mf = a.headers.get("max-forwards")
        mf_out = str(int(mf) - 1) if mf is not None and mf.strip().isdigit() else "69"
        h = Headers()
        h.add(
            "via",
            f"SIP/2.0/{peer.via_transport} {self.config.host}:{self.config.port}"
            f";branch={self._new_branch()};rport",
        )
        h.add("max-forwards", mf_out)
        caller = call.facts.caller
        h.add("from", f"<sip:{caller}@{self.config.host}>;tag={from_tag}")
        h.add("to", f"<{target.uri}>")
        h.add("call-id", call_id)
        h.add("cseq", "1 INVITE")
        h.add("contact", self._contact(peer))
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
        tx = self.layer.send_request(req, peer, now)
        return Attempt(
            index=index,
            target=target,
            invite=req,
            tx=tx,
            peer=peer,
            call_id=call_id,
            from_tag=from_tag,
            ring_deadline=now + self.config.ring_timeout,
        )

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
        if att.cancelled:
            return
        att.cancelled = True
        att.cancel_pending = False
        inv = att.invite
        h = Headers()
        h.add("via", inv.headers.get("via") or "")
        h.add("max-forwards", "70")
        h.add("from", inv.headers.get("from") or "")
        h.add("to", inv.headers.get("to") or "")
        h.add("call-id", inv.call_id)
        h.add("cseq", f"{inv.cseq[0]} CANCEL")
        cancel = SipRequest("CANCEL", inv.uri, h)
        self.layer.send_request(cancel, att.peer, now)
        # §9.1: with no final response 64*T1 after the CANCEL, the INVITE transaction is
        # considered cancelled and destroyed (its Proceeding state has no timer of its own).
        self._timer_seq += 1
        heapq.heappush(
            self._timers,
            (now + 64 * self.config.timers.t1, self._timer_seq, att.tx, "cancel-guard"),
        )

    def _bye_both(self, call: Call, side: HangupSide, now: float, from_a: bool | None) -> None:
        """End an answered call: BYE every leg that did not send the BYE itself."""
        if call.state in (CallState.CALLING, CallState.EARLY):
            # A BYE in an early dialog (rare): treat as a cancel of the attempt.
            self._abandon_attempt(call, now)
            self._final_to_a(call, 487, "Request Terminated")
            self._end(call, Disposition.CANCELLED, side, 487)
            return
        if call.state is not CallState.ANSWERED:
            return
        call.state = CallState.ENDING
        att = call.attempt
        if from_a is not True and call.a_dialog is not None:
            bye = call.a_dialog.request(
                "BYE", self._new_branch(), self.config.host, self.config.port
            )
            tx = self.layer.send_request(bye, call.a_dialog.peer or call.a_peer, now)
            self._byes[tx] = call
            call.byes_pending += 1
        if from_a is not False and att is not None and att.dialog is not None:
            if att.ack is None:
                # Ending before the caller's ACK: ACK the buyer's 2xx first so its dialog is
                # confirmed, then BYE (§15).
                att.ack = self._b_ack(att, att.invite.cseq[0], b"", None)
                self._send_stateless(att.ack, att.dialog.peer or att.peer)
            bye = att.dialog.request("BYE", self._new_branch(), self.config.host, self.config.port)
            tx = self.layer.send_request(bye, att.dialog.peer or att.peer, now)
            self._byes[tx] = call
            call.byes_pending += 1
        self._end(call, Disposition.ANSWERED, side, 200)

    def _end(
        self,
        call: Call,
        disposition: Disposition,
        side: HangupSide,
        status: int,
        *,
        registered: bool = True,
    ) -> None:
        if call.state is CallState.ENDED and call.cdr_written:
            return
        # A disposition set earlier (media_timeout by end_call) wins over the generic one.
        call.disposition = call.disposition or disposition
        call.hangup_side = call.hangup_side or side
        if call.final_status is None:
            call.final_status = status
        call.state = CallState.ENDED
        # Only live calls count (max_calls, /metrics); an ended call stays reachable through its
        # dialogs until our BYEs finish.
        self.calls.pop(call.call_id, None)
        call.ended_at = self._wall()
        call.ended_mono = self._now
        if not call.cdr_written:
            call.cdr_written = True
            target = call.attempt.target if call.attempt is not None else None
            self._effects.append(
                WriteCdr(
                    cdr=call.build_cdr(),
                    facts=call.facts,
                    target=target,
                    answered=call.answered_mono is not None,
                )
            )
        if registered and call.byes_pending == 0:
            self._forget(call)

    def _forget(self, call: Call) -> None:
        """Drop every reference to a finished call.

        The INVITE transactions live on for 32 s (RFC 6026 Timers L and M) to absorb
        retransmissions, but they need nothing from the call: keeping the call reachable
        from them would hold tens of thousands of finished calls at high rates, each a full
        object graph for the garbage collector to walk.
        """
        self.calls.pop(call.call_id, None)
        self._by_a_tx.pop(call.a_tx, None)
        call.cdr_extra = {}
        if call.attempt is not None and not call.attempt.abandoned:
            self._attempts.pop(call.attempt.tx, None)
        self._pending_ack.pop((call.call_id, True), None)
        self._pending_ack.pop((call.call_id, False), None)
        if call.a_dialog is not None:
            self._dialogs.pop((call.a_invite.call_id, call.a_tag), None)
        att = call.attempt
        if att is not None and att.dialog is not None and att.tx not in self._attempts:
            self._dialogs.pop((att.call_id, att.from_tag), None)

    def _cancel_guard(self, tx: str) -> None:
        found = self._attempts.get(tx)
        if found is None:
            return
        _, att = found
        if att.final_status is None and not (att.dialog is not None and att.dialog.confirmed):
            self.layer.terminate(tx)  # no TransactionTerminated follows a terminate()
            self._drop_attempt(tx)

    def _drop_attempt(self, tx: str) -> None:
        """The attempt's INVITE transaction is over: forget it and, unless it is the answered
        leg of a live call, its dialog."""
        found = self._attempts.pop(tx, None)
        if found is None:
            return
        call, att = found
        over = att.abandoned or call.attempt is not att or call.state is CallState.ENDED
        if att.dialog is not None and over and not (call.attempt is att and call.byes_pending):
            self._dialogs.pop((att.call_id, att.from_tag), None)

    def _call_timer(self, call: Call, kind: str, now: float) -> None:
        if kind == "route":
            if call.state is CallState.ROUTING:
                self._final_to_a(call, 500, "Server Internal Error", rule="routing_timeout")
                self._end(call, Disposition.FAILED, HangupSide.SYSTEM, 500)
            return
        if kind.startswith("ring:"):
            att = call.attempt
            if (
                att is None
                or str(att.index) != kind[5:]
                or att.abandoned
                or call.state not in (CallState.CALLING, CallState.EARLY)
            ):
                return
            self._abandon_attempt(call, now)
            self._attempt_failed(call, att, 408, now, ring_timeout=True)

    # --------------------------------------------------------------- helpers

    def _final_to_a(self, call: Call, status: int, reason: str, rule: str | None = None) -> None:
        if call.final_status is not None and call.final_status >= 200 and status != 487:
            return
        headers: list[tuple[str, str]] = []
        if rule:
            headers.append(("reason", _reason(status, rule)))
        call.final_status = status
        self._respond(call.a_tx, call.a_invite, status, reason, to_tag=call.a_tag, headers=headers)

    def _a_early_dialog(self, call: Call) -> None:
        if call.a_dialog is not None:
            return
        a = call.a_invite
        call.a_dialog = Dialog(
            call_id=a.call_id,
            local_tag=call.a_tag,
            remote_tag=a.from_tag,
            local_uri=strip_tag(a.headers.get("to") or ""),
            remote_uri=strip_tag(a.headers.get("from") or ""),
            local_seq=self._rng.randint(1, 2**20),
            remote_seq=a.cseq[0],
            remote_target=target_from(a, a.uri),
            route_set=list(a.headers.get_list("record-route")),
            peer=call.a_peer,
            contact=self._contact(call.a_peer),
        )
        self._dialogs[(a.call_id, call.a_tag)] = (call, True)

    def _register_b_dialog(
        self, call: Call, att: Attempt, resp: SipResponse, *, confirmed: bool
    ) -> None:
        if att.dialog is None:
            route = list(reversed(resp.headers.get_list("record-route")))
            peer = att.peer
            att.dialog = Dialog(
                call_id=att.call_id,
                local_tag=att.from_tag,
                remote_tag=resp.to_tag,
                local_uri=strip_tag(att.invite.headers.get("from") or ""),
                remote_uri=strip_tag(att.invite.headers.get("to") or ""),
                local_seq=att.invite.cseq[0],
                remote_seq=None,
                remote_target=target_from(resp, att.invite.uri),
                route_set=route,
                peer=_next_hop(route, target_from(resp, att.invite.uri), peer),
                contact=self._contact(peer),
            )
            self._dialogs[(att.call_id, att.from_tag)] = (call, False)
        else:
            att.dialog.remote_tag = resp.to_tag
            att.dialog.remote_target = target_from(resp, att.dialog.remote_target)
        att.dialog.confirmed = att.dialog.confirmed or confirmed

    def _b_ack(self, att: Attempt, seq: int, body: bytes, ctype: str | None) -> SipRequest:
        assert att.dialog is not None
        extra = [("content-type", ctype)] if ctype and body else None
        return att.dialog.request(
            "ACK",
            self._new_branch(),
            self.config.host,
            self.config.port,
            seq=seq,
            body=body,
            extra=extra,
        )

    def _respond(
        self,
        tx: str,
        req: SipRequest,
        status: int,
        reason: str,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        if to_tag is None and status > 100 and req.to_tag is None:
            to_tag = self._new_tag()
        resp = make_response(req, status, reason, to_tag=to_tag, headers=headers, body=body)
        self.layer.send_response(tx, resp, self._now)

    def _send_stateless(self, msg: SipRequest | SipResponse, peer: Peer) -> None:
        self.layer.send_stateless(msg, peer)

    def _contact(self, peer: Peer) -> str:
        t = "" if peer.transport == "udp" else f";transport={peer.transport}"
        return f"<sip:dce@{self.config.host}:{self.config.port}{t}>"

    def _arm(self, call: Call, when: float, kind: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, call.call_id, kind))

    def _new_tag(self) -> str:
        return f"{self._rng.getrandbits(48):012x}"

    def _new_branch(self) -> str:
        return f"z9hG4bK{self._rng.getrandbits(64):016x}"

    def _new_id(self) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def _fix_via(self, req: SipRequest, peer: Peer) -> None:
        """RFC 3261 §18.2.1 / RFC 3581: note where the request really came from."""
        try:
            via = req.via
        except SipParseError:
            return
        if "rport" not in via.params and via.host == peer.host:
            return
        if "rport" in via.params:
            via.params["rport"] = str(peer.port)
        via.params["received"] = peer.host
        first = req.headers.pop_first("via")
        if first is not None:
            req.headers.add("via", str(via), first=True)

    def _malformed(self, data: bytes, peer: Peer, exc: SipParseError) -> None:
        head = data[:16]
        if head.startswith(b"SIP/"):
            self.stats["malformed_responses"] += 1
            logger.info(
                "malformed response dropped",
                extra={"peer": f"{peer.host}:{peer.port}", "reason": exc.reason},
            )
            return
        self.stats["malformed_requests"] += 1
        resp = _stateless_error(data, exc)
        if resp is None:
            logger.info(
                "malformed request dropped",
                extra={"peer": f"{peer.host}:{peer.port}", "reason": exc.reason},
            )
            return
        self._out.append((resp, peer))


def _reason(status: int, text: str) -> str:
    return f'SIP;cause={status};text="{text}"'


_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    487: "Request Terminated",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}


def _reason_phrase(status: int) -> str:
    return _PHRASES.get(status, "Failed")


def _relay_headers(resp: SipResponse) -> list[tuple[str, str]]:
    out = []
    for name in ("content-type", "require", "rseq", "allow", "supported"):
        value = resp.headers.get(name)
        if value is not None:
            out.append((name, value))
    return out


def _pai_user(values: list[str]) -> str | None:
    for value in values:
        try:
            uri = SipUri.parse(NameAddr.parse(value).uri)
        except SipParseError:
            continue
        if uri.user:
            return uri.user_unescaped
    return None


def _next_hop(route: list[str], target: str, fallback: Peer) -> Peer:
    """Where in-dialog requests go: the first loose route, else the remote target (§12.2.1.1)."""
    uri_text = NameAddr.parse(route[0]).uri if route else target
    try:
        uri = SipUri.parse(uri_text)
    except SipParseError:
        return fallback
    if fallback.reliable and uri.transport == fallback.transport:
        return fallback  # keep using the connection we have
    return Peer(uri.transport, uri.host, uri.port or 5060)


def _stateless_error(data: bytes, exc: SipParseError) -> bytes | None:
    """A best-effort 400/513 for a request we could not parse, or None when unanswerable."""
    try:
        text = data[:8192].decode("utf-8", "replace")
    except Exception:
        return None
    head = text.split("\r\n\r\n", 1)[0].replace("\r\n", "\n").split("\n")
    keep: dict[str, list[str]] = {"via": [], "from": [], "to": [], "call-id": [], "cseq": []}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = header_key(name)
        if key in keep:
            keep[key].append(value.strip())
    if not keep["via"]:
        return None  # §18.2.1: nowhere to send a response
    status = exc.status if exc.status in (400, 413, 414, 416, 420, 505, 513) else 400
    reason = exc.reason.replace("\r", " ").replace("\n", " ")[:120] or "Bad Request"
    lines = [f"SIP/2.0 {status} {reason}"]
    for key, canon in (
        ("via", "Via"),
        ("from", "From"),
        ("to", "To"),
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
    ):
        for value in keep[key]:
            lines.append(f"{canon}: {value}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
