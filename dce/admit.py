"""Trunk admission as the switch core asks for it: source IP/CIDR first, then digest; browsers
by their trunk's ``ws_token`` (checked at the WebSocket upgrade) or digest, never by address.

Adapts switch/admission.py (generic over trunks) and switch/auth.py (RFC 8760 digest) to the
exchange's trunk objects, and rebuilds its indexes when trunks change.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web

from exchange.models import ExchangeConfig
from switch.admission import Admission, Admitted, Challenge
from switch.auth import DigestAuthenticator
from switch.message import SipRequest
from switch.outside import AdmitResult
from switch.peer import Peer

REALM = "dce"


class TrunkAdmitter:
    """Adapts switch/admission.py to the core: source IP/CIDR first, then digest."""

    def __init__(self, config: ExchangeConfig, secret: bytes, algorithms: tuple[str, ...]) -> None:
        self.auth = DigestAuthenticator(REALM, secret, algorithms=algorithms)
        self.admission: Admission[Any] = Admission(())
        self.ws_trunk: Callable[[Peer], str | None] = lambda peer: None
        self._tokens: dict[str, str] = {}
        self.update(config)

    def update(self, config: ExchangeConfig) -> None:
        """Trunks changed (config file or admin API): rebuild the address and token indexes."""
        self.admission = Admission(config.trunks)
        self._tokens = {t.ws_token: t.id for t in config.trunks if t.ws_token and t.active}

    def ws_token(self, request: web.Request) -> str | None:
        """WebSocket upgrade check: no token -> "" (digest decides), known -> trunk, else None."""
        token = request.query.get("token")
        if token is None:
            return ""
        for known, trunk_id in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return trunk_id
        return None

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        if peer.transport in ("ws", "wss"):
            trunk_id = self.ws_trunk(peer)
            if trunk_id:
                return AdmitResult(trunk_id=trunk_id)
        result = self.admission.admit(
            # Browsers are never admitted by source address: only a token or digest.
            "" if peer.transport in ("ws", "wss") else peer.host,
            req.headers.get("authorization") or req.headers.get("proxy-authorization"),
            req.method,
            now,
            self.auth,
        )
        if isinstance(result, Admitted):
            return AdmitResult(trunk_id=result.trunk.id)
        if isinstance(result, Challenge):
            return AdmitResult(trunk_id=None, challenge=list(result.headers))
        return AdmitResult(trunk_id=None, reason=result.reason.replace(" ", "_"))
