"""Trunk admission as the switch core asks for it: source IP/CIDR first, then digest; browsers
by their trunk's ``ws_token`` (checked at the WebSocket upgrade) or digest, never by address.
Then the trunk's own limits (calls per second, concurrent calls).

Adapts switch/admission.py (generic over trunks), switch/auth.py (RFC 8760 digest),
switch/guard.py (password-guessing blocks) and switch/limits.py (per-trunk limits) to the
exchange's trunk objects, rebuilds their indexes when trunks change, and writes the failed-
authentication log lines (format in docs/sip.md, "Password guessing", for fail2ban).

Behind a trusted proxy (DCE_TRUSTED_PROXIES, switch/proxy.py) every decision by address uses
the source the proxy names, never the proxy's own address: admission by source IP, the
password guard's counts and blocks, the failed-authentication log lines, and the trust a
digest success gives the rate limiter. Stateless answers still go back to the proxy.

The pump asks :meth:`TrunkAdmitter.drops` about every message before it is parsed, so a blocked
source's INVITEs cost a dict lookup; it reports calls starting and ending
(:meth:`~TrunkAdmitter.call_started`, :meth:`~TrunkAdmitter.call_ended`,
:meth:`~TrunkAdmitter.settled`) so the concurrent-call limits can count live calls.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from config.settings import Settings
from exchange.models import ExchangeConfig, Trunk
from switch.admission import Admission, Admitted, Challenge, Forbidden
from switch.auth import DigestAuthenticator
from switch.context import reason_header
from switch.errors import SipParseError
from switch.guard import AuthGuard, GuardConfig
from switch.limits import TrunkLimit, TrunkLimiter
from switch.message import SipRequest
from switch.outside import AdmitResult
from switch.peer import Peer
from switch.proxy import ProxyTrust
from switch.stateless import answer, has_credentials
from switch.uri import SipUri

logger = logging.getLogger(__name__)

REALM = "dce"
# Characters kept as they are in a logged user name; anything else (quotes, spaces, control
# characters, non-ASCII) is %-escaped, so a line has one fixed shape whatever the peer sent.
_USER_SAFE: Final = "!$&'()*+,;=:@-._~"
_WS: Final = ("ws", "wss")


def guard_config(settings: Settings) -> GuardConfig:
    """The guard's limits from DCE_AUTH_* (docs/settings.md)."""
    return GuardConfig(
        source_limit=settings.auth_fail_limit,
        user_limit=settings.auth_user_fail_limit,
        window=settings.auth_fail_window,
        block=settings.auth_block_time,
    )


def trunk_limit(trunk: Trunk) -> TrunkLimit:
    return TrunkLimit(max_cps=trunk.max_cps, burst=trunk.cps_burst,
                      max_concurrent=trunk.max_concurrent)


