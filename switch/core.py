"""The sans-IO switch core: SIP messages in, SIP messages and effects out (docs/sip.md).

Theory of operation
-------------------
Inputs are method calls, each with ``now`` (monotonic seconds): ``receive_datagram(data,
peer, now)`` for one message off the wire, ``routed()`` and ``media_opened()`` /
``media_failed()`` with the results of the effects, ``connection_closed()``, ``end_call()``,
``handle_timer(now)`` and ``drain(now)``. Outputs are pulled: ``datagrams_to_send()``,
``next_effect()`` and ``get_timer()``. The core never sends a packet, reads a clock or
awaits; randomness (tags, branches, Call-IDs) comes from the ``random.Random`` passed in.

A message is parsed (a malformed request gets a stateless 400 naming the fault; a malformed
response is dropped and counted) and handed to the transaction layer, whose events the core
dispatches to its three parts:

* outside.py: requests without a To tag (admission and new INVITEs, CANCEL, OPTIONS);
* indialog.py: requests inside a dialog (BYE, re-INVITE, UPDATE, INFO, ACK pairing) and the
  responses to the requests it relayed;
* call.py: each call's state machine: routing, media, attempts and failover, answer, end;
  the responses and timeouts of our B-leg INVITEs and BYEs; the call timers.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence

from switch.call import Call, Calls, CallState
from switch.context import RETRY_AFTER_S, Context, CoreConfig, TimerKind, reason_header
from switch.dialog import DialogSnapshot, Leg
from switch.effects import Effect, ProbeAnswered, Rejected, RouteResult
from switch.errors import SipParseError
from switch.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimedOut,
)
from switch.indialog import InDialog
from switch.media_session import MediaSession
from switch.message import Headers, SipRequest, SipResponse, make_response, parse_message
from switch.outside import Admitter, OutOfDialog, fix_via
from switch.peer import Peer
from switch.record import Outcome
from switch.stateless import answer as stateless_answer
from switch.stateless import is_stateless_ack, top_branch
from switch.transaction import TransactionLayer
from switch.uri import SipUri

RECOVERY_SEQ_GAP = 1000
# INVITE branches let through are remembered this long (twice over, in two generations): a
# retransmission comes within Timer B's 64·T1 = 32 s, and must reach its transaction.
BRANCH_MEMORY_S = 32.0


class SwitchCore:
    def __init__(self, config: CoreConfig, admitter: Admitter, rng: random.Random) -> None:
        self.config = config
        self._ctx = ctx = Context(config, rng)
        self._calls = Calls(ctx)
        self._outside = OutOfDialog(ctx, self._calls, admitter)
        self._indialog = InDialog(ctx, self._calls)
        self._probes: dict[str, str] = {}  # OPTIONS client tx -> the probed URI
        self._shed = 0.0  # share of new INVITEs refused statelessly (set_shedding)
        self._shed_debt = 0.0
        self._shed_key = rng.randbytes(32)  # keys the To tags of shed INVITEs' 503s
        # Top-Via branches of the INVITEs let through, recent and older (see _shed_raw).
        self._branches: set[bytes] = set()
        self._branches_old: set[bytes] = set()
        self._branches_since = 0.0

    # ------------------------------------------------------------------ inputs

    def receive_datagram(self, data: bytes, peer: Peer, now: float) -> None:
        """One message off the wire (a datagram or one framed stream message)."""
        self._ctx.now = now
        if self._shed > 0.0 and self._shed_raw(data, peer):
            return
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self._outside.malformed(data, peer, exc)
            return
        if isinstance(msg, SipRequest):
            fix_via(msg, peer)
            if msg.method == "INVITE":
                if self._shed > 0.0 and self._shed_this(msg, peer):
                    return
                self._let_through(msg, now)
        try:
            self._ctx.layer.receive(msg, peer, now)
            self._pump(now)
        except SipParseError as exc:
            # A header no layer had read yet turned out malformed (e.g. a Contact or Route
            # only a dialog reads). The message is dropped; the calls it touched keep their
            # timers, which end them cleanly if the peer never sends a good one.
            self._outside.malformed(data, peer, exc)

    def set_shedding(self, fraction: float) -> None:
        """Refuse this share (0 to 1) of new INVITEs with a stateless 503 + Retry-After.

        The glue measures load (dce/load.py) and sets it. Calls already admitted, their
        retransmissions and every request inside a dialog always go on.
        """
        self._shed = min(1.0, max(0.0, fraction))
        if self._shed == 0.0:
            self._shed_debt = 0.0

    def _let_through(self, req: SipRequest, now: float) -> None:
        """Remember an INVITE's branch, so that its retransmissions pass _shed_raw."""
        if now - self._branches_since >= BRANCH_MEMORY_S:
            self._branches_old, self._branches = self._branches, set()
            self._branches_since = now
        try:
            if req.to_tag is not None:
                return
            branch = req.via.branch
        except SipParseError:
            return  # a malformed To or Via: the layer answers it 400, no retransmission to know
        if branch is not None:
            self._branches.add(branch.encode("utf-8", "surrogateescape"))

    def _shed_raw(self, data: bytes, peer: Peer) -> bool:
        """While shedding, refuse from the raw bytes, before any parsing: a refusal must cost
        far less than a call, or the refusals alone saturate the switch (and their callers'
        retransmissions, refused again, keep it there). True when ``data`` was dealt with.

        * a new INVITE whose share is due: a stateless 503 (switch/stateless.py); its
          retransmissions get the same answer, with the same To tag;
        * the ACK of such a 503 (its To tag is one stateless.answer made): dropped, as the core
          would after parsing it;
        * anything else, an INVITE let through before and its retransmissions included: the
          full path.
        """
        if not data.startswith(b"INVITE "):
            return is_stateless_ack(data)
        branch = top_branch(data)
        if branch is not None and (branch in self._branches or branch in self._branches_old):
            return False  # a retransmission of an INVITE already taken
        if self._shed_debt + self._shed < 1.0:
            return False  # not its turn: the full path counts it (_shed_this)
        resp = stateless_answer(
            data, peer, 503, "Service Unavailable",
            [("Retry-After", str(RETRY_AFTER_S)), ("Reason", reason_header(503, "overload")[1])],
            self._shed_key,
        )
        if resp is None:
            return False  # not plainly an initial INVITE: the parsed path decides
        self._shed_debt += self._shed - 1.0
        self._ctx.stats["calls_shed"] += 1
        self._ctx.layer.send_bytes(resp, peer)
        return True

    def _shed_this(self, req: SipRequest, peer: Peer) -> bool:
        """Shed ``req`` (a new INVITE) if its share is due; True when it was answered."""
        try:
            if req.to_tag is not None or self._ctx.layer.has_server_transaction(req):
                return False
        except SipParseError:
            return False  # the normal path answers it 400
        # An even spread rather than a coin per INVITE: exactly the share, never bursts.
        self._shed_debt += self._shed
        if self._shed_debt < 1.0:
            return False
        self._shed_debt -= 1.0
        ctx = self._ctx
        ctx.stats["calls_shed"] += 1
        resp = make_response(
            req, 503, "Service Unavailable", to_tag=ctx.new_tag(),
            headers=[("retry-after", str(RETRY_AFTER_S)), reason_header(503, "overload")],
        )
        ctx.layer.send_stateless(resp, peer)
        return True

    def routed(self, call_id: str, result: RouteResult, now: float) -> bool:
        """Routing decided: open the media for the targets, or reject the call.

        Returns False when the call is gone (cancelled or timed out while routing).
        """
        self._ctx.now = now
        call = self._calls.live.get(call_id)
        if call is None or call.state is not CallState.ROUTING:
            return False
        if isinstance(result, Rejected):
            self._calls.rejected(call, result.status, result.reason, result.rule)
        elif not result.targets:
            self._calls.rejected(call, 480, "Temporarily Unavailable", "no_buyer")
        else:
            self._calls.routed(call, tuple(result.targets), result.present_as)
        self._pump(now)
        return True

    def media_opened(self, call_id: str, media: MediaSession, now: float) -> bool:
        """The call's media is open: try the first target.

        Returns False when the call is gone; the glue then closes ``media`` itself.
        """
        self._ctx.now = now
        call = self._waiting_for_media(call_id)
        if call is None:
            return False
        self._calls.media_opened(call, media, now)
        self._pump(now)
        return True

    def media_failed(self, call_id: str, status: int, rule: str, now: float) -> None:
        """No media for the call (488 bad offer, 503 no ports): the caller gets ``status``."""
        self._ctx.now = now
        call = self._waiting_for_media(call_id)
        if call is not None:
            self._calls.media_failed(call, status, rule)
            self._pump(now)

    def connection_closed(self, peer: Peer, now: float) -> None:
        """A caller's stream connection (TCP, WebSocket) went away: end its calls."""
        self._ctx.now = now
        self._calls.connection_closed(peer, now)
        self._pump(now)

    def end_call(self, call_id: str, outcome: Outcome, now: float) -> None:
        """The switch ends a call itself (media timeout, a browser whose media died)."""
        self._ctx.now = now
        call = self._calls.live.get(call_id)
        if call is not None:
            self._calls.end_call(call, outcome, now)
            self._pump(now)

    def hang_up(self, call_id: str, now: float) -> bool:
        """The operator ends a live call (admin API, ``dce hangup``): BYE both legs when
        answered, else cancel the attempt and give the caller 480 ``operator_hangup``.
        False when no live call has that id."""
        self._ctx.now = now
        call = self._calls.live.get(call_id)
        if call is None:
            return False
        self._calls.operator_hangup(call, now)
        self._pump(now)
        return True

    def hang_up_dialogs(self, legs: Sequence[DialogSnapshot], now: float) -> None:
        """BYE in dialogs no live call owns: calls that were up when an earlier process died
        (crash recovery). Their answers and timeouts need nothing more from the core."""
        self._ctx.now = now
        for leg in legs:
            peer = Peer(leg.transport, leg.host, leg.port)
            # RFC 3261 §12.2.1.1: CSeq may jump forward; the dead process may have sent
            # in-dialog requests after the snapshot, so jump well past them.
            dialog = leg.dialog(self._ctx.contact(peer), seq_gap=RECOVERY_SEQ_GAP)
            self._calls.send_bye(dialog, peer, now)
        self._pump(now)

    def send_options(self, uri: str, now: float) -> bool:
        """Probe a buyer endpoint with OPTIONS (RFC 3261 §11); the answer, or its absence,
        comes back as ``ProbeAnswered``. False when ``uri`` is not a SIP URI we can send to."""
        self._ctx.now = now
        try:
            target = SipUri.parse(uri)
        except SipParseError:
            return False
        ctx = self._ctx
        cfg = ctx.config
        peer = Peer(target.transport, target.host, target.port or 5060)
        h = Headers()
        h.add(
            "via",
            f"SIP/2.0/{peer.via_transport} {cfg.host}:{cfg.port};branch={ctx.new_branch()};rport",
        )
        h.add("max-forwards", "70")
        h.add("from", f"<sip:dce@{cfg.host}>;tag={ctx.new_tag()}")
        h.add("to", f"<{uri}>")
        h.add("call-id", f"{ctx.new_id()}@{cfg.host}")
        h.add("cseq", "1 OPTIONS")
        h.add("accept", "application/sdp")
        tx = ctx.layer.send_request(SipRequest("OPTIONS", str(target), h), peer, now)
        self._probes[tx] = uri
        return True

    def handle_timer(self, now: float) -> None:
        ctx = self._ctx
        ctx.now = now
        ctx.layer.handle_timer(now)
        timers = ctx.timers
        calls = self._calls
        while timers and timers[0][0] <= now:
            _, _, value, key, attempt = heapq.heappop(timers)
            kind = TimerKind(value)
            if kind is TimerKind.CANCEL_GUARD:
                calls.cancel_guard(key)
                continue
            call = calls.live.get(key)
            if call is None:
                continue
            if kind is TimerKind.ROUTE:
                calls.route_timeout(call)
            elif kind is TimerKind.TRYING:
                calls.trying_timeout(call, attempt, now)
            else:
                calls.ring_timeout(call, attempt, now)
        self._pump(now)

    def drain(self, now: float) -> None:
        """Shutdown: refuse new calls, end live ones (BYE when answered, 503 before)."""
        self._ctx.now = now
        self._calls.drain(now)
        self._pump(now)

    # ----------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        out = self._ctx.layer.datagrams_to_send()
        if self._ctx.out:
            out.extend(self._ctx.out)
            self._ctx.out = []
        return out

    def next_effect(self) -> Effect | None:
        effects = self._ctx.effects
        return effects.popleft() if effects else None

    def get_timer(self) -> float | None:
        t = self._ctx.layer.get_timer()
        timers = self._ctx.timers
        if timers:
            mine = timers[0][0]
            return mine if t is None or mine < t else t
        return t

    @property
    def live_calls(self) -> int:
        return len(self._calls.live)

    @property
    def calls(self) -> dict[str, Call]:
        """The live calls by the switch's call id."""
        return self._calls.live

    @property
    def layer(self) -> TransactionLayer:
        return self._ctx.layer

    @property
    def stats(self) -> dict[str, int]:
        return self._ctx.stats

    def tables(self) -> Sequence[int]:
        """Sizes of every table that refers to calls (all 0 once calls and timers are over)."""
        ctx, calls = self._ctx, self._calls
        return (
            len(calls.live),
            len(calls.by_a_tx),
            len(calls.attempts),
            len(calls.byes),
            len(ctx.dialogs),
            len(self._indialog.relays),
            len(self._probes),
        )

    # ------------------------------------------------------------------ pump

    def _waiting_for_media(self, call_id: str) -> Call | None:
        call = self._calls.live.get(call_id)
        if call is None or call.state is not CallState.MEDIA:
            return None
        return call

    def _pump(self, now: float) -> None:
        layer = self._ctx.layer
        calls, indialog = self._calls, self._indialog
        while (ev := layer.next_event()) is not None:
            match ev:
                case RequestReceived():
                    if self._outside.screen(ev):
                        continue  # refused: 405, 501, 420 or 415 (outside.py)
                    to_tag = ev.request.to_tag
                    if to_tag is not None:
                        indialog.request(ev, to_tag, now)
                    else:
                        self._outside.request(ev, now)
                case ResponseReceived():
                    self._response(ev.tx, ev.response, now)
                case TransactionTimedOut():
                    self._timed_out(ev, now)
                case StrayResponse():
                    self._stray(ev.response)
                case TransactionTerminated():
                    self._probes.pop(ev.tx, None)
                    calls.attempt_over(ev.tx)
                    indialog.relays.pop(ev.tx, None)
                    calls.bye_done(ev.tx)  # a BYE that got no answer at all
                    # A CANCEL can only match a live INVITE server transaction, so the map
                    # entry goes with the transaction whatever state the call is in.
                    calls.by_a_tx.pop(ev.tx, None)

    def _response(self, tx: str, resp: SipResponse, now: float) -> None:
        if tx in self._probes:
            if resp.status >= 200:
                uri = self._probes.pop(tx)
                self._ctx.effects.append(ProbeAnswered(uri=uri, status=resp.status, at=now))
            return
        calls = self._calls
        found = calls.attempts.get(tx)
        if found is not None:
            calls.attempt_response(found[0], found[1], resp, now)
            return
        relay = self._indialog.relays.get(tx)
        if relay is not None:
            self._indialog.response(relay, resp, now)
            return
        if resp.status >= 200:
            # Our BYE is answered: the call can go now, not when the transaction ends
            # (Timer K), so a finished call's objects do not linger.
            calls.bye_done(tx)

    def _timed_out(self, ev: TransactionTimedOut, now: float) -> None:
        uri = self._probes.pop(ev.tx, None)
        if uri is not None:
            self._ctx.effects.append(ProbeAnswered(uri=uri, status=None, at=now))
            return
        calls = self._calls
        found = calls.attempts.get(ev.tx)
        if found is not None:
            calls.attempt_timed_out(found[0], found[1], now)
            return
        relay = self._indialog.relays.pop(ev.tx, None)
        if relay is not None:
            self._indialog.timed_out(relay, now)
            return
        a_call = calls.by_a_tx.get(ev.tx)
        if (
            a_call is not None
            and ev.timer == "L"
            and a_call.state is CallState.ANSWERED
            and not a_call.a_acked
        ):
            # The caller never ACKed our 200 (RFC 6026 Timer L): end both legs.
            calls.caller_never_acked(a_call, now)

    def _stray(self, resp: SipResponse) -> None:
        """A 2xx retransmission after its transaction ended: re-ACK it (§13.2.2.4)."""
        if resp.status < 200 or resp.status >= 300 or resp.cseq[1] != "INVITE":
            return
        tag = resp.from_tag
        found = self._ctx.dialog(resp.call_id, tag) if tag else None
        if found is None:
            return
        call, leg = found
        if leg is Leg.B:
            self._calls.resend_ack(call)
