"""Requests outside any dialog: admission and new INVITEs, CANCEL, OPTIONS, and what is
answered statelessly (malformed requests, unknown methods).

A new INVITE is checked in this order: Max-Forwards (483, RFC 3261 §16.3), trunk admission
(source address or digest: 401 challenge, 403 with a Reason), then the Request-URI and
From/P-Asserted-Identity users it is routed on (400 naming the fault). Only an admitted,
well-formed INVITE becomes a :class:`switch.call.Call`. An unknown source's 403 and a digest
challenge cost no call and no CDR: a flood of them must not turn into database writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from switch.call import Call, Calls
from switch.context import ALLOW, Context, reason_header
from switch.errors import SipParseError
from switch.events import RequestReceived
from switch.message import SipRequest, header_key
from switch.peer import Peer
from switch.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AdmitResult:
    trunk_id: str | None  # admitted when set
    challenge: list[str] | None = None  # WWW-Authenticate values for a 401
    reason: str = ""  # why not admitted (403)
    # Admitted, but over one of the trunk's limits: the call gets 503 + Retry-After with this
    # rule in its Reason, and a CDR (disposition overload).
    limit: str | None = None


class Admitter(Protocol):
    """Trunk admission: who may send calls (the application adapts switch/admission.py)."""

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult: ...


class OutOfDialog:
    def __init__(self, ctx: Context, calls: Calls, admitter: Admitter) -> None:
        self.ctx = ctx
        self.calls = calls
        self.admitter = admitter

    def request(self, ev: RequestReceived, now: float) -> None:
        """A request without a To tag."""
        tx = ev.tx
        if tx is None:
            return  # an ACK outside any dialog/transaction: nothing to do (§17.2.3)
        req = ev.request
        method = req.method
        if method == "INVITE":
            self._invite(req, tx, ev.peer, now)
        elif method == "CANCEL":
            self._cancel(req, tx, now)
        elif method == "OPTIONS":
            self.ctx.respond(
                tx, req, 200, "OK", headers=[("allow", ALLOW), ("accept", "application/sdp")]
            )
        elif method in ("BYE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"):
            self.ctx.stats["no_dialog_481"] += 1
            self.ctx.respond(tx, req, 481, "Call/Transaction Does Not Exist")
        else:
            self.ctx.respond(tx, req, 405, "Method Not Allowed", headers=[("allow", ALLOW)])

    def _invite(self, req: SipRequest, tx: str, peer: Peer, now: float) -> None:
        ctx = self.ctx
        mf = req.headers.get("max-forwards")
        if mf is not None:
            mf = mf.strip()
            if not mf.isdigit():
                ctx.respond(tx, req, 400, "Malformed Max-Forwards")
                return
            if int(mf) == 0:
                ctx.respond(tx, req, 483, "Too Many Hops")
                return
        admit = self.admitter.admit_request(req, peer, now)
        if admit.trunk_id is None:
            if admit.challenge is not None:
                ctx.stats["calls_challenged"] += 1
                ctx.respond(
                    tx,
                    req,
                    401,
                    "Unauthorized",
                    headers=[("www-authenticate", v) for v in admit.challenge],
                )
            else:
                ctx.stats["calls_forbidden"] += 1
                ctx.respond(
                    tx,
                    req,
                    403,
                    "Forbidden",
                    headers=[reason_header(403, admit.reason or "unknown_source")],
                )
            return
        try:
            ruri = SipUri.parse(req.uri)
            from_user = req.from_.parsed_uri().user_unescaped or ""
        except SipParseError as exc:
            ctx.respond(tx, req, 400, exc.reason[:120])
            return
        caller = _pai_user(req.headers.get_list("p-asserted-identity")) or from_user
        call = Call(
            call_id=ctx.new_id(),
            a_invite=req,
            a_tx=tx,
            a_peer=peer,
            a_tag=ctx.new_tag(),
            trunk_id=admit.trunk_id,
            source=ctx.config.source if peer.transport not in ("ws", "wss") else "webrtc",
            caller=caller,
            called=ruri.user_unescaped or "",
            received=now,
        )
        self.calls.start(call, req, now, admit.limit)

    def _cancel(self, req: SipRequest, tx: str, now: float) -> None:
        invite_tx = self.ctx.layer.invite_tx_for_cancel(req)
        call = self.calls.by_a_tx.get(invite_tx) if invite_tx is not None else None
        if call is None:
            self.ctx.respond(tx, req, 481, "Call/Transaction Does Not Exist")
            return
        self.ctx.respond(tx, req, 200, "OK")
        self.calls.cancelled_by_caller(call, now)

    def malformed(self, data: bytes, peer: Peer, exc: SipParseError) -> None:
        """A message we cannot parse: a stateless 400 (or 513 ...) for a request whose Via we
        can read; a response, or a request we cannot answer, is dropped and counted."""
        ctx = self.ctx
        if data[:16].startswith(b"SIP/"):
            ctx.stats["malformed_responses"] += 1
            logger.info(
                "malformed response dropped",
                extra={"peer": f"{peer.host}:{peer.port}", "reason": exc.reason},
            )
            return
        ctx.stats["malformed_requests"] += 1
        resp = stateless_error(data, exc)
        if resp is None:
            logger.info(
                "malformed request dropped",
                extra={"peer": f"{peer.host}:{peer.port}", "reason": exc.reason},
            )
            return
        ctx.out.append((resp, peer))


def fix_via(req: SipRequest, peer: Peer) -> None:
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


def _pai_user(values: list[str]) -> str | None:
    for value in values:
        try:
            uri = SipUri.parse(NameAddr.parse(value).uri)
        except SipParseError:
            continue
        if uri.user:
            return uri.user_unescaped
    return None


def stateless_error(data: bytes, exc: SipParseError) -> bytes | None:
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
