"""Requests inside a dialog, relayed between the legs: BYE, re-INVITE, UPDATE, INFO, and the
pairing of ACKs (RFC 3261 §12.2, §13.3.1.4, §14).

A request is found by (Call-ID, our tag) in the dialog table; an unknown dialog gets 481, a
CSeq lower than the last one 500 + Retry-After (§12.2.2). BYE ends both legs (switch/call.py).
Other requests on an answered call are re-sent on the other leg's dialog with that leg's
CSeq, and their responses come back on the requester's own server transaction; before the
answer they get 491. The caller's ACK for our 2xx becomes the ACK for the buyer's 2xx (end to
end); the ACK for a relayed re-INVITE's 2xx goes on with the CSeq the other leg's re-INVITE
had. DTMF the caller sends as SIP INFO becomes a ``SendDtmf`` effect when the call's media
can inject RFC 4733 toward the buyer (browsers).
"""

from __future__ import annotations

from dataclasses import dataclass

from switch.call import Call, Calls, CallState, relay_headers
from switch.context import Context
from switch.dialog import Leg
from switch.dtmf import parse_dtmf_info
from switch.effects import SendDtmf
from switch.events import RequestReceived
from switch.message import SipRequest, SipResponse, make_response
from switch.record import HangupSide


@dataclass(slots=True)
class Relay:
    """An in-dialog request relayed from one leg's server tx to the other leg's client tx."""

    call: Call
    server_tx: str
    request: SipRequest  # the request as received, to answer on its server tx
    leg: Leg  # the leg that sent it
    method: str
    seq: int  # its CSeq on the other leg


