"""SIP transactions: the four RFC 3261 §17 state machines, sans-IO, with RFC 6026 and RFC 4320.

Theory of operation
-------------------
:class:`TransactionLayer` sits between the transport edge and the TU (dialogs, the B2BUA). It
never touches a socket or a clock. Its inputs are:

- ``receive(msg, peer, now)``: a parsed message from the wire;
- ``send_request(req, peer, now)``, ``send_response(tx, resp, now)``, ``send_stateless(msg,
  peer)``, ``terminate(tx)``: commands from the TU;
- ``handle_timer(now)``: the caller's alarm went off (``get_timer()`` says when to set it).

Its outputs are pulled: ``next_event()`` (see ``switch/events.py``) and ``datagrams_to_send()``
(bytes plus the :class:`Peer` to send them to). A transaction is named by its key, a string:

- client (§17.1.3): ``c|<branch>|<CSeq method>``; the TU's request carries our z9hG4bK branch;
- server (§17.2.3): ``s|<branch>|<sent-by host>|<sent-by port>|<method>`` with ACK counted as
  INVITE, when the top Via branch has the magic cookie; otherwise the RFC 2543 key: Request-URI,
  To tag, From tag, Call-ID, CSeq number, method and the whole top Via. CANCEL has its own
  server transaction; ``invite_tx_for_cancel`` finds the INVITE it targets (§9.2).

Each transaction is a ``dataclass(slots=True)`` with a ``state`` from its machine's enum and one
``timer_<letter>_at`` deadline per RFC timer (None when not running). The heap holds one entry
``(deadline, seq, tx key)`` per transaction, not one per timer: ``tx.wake`` is the deadline of its
live entry, never later than its earliest running timer. Arming a timer pushes only when it is
earlier than ``wake``; cancelling one only sets its field to None. A popped entry whose
deadline is not ``wake`` (or whose transaction is gone) is stale; a live one fires the
transaction's earliest running timer if it is due (on a tie the timer that ends the
transaction, B D F H I J K L M, goes before a retransmission: the order the RFC machines'
arming gives) and pushes the entry again at the next one. A call's INVITE transactions so
push two entries each instead of three to five, and the heap stays near one entry per live
transaction (issue 13). An entry names its transaction by key, not the object: a tuple of a
float, an int and a str is one the collector stops tracking, where one holding the transaction
stays tracked for every young collection to walk until it pops, and keeps a freed transaction
alive until then. It is compacted if stale entries pile up anyway, and a transaction
that reaches Terminated is dropped from every index at once, so nothing leaks. Every message
is serialised once; retransmissions resend the same bytes. Reliable transports
(``peer.reliable``) start no Timer A, E or G and use 0 for D, I, J and K, so those
transactions end at once (§17).

All transitions of a machine are in its ``_ict``/``_nict``/``_ist``/``_nist`` method, one
``match`` on the state with the inputs of :class:`Input` under it::

  Client INVITE (§17.1.1.2, Figure 5; RFC 6026)
                1xx, to TU                 3xx-6xx: send ACK, to TU
      CALLING ------------> PROCEEDING --------------------------> COMPLETED --Timer D--> TERMINATED
       | |  |                   |                                  ^   a resent final: ACK again
       | |  +------------------------------3xx-6xx-----------------+
       | +---------2xx----------+----2xx---> ACCEPTED --Timer M--> TERMINATED
       |                                     every 2xx to the TU
       +--Timer B: TimedOut(B)--> TERMINATED          Timer A (UDP, CALLING): resend, A *= 2

  Client non-INVITE (§17.1.2.2, Figure 6)
                1xx, to TU                 200-699, to TU
      TRYING -------------> PROCEEDING --------------------------> COMPLETED --Timer K--> TERMINATED
       | |                                                         ^   responses absorbed
       | +----------------------------200-699----------------------+
       +--Timer F: TimedOut(F) (also from PROCEEDING)--> TERMINATED
      Timer E (UDP): resend; E = min(2E, T2) while TRYING, E = T2 once PROCEEDING

  Server INVITE (§17.2.1, Figure 7; RFC 6026)
      INVITE: RequestReceived, 100 Trying
       v           3xx-6xx from TU                    ACK
      PROCEEDING ----------------------> COMPLETED ---------> CONFIRMED --Timer I--> TERMINATED
       |  1xx from TU: send              Timer G (UDP): resend   ACKs absorbed
       |  INVITE: resend the last 1xx    INVITE: resend the final
       |                                 Timer H: TimedOut(H) --> TERMINATED
       | 2xx from TU
       v
      ACCEPTED  2xx resent at T1, 2T1 .. T2 until an ACK, which goes up as tx=None
       |        INVITEs absorbed; further 2xx from the TU sent
       +--Timer L (TimedOut(L) first if no ACK came)--> TERMINATED

  Server non-INVITE (§17.2.2, Figure 8)
      request: RequestReceived
       v         1xx from TU             200-699 from TU
      TRYING -------------> PROCEEDING ----------------------> COMPLETED --Timer J--> TERMINATED
       |  request: absorbed   request: resend the last 1xx     ^   request: resend the final
       +-------------------------200-699 from TU---------------+   later finals discarded

Absorbed (never surfaced): request retransmissions (answered with the last response sent, if
any), ACKs for our non-2xx finals, repeats of a provisional (same status, To and RSeq),
retransmitted non-2xx finals (the client INVITE resends its ACK), any response after a
non-INVITE final. Surfaced: every new request (a BYE or CANCEL that matches nothing is still a
RequestReceived: answering 481 is the TU's call), every ACK for a 2xx (``tx=None``), each new
provisional, each final, every 2xx to INVITE (RFC 6026: the TU ACKs each, forks included),
responses that match nothing (StrayResponse), timeouts, and terminations.

Deviations and choices:

- The 2xx is retransmitted by the server INVITE transaction while Accepted rather than by the
  TU core (§13.3.1.4). As that section requires, this happens over reliable transports too: the
  2xx travels end to end and a later hop may be UDP.
- An ACK for a 2xx normally has a new branch, so it matches an Accepted transaction by
  (Call-ID, CSeq number, From tag); one reusing the INVITE's branch matches by key. Either way
  it is also surfaced with ``tx=None``.
- A 100 Trying is sent on every new INVITE (§17.2.1: the layer cannot know the TU will answer
  within 200 ms); ``send_trying=False`` turns this off.
- RFC 4320 is enforced here: a 408 to a non-INVITE request is never sent (§4.2); the server
  transaction ends instead (TransactionTerminated), as the RFC means: no final response at all,
  the client's Timer F settles it. A provisional other than 100 to a non-INVITE (§4.1) is
  dropped and the transaction waits for the final. Both are logged at INFO. The layer sends no
  100 for non-INVITE itself (§4.1 allows one only once Timer E has reached T2).
- Responses go back to the peer the request came from (the connection for streams; rport
  style for UDP, RFC 3581), not to the Via sent-by.
- An INVITE client transaction in Proceeding has no timer (Figure 5) and neither has a server
  transaction the TU never answers: the TU ends them with ``terminate`` (after CANCEL, §9.1).

Why one module of about 900 lines: the four machines share the key scheme, the timer heap and
the send path, and every transition of every machine is meant to be read in one place (as
h11's ``_state.py`` and sipgo's transaction FSMs do).
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

from switch.errors import InvalidStateError
from switch.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
)
from switch.message import Headers, SipMessage, SipRequest, SipResponse, make_response
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.uri import split_unquoted

logger = logging.getLogger(__name__)

MAGIC_COOKIE: Final = "z9hG4bK"  # §8.1.1.7: branches of RFC 3261 elements start with it
_BRANCH_RE: Final = re.compile(r";branch=([^;,\s]+)")


class ClientInviteState(enum.Enum):
    """RFC 3261 Figure 5, with Accepted from RFC 6026."""

    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class ClientNonInviteState(enum.Enum):
    """RFC 3261 Figure 6."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class ServerInviteState(enum.Enum):
    """RFC 3261 Figure 7, with Accepted from RFC 6026."""

    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class ServerNonInviteState(enum.Enum):
    """RFC 3261 Figure 8."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


TransactionState = (
    ClientInviteState | ClientNonInviteState | ServerInviteState | ServerNonInviteState
)


class Input(enum.IntEnum):
    """What drives a machine: a message from the wire, a response from the TU, or a timer.

    An IntEnum so that ``_TIMER_FIELD[inp]`` hashes in C (``Enum.__hash__`` is Python code).
    """

    REQUEST = enum.auto()  # a retransmitted request
    ACK = enum.auto()
    RECV_1XX = enum.auto()
    RECV_2XX = enum.auto()
    RECV_3XX_6XX = enum.auto()
    SEND_1XX = enum.auto()  # responses from the TU
    SEND_2XX = enum.auto()
    SEND_3XX_6XX = enum.auto()
    SEND_REFUSED = enum.auto()  # RFC 4320 forbids it for non-INVITE (408, 101-199): not sent
    TIMER_A = enum.auto()
    TIMER_B = enum.auto()
    TIMER_D = enum.auto()
    TIMER_E = enum.auto()
    TIMER_F = enum.auto()
    TIMER_G = enum.auto()
    TIMER_H = enum.auto()
    TIMER_I = enum.auto()
    TIMER_J = enum.auto()
    TIMER_K = enum.auto()
    TIMER_L = enum.auto()
    TIMER_M = enum.auto()
    TIMER_2XX = enum.auto()  # §13.3.1.4 has no letter for the 2xx retransmission timer


# The deadline field each timer input lives in.
_TIMER_FIELD: Final = {
    Input.TIMER_A: "timer_a_at",
    Input.TIMER_B: "timer_b_at",
    Input.TIMER_D: "timer_d_at",
    Input.TIMER_E: "timer_e_at",
    Input.TIMER_F: "timer_f_at",
    Input.TIMER_G: "timer_g_at",
    Input.TIMER_H: "timer_h_at",
    Input.TIMER_I: "timer_i_at",
    Input.TIMER_J: "timer_j_at",
    Input.TIMER_K: "timer_k_at",
    Input.TIMER_L: "timer_l_at",
    Input.TIMER_M: "timer_m_at",
    Input.TIMER_2XX: "timer_2xx_at",
}
# ``wake`` while the transaction's timer is firing: ``_arm`` then never pushes (the entry is
# pushed once, after the machine ran, at the transaction's next deadline).
_FIRING: Final = float("-inf")

# Inputs by status class: index (status >= 200) + (status >= 300).
_RECV: Final = (Input.RECV_1XX, Input.RECV_2XX, Input.RECV_3XX_6XX)
_SEND: Final = (Input.SEND_1XX, Input.SEND_2XX, Input.SEND_3XX_6XX)

# (status, To header, RSeq header) of a provisional already passed up.
_ProvisionalMark = tuple[int, str | None, str | None]


@dataclass(slots=True, eq=False)
class ClientInviteTx:
    """An INVITE client transaction. ``request`` is kept until the final response, to build
    the ACK for a non-2xx; ``request_bytes`` until the first response (Timer A resends it)."""

    method: ClassVar[str] = "INVITE"

    key: str
    peer: Peer
    reliable: bool
    request: SipRequest | None
    request_bytes: bytes
    state: ClientInviteState = ClientInviteState.CALLING
    interval: float = 0.0  # the current Timer A interval
    timer_a_at: float | None = None
    timer_b_at: float | None = None
    timer_d_at: float | None = None
    timer_m_at: float | None = None
    ack_bytes: bytes | None = None
    seen_1xx: tuple[_ProvisionalMark, ...] = ()
    wake: float | None = None  # the deadline of its heap entry (see the module docstring)

    # Its timers, those that end the transaction first (the order on equal deadlines).
    timers: ClassVar[tuple[tuple[str, Input], ...]] = (
        ("timer_b_at", Input.TIMER_B),
        ("timer_d_at", Input.TIMER_D),
        ("timer_m_at", Input.TIMER_M),
        ("timer_a_at", Input.TIMER_A),
    )


@dataclass(slots=True, eq=False)
class ClientNonInviteTx:
    """A non-INVITE client transaction."""

    key: str
    peer: Peer
    reliable: bool
    method: str
    request_bytes: bytes
    state: ClientNonInviteState = ClientNonInviteState.TRYING
    interval: float = 0.0  # the current Timer E interval
    timer_e_at: float | None = None
    timer_f_at: float | None = None
    timer_k_at: float | None = None
    seen_1xx: tuple[_ProvisionalMark, ...] = ()
    wake: float | None = None

    timers: ClassVar[tuple[tuple[str, Input], ...]] = (
        ("timer_f_at", Input.TIMER_F),
        ("timer_k_at", Input.TIMER_K),
        ("timer_e_at", Input.TIMER_E),
    )


@dataclass(slots=True, eq=False)
class ServerInviteTx:
    """An INVITE server transaction. ``last_response`` is resent on retransmitted INVITEs."""

    method: ClassVar[str] = "INVITE"

    key: str
    peer: Peer
    reliable: bool
    rfc2543: bool  # matched by the RFC 2543 key: an ACK is checked against ``to_tag``
    state: ServerInviteState = ServerInviteState.PROCEEDING
    last_response: bytes | None = None
    to_tag: str | None = None  # To tag of our final response (RFC 2543 ACK matching only)
    interval: float = 0.0  # the current Timer G or 2xx retransmission interval
    timer_g_at: float | None = None
    timer_h_at: float | None = None
    timer_i_at: float | None = None
    timer_l_at: float | None = None
    timer_2xx_at: float | None = None
    acked: bool = False  # an ACK for our 2xx arrived
    accepted_key: tuple[str, int, str | None] | None = None  # (Call-ID, CSeq, From tag)
    wake: float | None = None

    timers: ClassVar[tuple[tuple[str, Input], ...]] = (
        ("timer_h_at", Input.TIMER_H),
        ("timer_i_at", Input.TIMER_I),
        ("timer_l_at", Input.TIMER_L),
        ("timer_g_at", Input.TIMER_G),
        ("timer_2xx_at", Input.TIMER_2XX),
    )


@dataclass(slots=True, eq=False)
class ServerNonInviteTx:
    """A non-INVITE server transaction."""

    key: str
    peer: Peer
    reliable: bool
    method: str
    state: ServerNonInviteState = ServerNonInviteState.TRYING
    last_response: bytes | None = None
    timer_j_at: float | None = None
    wake: float | None = None

    timers: ClassVar[tuple[tuple[str, Input], ...]] = (("timer_j_at", Input.TIMER_J),)


Transaction = ClientInviteTx | ClientNonInviteTx | ServerInviteTx | ServerNonInviteTx
_HeapEntry = tuple[float, int, str]  # (deadline, seq, transaction key)


class TransactionLayer:
    """The RFC 3261 §17 transaction layer for one switch process (see the module docstring).

    Args:
        config: T1, T2 and T4; the RFC defaults when omitted.
        send_trying: answer each new INVITE with 100 Trying at once (§17.2.1).
    """

    def __init__(self, config: TimerConfig | None = None, *, send_trying: bool = True) -> None:
        cfg = config if config is not None else TimerConfig()
        self.config = cfg
        self._send_trying = send_trying
        # Durations read on the hot path, indexed by ``reliable`` where transport matters.
        self._t1 = cfg.t1
        self._t2 = cfg.t2
        self._timer_b = cfg.timer_b
        self._timer_f = cfg.timer_f
        self._timer_h = cfg.timer_h
        self._timer_l = cfg.timer_l
        self._timer_m = cfg.timer_m
        self._timer_d = (cfg.timer_d(False), cfg.timer_d(True))
        self._timer_i = (cfg.timer_i(False), cfg.timer_i(True))
        self._timer_j = (cfg.timer_j(False), cfg.timer_j(True))
        self._timer_k = (cfg.timer_k(False), cfg.timer_k(True))

        self._txs: dict[str, Transaction] = {}
        # RFC 6026: INVITE server transactions in Accepted, for ACKs to the 2xx.
        self._accepted: dict[tuple[str, int, str | None], ServerInviteTx] = {}
        self._heap: list[_HeapEntry] = []
        self._seq = itertools.count()
        self._compact_at = 1024
        self._events: deque[TransactionEvent] = deque()
        self._out: list[tuple[bytes, Peer]] = []

    # --- Outputs --------------------------------------------------------------------------

    def next_event(self) -> TransactionEvent | None:
        """The next event for the TU, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """Drain the bytes waiting to be sent, each with its destination."""
        out = self._out
        self._out = []
        return out

    def get_timer(self) -> float | None:
        """The earliest pending deadline (monotonic seconds), or None."""
        heap = self._heap
        txs = self._txs
        while heap:
            deadline, _, key = heap[0]
            tx = txs.get(key)
            if tx is None or tx.wake != deadline:
                heapq.heappop(heap)  # stale: pushed again earlier, or its transaction is gone
                continue
            at = _next_timer(tx)[0]
            if at == deadline:
                return deadline
            # Its timers were cancelled or re-armed later since: move the entry to the next.
            tx.wake = at
            if at is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (at, next(self._seq), key))
        return None

    def __len__(self) -> int:
        """Live transactions; terminated ones are freed."""
        return len(self._txs)

    def state(self, tx: str) -> TransactionState | None:
        """The state of transaction ``tx``, or None once it has terminated."""
        t = self._txs.get(tx)
        return t.state if t is not None else None

    # --- Inputs ---------------------------------------------------------------------------

    def receive(self, msg: SipMessage, peer: Peer, now: float) -> None:
        """Match a message from ``peer`` to a transaction (§17.1.3, §17.2.3) and drive it.

        Raises:
            SipParseError: a header the match needs (Via, CSeq, Call-ID, From, To) is broken;
                nothing has changed, and the edge answers a request 400 or drops a response.
        """
        if isinstance(msg, SipResponse):
            self._receive_response(msg, peer, now)
        elif msg.method == "ACK":
            self._receive_ack(msg, peer, now)
        else:
            self._receive_request(msg, peer, now)

    def send_request(self, req: SipRequest, peer: Peer, now: float) -> str:
        """Start a client transaction for ``req`` (which carries our z9hG4bK Via) and send it.

        Returns:
            The transaction key, as found in later events.

        Raises:
            InvalidStateError: ``req`` is an ACK (use ``send_stateless``), has no magic-cookie
                branch, or its branch is already in use for this method.
        """
        method = req.method
        if method == "ACK":
            raise InvalidStateError("ACK has no client transaction: use send_stateless")
        branch = req.via.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise InvalidStateError(
                f"Request {method} needs a {MAGIC_COOKIE} branch, has {branch!r}"
            )
        key = f"c|{branch}|{method}"
        if key in self._txs:
            raise InvalidStateError(f"Branch {branch} already has a {method} client transaction")
        data = req.to_bytes()
        reliable = peer.reliable
        # Registered before arming: a compaction in _arm keeps only live transactions' timers.
        if method == "INVITE":
            ict = self._txs[key] = ClientInviteTx(key, peer, reliable, req, data)
            if not reliable:
                ict.interval = self._t1
                self._arm(ict, Input.TIMER_A, now + self._t1)
            self._arm(ict, Input.TIMER_B, now + self._timer_b)
        else:
            nict = self._txs[key] = ClientNonInviteTx(key, peer, reliable, method, data)
            if not reliable:
                nict.interval = self._t1
                self._arm(nict, Input.TIMER_E, now + self._t1)
            self._arm(nict, Input.TIMER_F, now + self._timer_f)
        self._out.append((data, peer))
        return key

    def send_response(self, tx: str, resp: SipResponse, now: float) -> None:
        """Send ``resp`` in server transaction ``tx``.

        A response the machine cannot take in its state (a second final, a 1xx after the
        final) is discarded, as §17.2.2 says for non-INVITE. For a non-INVITE request a 408
        is not sent and ends the transaction, and a 101-199 is dropped (RFC 4320 §4.2, §4.1).

        Raises:
            InvalidStateError: ``tx`` is not a live server transaction, or the status is
                outside 100-699.
        """
        t = self._txs.get(tx)
        status = resp.status
        if not 100 <= status <= 699:
            raise InvalidStateError(f"Status {status} is outside 100-699")
        inp = _SEND[(status >= 200) + (status >= 300)]
        if isinstance(t, ServerInviteTx):
            self._ist(t, inp, now, resp=resp)
        elif isinstance(t, ServerNonInviteTx):
            if status == 408 or 100 < status < 200:
                logger.info(
                    "RFC 4320: not sending %d to %s",
                    status,
                    t.method,
                    extra={"tx": tx, "method": t.method, "status": status},
                )
                inp = Input.SEND_REFUSED
            self._nist(t, inp, now, resp)
        else:
            raise InvalidStateError(f"No live server transaction {tx!r}")

    def send_stateless(self, msg: SipMessage, peer: Peer) -> None:
        """Queue ``msg`` outside any transaction (the ACK for a 2xx, stateless errors)."""
        self._out.append((msg.to_bytes(), peer))

    def send_bytes(self, data: bytes, peer: Peer) -> None:
        """Queue a message serialised earlier, outside any transaction (a re-sent ACK)."""
        self._out.append((data, peer))

    def invite_tx_for_cancel(self, cancel: SipRequest) -> str | None:
        """The INVITE server transaction a CANCEL targets (§9.2), in any state, or None.

        None means the TU answers the CANCEL 481; otherwise 200, and 487 to the INVITE if
        its transaction is still Proceeding.
        """
        key = self._server_key(cancel, "INVITE")[0]
        return key if isinstance(self._txs.get(key), ServerInviteTx) else None

    def has_server_transaction(self, req: SipRequest) -> bool:
        """Whether ``req`` belongs to a server transaction we hold (a retransmission).

        Raises SipParseError when its Via cannot be read.
        """
        return self._server_key(req, req.method)[0] in self._txs

    def terminate(self, tx: str) -> None:
        """Drop transaction ``tx`` now, whatever its state (no event follows). Unknown: no-op."""
        t = self._txs.get(tx)
        if t is None:
            return
        if isinstance(t, ClientInviteTx):
            t.state = ClientInviteState.TERMINATED
        elif isinstance(t, ClientNonInviteTx):
            t.state = ClientNonInviteState.TERMINATED
        elif isinstance(t, ServerInviteTx):
            t.state = ServerInviteState.TERMINATED
        else:
            t.state = ServerNonInviteState.TERMINATED
        self._free(t)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        heap = self._heap
        txs = self._txs
        seq = self._seq
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            tx = txs.get(key)
            if tx is None or tx.wake != deadline:
                continue  # stale
            at, inp = _next_timer(tx)
            if at is None or inp is None:
                tx.wake = None  # every timer it had was cancelled
                continue
            if at > now:  # cancelled or re-armed later since this entry was pushed
                tx.wake = at
                heapq.heappush(heap, (at, next(seq), key))
                continue
            tx.wake = _FIRING
            setattr(tx, _TIMER_FIELD[inp], None)
            if isinstance(tx, ClientInviteTx):
                self._ict(tx, inp, now)
            elif isinstance(tx, ClientNonInviteTx):
                self._nict(tx, inp, now)
            elif isinstance(tx, ServerInviteTx):
                self._ist(tx, inp, now)
            else:
                self._nist(tx, inp, now)
            if txs.get(key) is tx:
                # One push for whatever the machine armed; due ones come round in this loop.
                at = _next_timer(tx)[0]
                tx.wake = at
                if at is not None:
                    heapq.heappush(heap, (at, next(seq), key))

    # --- Matching -------------------------------------------------------------------------

    def _receive_request(self, req: SipRequest, peer: Peer, now: float) -> None:
        method = req.method
        key, rfc2543 = self._server_key(req, method)
        tx = self._txs.get(key)
        if isinstance(tx, ServerInviteTx):
            self._ist(tx, Input.REQUEST, now)
            return
        if isinstance(tx, ServerNonInviteTx):
            self._nist(tx, Input.REQUEST, now)
            return
        # Read now what every answer needs, so a broken To raises before a transaction
        # exists: one made and never answered would have no timer to end it (§17.2.1/2).
        req.to_tag  # noqa: B018
        reliable = peer.reliable
        if method == "INVITE":
            trying = None
            if self._send_trying:
                # Built before the transaction exists: a broken To raises with nothing changed.
                # §8.2.6.1: a 100 copies Timestamp; §17.2.1: and carries no To tag.
                ts = req.headers.get("timestamp")
                trying = make_response(
                    req, 100, "Trying", headers=[("Timestamp", ts)] if ts else ()
                )
            ist = ServerInviteTx(key, peer, reliable, rfc2543)
            self._txs[key] = ist
            self._events.append(RequestReceived(tx=key, request=req, peer=peer, at=now))
            if trying is not None:
                self._ist(ist, Input.SEND_1XX, now, resp=trying)
        else:
            self._txs[key] = ServerNonInviteTx(key, peer, reliable, method)
            self._events.append(RequestReceived(tx=key, request=req, peer=peer, at=now))

    def _receive_ack(self, ack: SipRequest, peer: Peer, now: float) -> None:
        key, rfc2543 = self._server_key(ack, "INVITE")
        tx = self._txs.get(key)
        if tx is None and rfc2543 and ack.to_tag is not None:
            # §17.2.3: an RFC 2543 ACK carries the To tag of our response, the INVITE none.
            cand = self._txs.get(_rfc2543_key(ack, "INVITE", None))
            if isinstance(cand, ServerInviteTx) and cand.to_tag in (None, ack.to_tag):
                tx = cand
        if tx is None:
            # RFC 6026: the ACK for a 2xx has its own branch; find the Accepted INVITE.
            tx = self._accepted.get((ack.call_id, ack.cseq[0], ack.from_tag))
        if isinstance(tx, ServerInviteTx):
            self._ist(tx, Input.ACK, now, ack=ack, peer=peer)
        else:
            self._events.append(RequestReceived(tx=None, request=ack, peer=peer, at=now))

    def _receive_response(self, resp: SipResponse, peer: Peer, now: float) -> None:
        branch = _top_branch(resp)
        method = resp.cseq[1]
        tx = self._txs.get(f"c|{branch}|{method}") if branch else None
        status = resp.status
        inp = _RECV[(status >= 200) + (status >= 300)]
        if isinstance(tx, ClientInviteTx):
            self._ict(tx, inp, now, resp)
        elif isinstance(tx, ClientNonInviteTx):
            self._nict(tx, inp, now, resp)
        else:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "stray response",
                    extra={"branch": branch, "method": method, "status": status, "peer": peer},
                )
            self._events.append(StrayResponse(response=resp, peer=peer, at=now))

    def _server_key(self, req: SipRequest, method: str) -> tuple[str, bool]:
        """(key, is the RFC 2543 key) for ``req`` matched as a ``method`` request (§17.2.3)."""
        via = req.via
        branch = via.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            return f"s|{branch}|{via.host}|{via.port}|{method}", False
        return _rfc2543_key(req, method, req.to_tag), True

    # --- Machines: all transitions ----------------------------------------------------------

    def _ict(
        self, tx: ClientInviteTx, inp: Input, now: float, resp: SipResponse | None = None
    ) -> None:
        """INVITE client transaction: §17.1.1.2 (Figure 5) with RFC 6026 Accepted."""
        S = ClientInviteState
        match tx.state:
            case S.CALLING | S.PROCEEDING:
                if inp is Input.TIMER_A:
                    # §17.1.1.2: Timer A doubles each time, with no cap (Timer B ends it).
                    self._out.append((tx.request_bytes, tx.peer))
                    tx.interval *= 2
                    self._arm(tx, inp, now + tx.interval)
                elif inp is Input.TIMER_B:
                    tx.state = S.TERMINATED
                    self._time_out(tx, "B", now)
                elif resp is None:
                    self._absorb(tx, inp)
                elif inp is Input.RECV_1XX:
                    tx.state = S.PROCEEDING
                    tx.timer_a_at = tx.timer_b_at = None  # Figure 5: neither runs in Proceeding
                    tx.request_bytes = b""  # only Timer A resends it: freed while it rings
                    if _first_provisional(tx, resp):
                        self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                    else:
                        self._absorb(tx, inp)
                elif inp is Input.RECV_2XX:
                    tx.state = S.ACCEPTED
                    tx.timer_a_at = tx.timer_b_at = None
                    tx.request = None
                    tx.request_bytes = b""
                    self._arm(tx, Input.TIMER_M, now + self._timer_m)
                    self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                else:  # 3xx-6xx: §17.1.1.3, the transaction ACKs it itself
                    tx.state = S.COMPLETED
                    tx.timer_a_at = tx.timer_b_at = None
                    tx.request_bytes = b""
                    assert tx.request is not None  # kept until the final response
                    tx.ack_bytes = ack = _build_ack(tx.request, resp)
                    tx.request = None
                    self._out.append((ack, tx.peer))
                    self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                    timer_d = self._timer_d[tx.reliable]
                    if timer_d:
                        self._arm(tx, Input.TIMER_D, now + timer_d)
                    else:
                        tx.state = S.TERMINATED
                        self._end(tx, now)
            case S.ACCEPTED:
                if inp is Input.RECV_2XX and resp is not None:
                    # RFC 6026: every 2xx (retransmission or another fork) goes to the TU.
                    self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                elif inp is Input.TIMER_M:
                    tx.state = S.TERMINATED
                    self._end(tx, now)
                else:
                    self._absorb(tx, inp)
            case S.COMPLETED:
                if inp is Input.RECV_3XX_6XX and tx.ack_bytes is not None:
                    self._out.append((tx.ack_bytes, tx.peer))  # the final was retransmitted
                elif inp is Input.TIMER_D:
                    tx.state = S.TERMINATED
                    self._end(tx, now)
                else:
                    self._absorb(tx, inp)

    def _nict(
        self, tx: ClientNonInviteTx, inp: Input, now: float, resp: SipResponse | None = None
    ) -> None:
        """Non-INVITE client transaction: §17.1.2.2 (Figure 6)."""
        S = ClientNonInviteState
        match tx.state:
            case S.TRYING | S.PROCEEDING:
                if inp is Input.TIMER_E:
                    # §17.1.2.2: E doubles up to T2 while Trying, and is T2 once Proceeding.
                    self._out.append((tx.request_bytes, tx.peer))
                    if tx.state is S.TRYING:
                        tx.interval = min(2 * tx.interval, self._t2)
                    else:
                        tx.interval = self._t2
                    self._arm(tx, inp, now + tx.interval)
                elif inp is Input.TIMER_F:
                    tx.state = S.TERMINATED
                    self._time_out(tx, "F", now)
                elif resp is None:
                    self._absorb(tx, inp)
                elif inp is Input.RECV_1XX:
                    tx.state = S.PROCEEDING
                    if _first_provisional(tx, resp):
                        self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                    else:
                        self._absorb(tx, inp)
                else:  # 200-699
                    tx.state = S.COMPLETED
                    tx.timer_e_at = tx.timer_f_at = None
                    tx.request_bytes = b""  # only Timer E resends it
                    self._events.append(ResponseReceived(tx=tx.key, response=resp, at=now))
                    timer_k = self._timer_k[tx.reliable]
                    if timer_k:
                        self._arm(tx, Input.TIMER_K, now + timer_k)
                    else:
                        tx.state = S.TERMINATED
                        self._end(tx, now)
            case S.COMPLETED:
                if inp is Input.TIMER_K:
                    tx.state = S.TERMINATED
                    self._end(tx, now)
                else:
                    self._absorb(tx, inp)  # retransmitted responses

    def _ist(
        self,
        tx: ServerInviteTx,
        inp: Input,
        now: float,
        *,
        resp: SipResponse | None = None,
        ack: SipRequest | None = None,
        peer: Peer | None = None,
    ) -> None:
        """INVITE server transaction: §17.2.1 (Figure 7) with RFC 6026 Accepted."""
        S = ServerInviteState
        match tx.state:
            case S.PROCEEDING:
                if inp is Input.REQUEST:
                    # §17.2.1: a retransmitted INVITE gets the most recent provisional.
                    if tx.last_response is not None:
                        self._out.append((tx.last_response, tx.peer))
                elif resp is None:
                    self._absorb(tx, inp)  # an ACK before any final
                elif inp is Input.SEND_1XX:
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                elif inp is Input.SEND_2XX:
                    # Headers are read first: a broken response raises before any change.
                    accepted_key = (resp.call_id, resp.cseq[0], resp.from_tag)
                    to_tag = resp.to_tag if tx.rfc2543 else None
                    tx.state = S.ACCEPTED
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                    # §13.3.1.4: resend at T1, 2T1 ... T2 until the ACK, on any transport.
                    tx.interval = self._t1
                    self._arm(tx, Input.TIMER_2XX, now + self._t1)
                    self._arm(tx, Input.TIMER_L, now + self._timer_l)
                    tx.accepted_key = accepted_key
                    self._accepted[accepted_key] = tx
                    tx.to_tag = to_tag
                else:  # 3xx-6xx
                    to_tag = resp.to_tag if tx.rfc2543 else None
                    tx.state = S.COMPLETED
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                    if not tx.reliable:
                        tx.interval = self._t1
                        self._arm(tx, Input.TIMER_G, now + self._t1)
                    self._arm(tx, Input.TIMER_H, now + self._timer_h)
                    tx.to_tag = to_tag
            case S.ACCEPTED:
                if inp is Input.ACK and ack is not None and peer is not None:
                    # RFC 6026: the ACK is the TU's (end to end); it also stops our resending.
                    tx.acked = True
                    tx.timer_2xx_at = None
                    self._events.append(RequestReceived(tx=None, request=ack, peer=peer, at=now))
                elif inp is Input.TIMER_2XX and tx.last_response is not None:
                    self._out.append((tx.last_response, tx.peer))
                    tx.interval = min(2 * tx.interval, self._t2)
                    self._arm(tx, inp, now + tx.interval)
                elif inp is Input.SEND_2XX and resp is not None:
                    # RFC 6026: further 2xx from the TU are sent; retransmit the latest.
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                elif inp is Input.TIMER_L:
                    tx.state = S.TERMINATED
                    if tx.acked:
                        self._end(tx, now)
                    else:
                        self._time_out(tx, "L", now)  # §13.3.1.4: the TU should send BYE
                else:
                    self._absorb(tx, inp)  # RFC 6026: retransmitted INVITEs stop here
            case S.COMPLETED:
                if inp is Input.REQUEST or inp is Input.TIMER_G:
                    if tx.last_response is not None:
                        self._out.append((tx.last_response, tx.peer))
                    if inp is Input.TIMER_G:
                        tx.interval = min(2 * tx.interval, self._t2)
                        self._arm(tx, inp, now + tx.interval)
                elif inp is Input.ACK:
                    tx.state = S.CONFIRMED
                    tx.timer_g_at = tx.timer_h_at = None
                    timer_i = self._timer_i[tx.reliable]
                    if timer_i:
                        self._arm(tx, Input.TIMER_I, now + timer_i)
                    else:
                        tx.state = S.TERMINATED
                        self._end(tx, now)
                elif inp is Input.TIMER_H:
                    tx.state = S.TERMINATED
                    self._time_out(tx, "H", now)
                else:
                    self._absorb(tx, inp)  # a second final from the TU is discarded
            case S.CONFIRMED:
                if inp is Input.TIMER_I:
                    tx.state = S.TERMINATED
                    self._end(tx, now)
                else:
                    self._absorb(tx, inp)

    def _nist(
        self, tx: ServerNonInviteTx, inp: Input, now: float, resp: SipResponse | None = None
    ) -> None:
        """Non-INVITE server transaction: §17.2.2 (Figure 8)."""
        S = ServerNonInviteState
        match tx.state:
            case S.TRYING | S.PROCEEDING:
                if inp is Input.REQUEST:
                    # §17.2.2: absorbed while Trying; the last provisional once Proceeding.
                    if tx.last_response is not None:
                        self._out.append((tx.last_response, tx.peer))
                elif resp is None:
                    self._absorb(tx, inp)
                elif inp is Input.SEND_REFUSED:
                    if resp.status == 408:  # RFC 4320 §4.2: no final at all; Timer F ends it
                        tx.state = S.TERMINATED
                        self._end(tx, now)
                    # else a 101-199 (RFC 4320 §4.1): dropped, still waiting for the final
                elif inp is Input.SEND_1XX:
                    tx.state = S.PROCEEDING
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                else:  # 200-699
                    tx.state = S.COMPLETED
                    tx.last_response = data = resp.to_bytes()
                    self._out.append((data, tx.peer))
                    timer_j = self._timer_j[tx.reliable]
                    if timer_j:
                        self._arm(tx, Input.TIMER_J, now + timer_j)
                    else:
                        tx.state = S.TERMINATED
                        self._end(tx, now)
            case S.COMPLETED:
                if inp is Input.REQUEST and tx.last_response is not None:
                    self._out.append((tx.last_response, tx.peer))
                elif inp is Input.TIMER_J:
                    tx.state = S.TERMINATED
                    self._end(tx, now)
                else:
                    self._absorb(tx, inp)  # §17.2.2: further finals from the TU are discarded

    # --- Helpers --------------------------------------------------------------------------

    def _arm(self, tx: Transaction, inp: Input, deadline: float) -> None:
        """Start (or restart) timer ``inp`` of ``tx``: set its ``timer_<x>_at`` field, and push
        the transaction only if this is now its earliest deadline."""
        setattr(tx, _TIMER_FIELD[inp], deadline)
        wake = tx.wake
        if wake is None or deadline < wake:
            # ``wake`` is set before a compaction can run, or the new entry would look stale.
            tx.wake = deadline
            heap = self._heap
            heapq.heappush(heap, (deadline, next(self._seq), tx.key))
            if len(heap) > self._compact_at:
                self._compact()

    def _compact(self) -> None:
        """Drop stale heap entries (in place: ``handle_timer`` holds a reference)."""
        txs = self._txs
        heap = self._heap
        heap[:] = [
            (at, seq, key) for at, seq, key in heap
            if (tx := txs.get(key)) is not None and tx.wake == at
        ]
        heapq.heapify(heap)
        self._compact_at = max(1024, 2 * len(heap))

    def _time_out(self, tx: Transaction, timer: Literal["B", "F", "H", "L"], now: float) -> None:
        """Tell the TU that ``timer`` ran out, then free the transaction."""
        self._events.append(TransactionTimedOut(tx=tx.key, method=tx.method, timer=timer, at=now))
        self._end(tx, now)

    def _end(self, tx: Transaction, now: float) -> None:
        """Free a transaction that reached Terminated and tell the TU."""
        self._free(tx)
        self._events.append(TransactionTerminated(tx=tx.key, at=now))

    def _free(self, tx: Transaction) -> None:
        del self._txs[tx.key]
        if isinstance(tx, ServerInviteTx) and tx.accepted_key is not None:
            if self._accepted.get(tx.accepted_key) is tx:
                del self._accepted[tx.accepted_key]
            tx.accepted_key = None
        # Pending heap entries are now stale (the key no longer maps to ``tx``).

    def _absorb(self, tx: Transaction, inp: Input) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "absorbed",
                extra={
                    "tx": tx.key,
                    "method": tx.method,
                    "state": tx.state.value,
                    "input": inp.name,
                },
            )


