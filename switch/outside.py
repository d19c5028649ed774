"""Requests outside any dialog: admission and new INVITEs, CANCEL, OPTIONS, and what is
refused before any of that (methods, extensions, bodies the switch does not take) or answered
statelessly (malformed requests).

Every request with a transaction first goes through :meth:`OutOfDialog.screen`, in the order
of RFC 3261 §8.2: the method (a known method the switch does not take: 405, an unknown one:
501, both with Allow; inside a dialog only PRACK is refused, every other method is relayed),
then Require and Proxy-Require (420 with Unsupported: the switch supports no option tag; ACK
and CANCEL are exempt, §8.2.2.3), then the body of a new INVITE (415 unless it is SDP,
§8.2.3). An unsupported Request-URI scheme is 416 from the parser.

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
from switch.context import ALLOW, OPTION_TAGS, Context, reason_header
from switch.errors import SipParseError
from switch.events import RequestReceived
from switch.message import (
    METHODS,
    STATELESS_STATUSES,
    SipRequest,
    stateless_response,
)
from switch.peer import Peer
from switch.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)

# The methods in ALLOW: a request outside a dialog with any other method is refused.
ALLOWED = frozenset(m.strip() for m in ALLOW.split(","))
# Methods that only make sense inside a dialog: without one, 481 (§12.2.2).
_DIALOG_ONLY = frozenset({"BYE", "UPDATE", "INFO"})


@dataclass(slots=True)
class AdmitResult:
    trunk_id: str | None  # admitted when set
    challenge: list[str] | None = None  # WWW-Authenticate values for a 401
    reason: str = ""  # why not admitted (403)
    # Admitted, but over one of the trunk's limits: the call gets 503 + Retry-After with this
    # rule in its Reason, and a CDR (disposition overload).
    limit: str | None = None
    # The caller's own address when a trusted proxy named it (switch/proxy.py): the media
    # latching hint. None: the packet's source is the caller.
    source: Peer | None = None


class Admitter(Protocol):
    """Trunk admission: who may send calls (the application adapts switch/admission.py)."""

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult: ...


class OutOfDialog:
    def __init__(self, ctx: Context, calls: Calls, admitter: Admitter) -> None:
        self.ctx = ctx
        self.calls = calls
        self.admitter = admitter
        # (Call-ID, From tag, CSeq number) of each call's first INVITE -> its server transaction,
        # for merged-request detection; entries of calls gone are pruned as it grows.
        self._firsts: dict[tuple[str, str, int], str] = {}
        self._prune_at = 1024

    def screen(self, ev: RequestReceived) -> bool:
        """Refuse a request the switch does not take (see the module docstring), in or out
        of a dialog. True when it was answered here."""
        tx = ev.tx
        if tx is None:
            return False  # an ACK: never answered
        req = ev.request
        method = req.method
        headers = req.headers
        if method not in ALLOWED and (method == "PRACK" or req.to_tag is None):
            # §8.2.1. PRACK: the switch does not do 100rel (RFC 3262), in a dialog or not.
            if method in METHODS:
                self.ctx.respond(tx, req, 405, "Method Not Allowed", headers=[("allow", ALLOW)])
            else:
                self.ctx.respond(tx, req, 501, "Not Implemented", headers=[("allow", ALLOW)])
            return True
        if method != "CANCEL":
            require = headers.get("require")
            proxy_require = headers.get("proxy-require")
            if require is not None or proxy_require is not None:
                tags = headers.get_list("require") + headers.get_list("proxy-require")
                unsupported = [t for t in dict.fromkeys(tags) if t.lower() not in OPTION_TAGS]
                if unsupported:
                    self.ctx.respond(
                        tx,
                        req,
                        420,
                        "Bad Extension",
                        headers=[("unsupported", ", ".join(unsupported))],
                    )
                    return True
        if method == "INVITE" and req.body and req.to_tag is None:
            # §8.2.3: the switch reads the offer, so it must be plain SDP.
            ctype = headers.get("content-type")
            encoding = headers.get("content-encoding")
            if ctype is not None and ctype.partition(";")[0].strip().lower() != "application/sdp":
                self.ctx.respond(
                    tx,
                    req,
                    415,
                    "Unsupported Media Type",
                    headers=[("accept", "application/sdp")],
                )
                return True
            if encoding is not None and encoding.strip().lower() != "identity":
                self.ctx.respond(
                    tx,
                    req,
                    415,
                    "Unsupported Media Type",
                    headers=[("accept-encoding", "identity")],
                )
                return True
        return False

    def request(self, ev: RequestReceived, now: float) -> None:
        """A request without a To tag (already screened)."""
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
        elif method in _DIALOG_ONLY:
            self.ctx.stats["no_dialog_481"] += 1
            self.ctx.respond(tx, req, 481, "Call/Transaction Does Not Exist")
        else:  # not reached: screen() refused every other method
            self.ctx.respond(tx, req, 405, "Method Not Allowed", headers=[("allow", ALLOW)])

    def _merged(self, req: SipRequest, tx: str) -> bool:
        """§8.2.2.2: the same INVITE arriving again over another path (a fork upstream, a
        looping route) carries the first copy's From tag, Call-ID and CSeq but another branch.
        It must not become a second call (a second bill): True when it is such a copy."""
        from_tag = req.from_tag
        if from_tag is None:
            return False
        key = (req.call_id, from_tag, req.cseq[0])
        first = self._firsts.get(key)
        if first is not None and first != tx and first in self.calls.by_a_tx:
            return True
        self._firsts[key] = tx
        if len(self._firsts) >= self._prune_at:
            live = self.calls.by_a_tx
            self._firsts = {k: t for k, t in self._firsts.items() if t in live}
            self._prune_at = max(1024, 2 * len(self._firsts))
        return False

    def _invite(self, req: SipRequest, tx: str, peer: Peer, now: float) -> None:
        ctx = self.ctx
        try:
            merged = self._merged(req, tx)
        except SipParseError:
            merged = False  # a broken CSeq or From is answered 400 below
        if merged:
            ctx.stats["merged_482"] += 1
            ctx.respond(tx, req, 482, "Loop Detected")
            return
        mf = req.headers.get("max-forwards")
        if mf is not None:
            mf = mf.strip()
            # §20.22: 0 to 255 (isascii: str.isdigit() takes digits int() refuses).
            if not (mf.isascii() and mf.isdigit()) or len(mf) > 10 or int(mf) > 255:
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
            from_user = _user_of(req.from_)
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
            source_ip=admit.source.host if admit.source is not None else peer.host,
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
        """A message we cannot parse: a stateless 400 (or 416, 505, 513) for a request with a
        Via line; a response, an ACK or a request without Via is dropped and counted."""
        ctx = self.ctx
        if data.lstrip(b"\r\n")[:4].upper() == b"SIP/":
            ctx.stats["malformed_responses"] += 1
            logger.info(
                "malformed response dropped",
                extra={"peer": f"{peer.host}:{peer.port}", "reason": exc.reason},
            )
            return
        ctx.stats["malformed_requests"] += 1
        status = exc.status if exc.status in STATELESS_STATUSES else 400
        resp = stateless_response(data, status, exc.reason)
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


def _user_of(addr: NameAddr) -> str:
    """The user part of a From URI; empty for a scheme the switch does not route on (RFC
    4475 §3.3.4: an unknown scheme in From is no reason to refuse the request)."""
    try:
        return addr.parsed_uri().user_unescaped or ""
    except SipParseError as exc:
        if exc.status == 416:
            return ""
        raise


def _pai_user(values: list[str]) -> str | None:
    for value in values:
        try:
            uri = SipUri.parse(NameAddr.parse(value).uri)
        except SipParseError:
            continue
        if uri.user:
            return uri.user_unescaped
    return None