class InDialog:
    def __init__(self, ctx: Context, calls: Calls) -> None:
        self.ctx = ctx
        self.calls = calls
        self.relays: dict[str, Relay] = {}  # our client tx -> relay

    def request(self, ev: RequestReceived, to_tag: str, now: float) -> None:
        ctx = self.ctx
        req = ev.request
        found = ctx.dialog(req.call_id, to_tag)
        if found is None:
            if ev.tx is not None:
                ctx.stats["no_dialog_481"] += 1
                ctx.respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
            return
        call, leg = found
        dialog = call.dialog_of(leg)
        if dialog is None:
            if ev.tx is not None:
                ctx.respond(ev.tx, req, 481, "Call/Transaction Does Not Exist")
            return
        seq = req.cseq[0]
        if leg is Leg.A and not call.confirmed and call.answered is not None:
            # The caller sends in the dialog only once it has our 2xx: even if its ACK was
            # lost, the call is up on its side (a BYE right after a lost ACK, say).
            self.calls.confirm(call)
        if req.method == "ACK":
            if leg is Leg.A:
                self._a_ack(call, req)
            else:
                self._relay_ack(call, req, Leg.B)
            return
        assert ev.tx is not None
        if dialog.remote_seq is not None and seq < dialog.remote_seq:
            # §12.2.2: a lower CSeq is out of order.
            ctx.respond(ev.tx, req, 500, "Server Internal Error", headers=[("retry-after", "1")])
            return
        dialog.remote_seq = seq
        if req.method == "BYE":
            ctx.respond(ev.tx, req, 200, "OK")
            if call.state in (CallState.ANSWERED, CallState.EARLY, CallState.CALLING):
                side = HangupSide.CALLER if leg is Leg.A else HangupSide.BUYER
                self.calls.hangup(call, side, now, by=leg)
            return
        if call.state is not CallState.ANSWERED:
            ctx.respond(ev.tx, req, 491, "Request Pending")
            return
        self._relay_request(call, ev, ev.tx, leg, now)

    def _relay_request(
        self, call: Call, ev: RequestReceived, tx: str, leg: Leg, now: float
    ) -> None:
        """re-INVITE, UPDATE, INFO ... across the legs, with their bodies."""
        ctx = self.ctx
        req = ev.request
        other = call.dialog_of(leg.other)
        if other is None:
            ctx.respond(tx, req, 481, "Call/Transaction Does Not Exist")
            return
        extra = [(k, v) for k in ("content-type",) if (v := req.headers.get(k)) is not None]
        media = call.media
        if req.method == "INFO" and leg is Leg.A and media is not None and media.dtmf_to_buyer:
            dtmf = parse_dtmf_info(req.headers.get("content-type"), req.body)
            if dtmf is not None:
                # The browser's keypad as SIP INFO: the buyer gets RFC 4733 in its media.
                ctx.effects.append(
                    SendDtmf(call_id=call.call_id, digit=dtmf[0], duration_ms=dtmf[1])
                )
                ctx.respond(tx, req, 200, "OK")
                return
        body = req.body
        if body and media is not None and req.method in ("INVITE", "UPDATE"):
            try:
                body = media.reoffer(leg is Leg.A, body)
            except ctx.config.media_error as exc:
                reason = getattr(exc, "reason", str(exc))
                ctx.respond(
                    tx,
                    req,
                    getattr(exc, "status", 488),
                    "Not Acceptable Here",
                    headers=[("warning", f'399 dce "{reason[:100]}"')],
                )
                return
        cfg = ctx.config
        out = other.request(
            req.method, ctx.new_branch(), cfg.host, cfg.port, body=body, extra=extra
        )
        assert other.peer is not None
        ctx_tx = ctx.layer.send_request(out, other.peer, now)
        self.relays[ctx_tx] = Relay(call, tx, req, leg, req.method, other.local_seq)

    def _a_ack(self, call: Call, req: SipRequest) -> None:
        """The caller's ACK: for our 2xx it becomes the B-leg ACK (end to end); later ones
        belong to relayed re-INVITEs."""
        att = call.attempt
        if att is None or att.dialog is None:
            return
        if not call.a_acked:
            call.a_acked = True
            if att.ack is None:
                att.ack = self.calls.b_ack(
                    att, att.dialog.local_seq, req.body, req.headers.get("content-type")
                )
            self.ctx.send_bytes(att.ack, att.dialog.peer or att.peer)
            return
        self._relay_ack(call, req, Leg.A)

    def _relay_ack(self, call: Call, req: SipRequest, leg: Leg) -> None:
        """ACK for a relayed re-INVITE's 2xx: on to the other leg with that leg's CSeq."""
        seq = call.pending_ack.pop(leg, None) if call.pending_ack else None
        other = call.dialog_of(leg.other)
        if seq is None or other is None:
            return
        ctype = req.headers.get("content-type")
        extra = [("content-type", ctype)] if ctype and req.body else None
        cfg = self.ctx.config
        ack = other.request(
            "ACK", self.ctx.new_branch(), cfg.host, cfg.port, seq=seq, body=req.body, extra=extra
        )
        self.ctx.send_stateless(ack, other.peer or call.a_peer)

    def response(self, relay: Relay, resp: SipResponse, now: float) -> None:
        """The other leg answered a relayed request: answer the requester with it."""
        call = relay.call
        dialog = call.dialog_of(relay.leg)
        if dialog is None:
            return
        body = resp.body
        if body and call.media is not None and relay.method in ("INVITE", "UPDATE"):
            try:
                body = call.media.reanswer(relay.leg is Leg.A, body)
            except self.ctx.config.media_error:
                body = b""
        headers = relay_headers(resp)
        if relay.method == "INVITE":
            headers.append(("contact", dialog.contact))
        # Answer on the requester's own transaction: its Via/From/To/CSeq, our tag.
        out = make_response(
            relay.request, resp.status, resp.reason, to_tag=dialog.local_tag, headers=headers,
            body=body,
        )
        self.ctx.layer.send_response(relay.server_tx, out, now)
        if 200 <= resp.status < 300 and relay.method == "INVITE":
            # The requester's ACK for this 2xx goes on to the other leg with this CSeq.
            if call.pending_ack is None:
                call.pending_ack = {}
            call.pending_ack[relay.leg] = relay.seq

    def timed_out(self, relay: Relay, now: float) -> None:
        # For a non-INVITE the layer sends no 408 (RFC 4320 §4.2) but ends the requester's
        # server transaction, which has no timer of its own; its Timer F settles the rest.
        self.ctx.layer.send_response(
            relay.server_tx, make_response(relay.request, 408, "Request Timeout"), now
        )
