"""Events the SIP layers hand up to the layer above, pulled with ``next_event()``.

Events are frozen msgspec Structs named in the past tense; each carries ``at``, the monotonic
time (seconds) of the input that produced it. They are never encoded, so fields may hold
:class:`SipRequest`/:class:`SipResponse` objects. Callers dispatch with ``match`` on the union
aliases below.

Transaction events (``switch/transaction.py``, RFC 3261 §17 and RFC 6026):

- :class:`RequestReceived`: a new request, or an ACK the transaction layer does not own.
- :class:`ResponseReceived`: a response that moved a client transaction, or a 2xx to INVITE.
- :class:`StrayResponse`: a response that matched no client transaction.
- :class:`TransactionTimedOut`: Timer B, F, H or L ran out.
- :class:`TransactionTerminated`: a transaction ended and was freed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from switch.message import SipRequest, SipResponse
from switch.peer import Peer

# --- Transaction events ---------------------------------------------------------------------


class RequestReceived(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request that starts a server transaction, for the TU to answer with ``send_response``.

    ``tx`` is None for an ACK that belongs to no server transaction: the ACK for a 2xx, which
    is end to end and goes to the dialog (RFC 3261 §17.2.3, §13.3.1.4; RFC 6026).
    """

    tx: str | None
    request: SipRequest
    peer: Peer
    at: float


class ResponseReceived(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A response for client transaction ``tx``: each new provisional, the final, and every 2xx
    to an INVITE (retransmissions and forks included, so the TU can ACK each one)."""

    tx: str
    response: SipResponse
    at: float


class StrayResponse(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A response that matched no client transaction (RFC 3261 §18.1.2).

    RFC 6026 amends §18.1.2 so that a UA silently discards these: the TU should count and
    drop them.
    """

    response: SipResponse
    peer: Peer
    at: float


class TransactionTimedOut(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Transaction ``tx`` gave up; a :class:`TransactionTerminated` follows.

    ``timer`` says which: ``B``/``F`` (no final response: the TU acts as on a 408),
    ``H`` (no ACK for our non-2xx final), ``L`` (no ACK for our 2xx within 64*T1: the TU
    should send BYE, RFC 3261 §13.3.1.4).
    """

    tx: str
    method: str
    timer: Literal["B", "F", "H", "L"]
    at: float


class TransactionTerminated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Transaction ``tx`` reached Terminated and was freed (not sent for ``terminate()``)."""

    tx: str
    at: float


TransactionEvent = (
    RequestReceived | ResponseReceived | StrayResponse | TransactionTimedOut | TransactionTerminated
)
