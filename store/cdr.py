"""The call detail record: one per inbound call, also for rejected calls (SPEC.md "CDR").

Built by the switch when a call ends and written by the CDR writer (store/writer.py) off the
call path. Money is integer micro-dollars here; the database stores NUMERIC(12,6) USD.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

from switch.record import HangupSide


class Disposition(enum.StrEnum):
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REJECTED_COMPLIANCE = "rejected_compliance"
    REJECTED_FRAUD = "rejected_fraud"
    NO_BUYER = "no_buyer"
    # No campaign owns the called number: 404 before the gate and the auction (docs/cdr.md).
    NO_CAMPAIGN = "no_campaign"
    OVERLOAD = "overload"
    MEDIA_TIMEOUT = "media_timeout"
    # The switch died with the call in progress; the next start ended it (docs/cdr.md).
    INTERRUPTED = "interrupted"


class Cdr(msgspec.Struct, kw_only=True, gc=False):
    """One row of table ``cdrs``. ``call_id`` is the switch's id and is unique."""

    call_id: str
    a_call_id: str
    b_call_id: str | None = None
    trunk_id: str | None = None
    source: str = "sip"  # sip | webrtc
    caller: str | None = None  # E.164 when it parsed, else as received
    called: str | None = None
    caller_state: str | None = None
    received_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime
    duration_ms: int = 0
    disposition: Disposition
    sip_status: int
    hangup_side: HangupSide | None = None
    campaign_id: str | None = None
    buyer_id: str | None = None
    endpoint: str | None = None
    bid: int | None = None  # micro-dollars
    price: int | None = None
    payout: int | None = None
    billable: bool = False
    attempts: int = 0
    compliance: list[str] = []
    fraud_score: int | None = None
    attestation: str | None = None
    decision_us: int | None = None
    auction: dict[str, Any] | None = None  # the auction record (exchange/auction.py)
    # Anchored media counters (issue 6); None in bypass mode.
    packets_a_to_b: int | None = None
    packets_b_to_a: int | None = None
    bytes_a_to_b: int | None = None
    bytes_b_to_a: int | None = None
    packets_dropped: int | None = None
    rule: str | None = None  # the Reason rule of a call that did not connect
