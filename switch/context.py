"""What the parts of the switch core share: configuration, the transaction layer, the outputs,
the dialog table, the call timers, and the helpers every part sends with.

:class:`SwitchCore` (core.py) owns one :class:`Context` and hands it to its three parts:
out-of-dialog handling (outside.py), the calls (call.py) and in-dialog relay (indialog.py).
Nothing here reads a clock: ``now`` is the time of the input being handled, set by the core.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from switch.dialog import Leg
from switch.effects import Effect
from switch.media_session import MediaRefused
from switch.message import SipRequest, SipResponse, make_response
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.transaction import TransactionLayer

if TYPE_CHECKING:
    from switch.call import Call

# The methods the switch takes (Allow, §20.5). Not PRACK: it does not do 100rel (RFC 3262).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
# Option tags (§19.2) the switch supports in Require / Proxy-Require, lower case: none (no
# 100rel, timer, replaces ...), so any Require gets 420 Bad Extension (§8.2.2.3).
OPTION_TAGS: frozenset[str] = frozenset()
RETRY_AFTER_S = 5


@dataclass(slots=True)
class CoreConfig:
    host: str  # our advertised SIP address (Via, Contact, From), IPv6 in brackets
    port: int
    ring_timeout: float = 30.0
    # No response at all (not even 100 Trying) from a buyer endpoint within this: it is dead,
    # try the next target (Kamailio's fr_timer beside fr_inv_timer). 0: wait for Timer B.
    trying_timeout: float = 2.0
    max_calls: int = 5000
    timers: TimerConfig = field(default_factory=TimerConfig)
    route_timeout: float = 5.0  # routing (gate, auction, media) that never comes back fails
    source: str = "sip"
    # The exception a MediaSession raises to refuse SDP; it carries ``status`` and ``reason``.
    media_error: type[Exception] = MediaRefused


class TimerKind(enum.Enum):
    ROUTE = "route"  # routing never came back within route_timeout
    RING = "ring"  # one attempt rang for DCE_RING_TIMEOUT
    TRYING = "trying"  # one attempt got no response at all for trying_timeout
    CANCEL_GUARD = "cancel_guard"  # §9.1: no final response 64*T1 after our CANCEL


# One heap entry: (when, seq, kind, key, attempt). ``seq`` is unique, so entries never compare
# past it; ``kind`` is a TimerKind's value, ``key`` the call id (or the attempt's client
# transaction for CANCEL_GUARD), ``attempt`` the attempt index for RING and TRYING. A plain
# tuple of a float, ints and strs, not a NamedTuple holding the enum member: the collector
# stops tracking such a tuple at its first look, where the other stays a tracked object for
# every young collection to walk until its timer pops, seconds later (issue 13).
CallTimer = tuple[float, int, str, str, int]


class Context:
    """Shared state and send helpers of one switch core."""

    __slots__ = (
        "_contacts",
        "config",
        "dialogs",
        "effects",
        "layer",
        "now",
        "out",
        "rng",
        "stats",
        "timer_seq",
        "timers",
    )

    def __init__(self, config: CoreConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        # Our Contact value per transport: one string shared by every dialog, not one each
        # (two per call, issue 13).
        self._contacts: dict[str, str] = {}
        # The core sends 100 itself, and only for admitted calls: a rejected INVITE costs one
        # datagram, not two.
        self.layer = TransactionLayer(config.timers, send_trying=False)
        self.now = 0.0
        self.out: list[tuple[bytes, Peer]] = []  # stateless datagrams (malformed requests)
        self.effects: deque[Effect] = deque()
        self.timers: list[CallTimer] = []
        self.timer_seq = 0
        # (Call-ID, our tag) -> the call; ``dialog()`` tells which leg. The call alone, not a
        # (call, leg) pair: two fewer objects per call for the collector to walk (issue 13).
        self.dialogs: dict[tuple[str, str], Call] = {}
        self.stats: dict[str, int] = {
            "malformed_requests": 0,
            "malformed_responses": 0,
            "calls_total": 0,
            "calls_rejected_overload": 0,
            "calls_shed": 0,
            "calls_forbidden": 0,
            "calls_challenged": 0,
            "no_dialog_481": 0,
            "merged_482": 0,
        }

    def dialog(self, call_id: str, tag: str) -> tuple[Call, Leg] | None:
        """The call whose dialog is (``call_id``, our ``tag``), and which of its legs it is."""
        call = self.dialogs.get((call_id, tag))
        if call is None:
            return None
        # The caller's dialog has its INVITE's Call-ID and our tag on it; every other dialog
        # of the call is toward a buyer (the live attempt's, or a late answer's).
        is_a = tag == call.a_tag and call.a_dialog is not None and call_id == call.a_dialog.call_id
        return call, Leg.A if is_a else Leg.B

    def arm(self, kind: TimerKind, when: float, key: str, attempt: int = 0) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, kind.value, key, attempt))

    def respond(
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
        """Answer ``req`` on its server transaction (a To tag is made for finals)."""
        if to_tag is None and status > 100 and req.to_tag is None:
            to_tag = self.new_tag()
        resp = make_response(req, status, reason, to_tag=to_tag, headers=headers, body=body)
        self.layer.send_response(tx, resp, self.now)

    def send_stateless(self, msg: SipRequest | SipResponse, peer: Peer) -> None:
        self.layer.send_stateless(msg, peer)

    def send_bytes(self, data: bytes, peer: Peer) -> None:
        """Send a message serialised earlier (an ACK for a 2xx, re-sent as is)."""
        self.layer.send_bytes(data, peer)

    def contact(self, peer: Peer) -> str:
        value = self._contacts.get(peer.transport)
        if value is None:
            t = "" if peer.transport == "udp" else f";transport={peer.transport}"
            value = f"<sip:dce@{self.config.host}:{self.config.port}{t}>"
            if len(self._contacts) < 16:  # the transports are few; bounded all the same
                self._contacts[peer.transport] = value
        return value

    def new_tag(self) -> str:
        return f"{self.rng.getrandbits(48):012x}"

    def new_branch(self) -> str:
        return f"z9hG4bK{self.rng.getrandbits(64):016x}"

    def new_id(self) -> str:
        return f"{self.rng.getrandbits(96):024x}"


def reason_header(status: int, rule: str) -> tuple[str, str]:
    """RFC 3326 Reason naming the rule that decided the answer."""
    return ("reason", f'SIP;cause={status};text="{rule}"')


_PHRASES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}


def reason_phrase(status: int) -> str:
    return _PHRASES.get(status, "Failed")