def _next_timer(tx: Transaction) -> tuple[float | None, Input | None]:
    """The earliest running timer of ``tx`` and its deadline; (None, None) when none runs.

    On equal deadlines the first in ``tx.timers`` wins: the one that ends the transaction.
    """
    best: float | None = None
    best_inp: Input | None = None
    for name, inp in tx.timers:
        at = getattr(tx, name)
        if at is not None and (best is None or at < best):
            best = at
            best_inp = inp
    return best, best_inp


def _first_provisional(tx: ClientInviteTx | ClientNonInviteTx, resp: SipResponse) -> bool:
    """True the first time this provisional (status, To, RSeq) is seen in ``tx``."""
    mark = (resp.status, resp.headers.get("to"), resp.headers.get("rseq"))
    if mark in tx.seen_1xx:
        return False
    # A tuple, not a set: a handful of marks, and the collector untracks tuples of strings.
    tx.seen_1xx += (mark,)
    return True


def _top_branch(resp: SipResponse) -> str | None:
    """The top Via branch of a response (§17.1.3).

    A response echoes our own Via, so a regex finds the branch in the usual form; anything
    else (no match, or a comma before it, i.e. not the top value) takes the full Via parse.
    """
    line = resp.headers.get("via")
    if line is not None:
        m = _BRANCH_RE.search(line)
        if m is not None and "," not in line[: m.start()]:
            return m.group(1)
    return resp.via.branch


