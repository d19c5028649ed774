"""What the B2BUA knows of a finished call: a typed record, handed over in ``CallEnded``.

The core records SIP facts only: ids, monotonic instants, how the call ended and who ended it,
which target was tried last. The application joins it with what routing decided (campaign,
compliance, auction, money) and the media counters to make the CDR (store/cdr.py).
"""

from __future__ import annotations

import enum

import msgspec


class Outcome(enum.StrEnum):
    """How a call ended, as SIP saw it. Values match the CDR dispositions they become;
    ``REJECTED`` becomes the disposition routing gave (compliance, fraud, no buyer ...)."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REJECTED = "rejected"
    OVERLOAD = "overload"
    MEDIA_TIMEOUT = "media_timeout"


class HangupSide(enum.StrEnum):
    CALLER = "caller"
    BUYER = "buyer"
    SYSTEM = "system"
    OPERATOR = "operator"  # through the admin API or ``dce hangup`` (SwitchCore.hang_up)


# The rule a caller is told (Reason) when the operator ends its call before the answer.
OPERATOR_HANGUP = "operator_hangup"


class CallRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One call as the switch core saw it; times are the core's monotonic seconds."""

    call_id: str  # the switch's own id (the CDR key)
    a_call_id: str
    b_call_id: str | None  # the last attempt's Call-ID
    trunk_id: str
    source: str  # sip | webrtc
    caller: str  # as received: P-Asserted-Identity user, else From user
    called: str  # Request-URI user
    received: float
    answered: float | None  # the buyer's 2xx, relayed to the caller
    confirmed: bool  # the caller confirmed it (ACK, or a request in the dialog)
    ended: float
    duration_ms: int  # from the 2xx to the end, for confirmed calls only; else 0
    outcome: Outcome
    sip_status: int  # the final status the caller got (200 for answered calls)
    hangup_side: HangupSide | None
    target_index: int | None  # index in the routed targets of the last attempt
    endpoint: str | None  # that attempt's URI
    attempts: int
    rule: str | None = None  # the Reason rule the caller got, if any
    # For /metrics (post-dial delay): the first buyer response past 100 Trying relayed to the
    # caller (18x, 2xx or the final failure), and the first 18x relayed.
    first_response: float | None = None
    ringing: float | None = None


def outcome_for_failure(status: int, ring_timeout: bool) -> Outcome:
    """How a call whose last attempt failed with ``status`` ended."""
    if ring_timeout or status in (408, 480):
        return Outcome.NO_ANSWER
    if status in (486, 600):
        return Outcome.BUSY
    return Outcome.FAILED