class TrunkAdmitter:
    """Adapts switch/admission.py to the core: source IP/CIDR first, then digest."""

    def __init__(
        self,
        config: ExchangeConfig,
        secret: bytes,
        algorithms: tuple[str, ...],
        *,
        guard: GuardConfig | None = None,
        proxies: ProxyTrust | None = None,
    ) -> None:
        self.auth = DigestAuthenticator(REALM, secret, algorithms=algorithms)
        # Proxies whose requests name their real source (switch/proxy.py).
        self.proxies = proxies if proxies is not None else ProxyTrust()
        self.admission: Admission[Any] = Admission(())
        self.guard = AuthGuard(guard)
        self.limiter = TrunkLimiter()
        self.ws_trunk: Callable[[Peer], str | None] = lambda peer: None
        # A source whose digest credentials were right: the rate limiter (switch/pike.py)
        # trusts it for a while, so a busy digest trunk is never banned for its traffic.
        self.proven: Callable[[str, float], None] = lambda host, now: None
        self._tokens: dict[str, str] = {}
        self._buyer_hosts: frozenset[str] = frozenset()
        self._tag_key = secret  # keys the To tags of stateless answers
        self.update(config)

    def update(self, config: ExchangeConfig) -> None:
        """Trunks changed (config file or admin API): rebuild the indexes and the limits."""
        self.admission = Admission(config.trunks)
        self._tokens = {t.ws_token: t.id for t in config.trunks if t.ws_token and t.active}
        self.limiter.configure({t.id: trunk_limit(t) for t in config.trunks})
        self._buyer_hosts = _endpoint_hosts(config)

    def trusted(self, host: str) -> bool:
        """Never rate-limited nor capped (switch/pike.py): a trunk's source address or network,
        the host of a buyer endpoint (its responses and BYEs are our calls' traffic), or a
        trusted proxy (its packets count against the sources they name)."""
        return (host in self._buyer_hosts or self.admission.match_source(host) is not None
                or self.proxies.trusts(host))

    def ws_token(self, request: web.Request) -> str | None:
        """WebSocket upgrade check: no token -> "" (digest decides), known -> trunk, else None."""
        token = request.query.get("token")
        if token is None:
            return ""
        for known, trunk_id in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return trunk_id
        return None

    # -- before parsing --------------------------------------------------------------------------

    def drops(self, data: bytes, peer: Peer, now: float) -> bool:
        """True for a message to drop unparsed: an initial INVITE from a blocked source that
        would need authentication, beyond the few the guard lets through to be answered 403."""
        guard = self.guard
        if not guard.any_source_blocked(now):
            return False
        if not data.startswith(b"INVITE ") or _has_to_tag(data):
            return False  # other requests need no authentication; responses pass
        host = self.proxies.identity(data, peer.host)
        if not guard.source_blocked(host, now):
            return False
        if peer.transport in _WS:
            if self.ws_trunk(peer):
                return False  # a token-bound browser connection is admitted without digest
        elif self.admission.match_source(host) is not None:
            return False  # admitted by address (a trunk added since the block)
        return not guard.answer_blocked(host, now)

    def refusal(self, data: bytes, peer: Peer, now: float) -> tuple[int, bytes] | None:
        """(status, bytes) of a stateless answer for an initial INVITE from a source no trunk
        owns and without credentials: 403 when no trunk has a password, else a 401 challenge
        (switch/stateless.py says why). None leaves the message to the core, as for every
        other message, a blocked source (the core answers it), and browsers."""
        if not data.startswith(b"INVITE ") or peer.transport in _WS:
            return None
        admission = self.admission
        host = self.proxies.identity(data, peer.host)
        if admission.match_source(host) is not None:
            return None
        if not admission.needs_digest():
            status, reason = 403, "Forbidden"
            headers = [("Reason", reason_header(403, "unknown_source")[1])]
        else:
            if self.guard.source_blocked(host, now) or has_credentials(data):
                return None
            status, reason = 401, "Unauthorized"
            headers = [("WWW-Authenticate", value) for value in self.auth.challenge(now)]
        # To the hop it came from (behind a proxy: the proxy, which relays it).
        response = answer(data, peer, status, reason, headers, self._tag_key)
        return None if response is None else (status, response)

    # -- the core's question ---------------------------------------------------------------------

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        ws = peer.transport in _WS
        if ws:
            trunk_id = self.ws_trunk(peer)
            if trunk_id:
                return AdmitResult(trunk_id=trunk_id, limit=self.limiter.admit(trunk_id, now))
        # Behind a trusted proxy, the source it names; otherwise ``peer`` itself.
        source = self.proxies.source_of(req, peer) if not ws else peer
        named = source if source is not peer else None
        result = self.admission.admit(
            source.host,
            req.headers.get("authorization") or req.headers.get("proxy-authorization"),
            req.method,
            now,
            self.auth,
            guard=self.guard,
            # Browsers are never admitted by source address: only a token or digest.
            by_source=not ws,
        )
        if isinstance(result, Admitted):
            trunk_id = result.trunk.id
            if result.via == "digest":
                self.guard.succeeded(source.host, result.trunk.username, now)
                self.proven(source.host, now)
            return AdmitResult(trunk_id=trunk_id, limit=self.limiter.admit(trunk_id, now),
                               source=named)
        if isinstance(result, Challenge):
            return AdmitResult(trunk_id=None, challenge=list(result.headers))
        self._refused(result, source, now)
        return AdmitResult(trunk_id=None, reason=result.text)

    def _refused(self, result: Forbidden, peer: Peer, now: float) -> None:
        if not result.failure:
            return  # unknown source, or a block (the guard counted it)
        user = "-" if result.username is None else quote(result.username, safe=_USER_SAFE)
        # One fixed shape per line, source first (docs/sip.md gives the fail2ban filter).
        logger.warning(
            "sip auth failed source=%s user=%s realm=%s reason=%s",
            peer.host, user, self.auth.realm, result.reason.replace(" ", "_"),
            extra={"source": peer.host, "port": peer.port, "transport": peer.transport,
                   "user": result.username, "realm": self.auth.realm},
        )
        for block in self.guard.failed(peer.host, result.username, now):
            seconds = round(block.until - now)
            if block.kind == "source":
                logger.warning(
                    "sip auth blocked source=%s failures=%d seconds=%d",
                    peer.host, block.failures, seconds,
                    extra={"source": peer.host, "blocked": block.key},
                )
            else:
                logger.warning(
                    "sip auth blocked user=%s failures=%d seconds=%d",
                    quote(block.key, safe=_USER_SAFE), block.failures, seconds,
                    extra={"user": block.key},
                )

    # -- what the pump reports (concurrent-call limits) ------------------------------------------

    def call_started(self, call_id: str, trunk_id: str) -> None:
        self.limiter.started(call_id, trunk_id)

    def call_ended(self, call_id: str) -> None:
        self.limiter.ended(call_id)

    def settled(self) -> None:
        self.limiter.settled()


def _endpoint_hosts(config: ExchangeConfig) -> frozenset[str]:
    """The IP hosts of the active buyers' active endpoints (a host name matches no source)."""
    hosts = set()
    for buyer in config.buyers:
        if not buyer.active:
            continue
        for endpoint in buyer.endpoints:
            if not endpoint.active:
                continue
            try:
                hosts.add(SipUri.parse(endpoint.uri).host)
            except SipParseError:
                continue  # refused when the call is routed; nothing to trust here
    return frozenset(hosts)


def _has_to_tag(data: bytes) -> bool:
    """Whether the To header of a raw request carries a tag (an in-dialog request).

    Only read for requests from a blocked source; a message this misjudges still meets the
    admission check after parsing, which refuses it unchecked."""
    head = data[: data.find(b"\r\n\r\n")]
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"to", b"t"):
            return b"tag=" in value.lower()
    return False