def _rfc2543_key(req: SipRequest, method: str, to_tag: str | None) -> str:
    """§17.2.3 for branches without the magic cookie: Request-URI, tags, Call-ID, CSeq, top Via."""
    top_via = split_unquoted(req.headers.get("via") or "", ",")[0].strip()
    tags = f"{to_tag or ''}|{req.from_tag or ''}"
    return f"s2543|{req.uri}|{tags}|{req.call_id}|{req.cseq[0]}|{method}|{top_via}"


def _build_ack(invite: SipRequest, resp: SipResponse) -> bytes:
    """§17.1.1.3: the ACK for a 3xx-6xx, sent by the INVITE client transaction itself.

    Request-URI, top Via (so the branch), From, Call-ID and CSeq number come from the INVITE,
    To (with the peer's tag) from the response, Route from the INVITE; no body.
    """
    h = invite.headers
    items = [("via", split_unquoted(h.get("via") or "", ",")[0].strip()), ("max-forwards", "70")]
    items.extend(("route", route) for route in h.get_all("route"))
    items.append(("from", h.get("from") or ""))
    items.append(("to", resp.headers.get("to") or ""))
    items.append(("call-id", invite.call_id))
    items.append(("cseq", f"{invite.cseq[0]} ACK"))
    return SipRequest("ACK", invite.uri, Headers(items)).to_bytes()
