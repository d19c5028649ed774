"""What the switch asks the exchange: the ordered list of targets for one admitted call.

``exchange`` decides, ``switch`` carries out. The switch calls :meth:`Router.route` once per
call after the compliance gate, tries ``targets`` in order (failover), and reports the outcome
with :meth:`Router.settle`, which returns the money fields for the CDR.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import msgspec


class CallFacts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What is known about an inbound call when it is routed."""

    call_id: str
    trunk_id: str
    source: str  # sip | webrtc
    caller: str  # E.164, or the raw user part when it did not parse
    called: str
    received_at: datetime  # wall clock, UTC


class Target(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One buyer endpoint to try, with the money terms if it answers."""

    buyer_id: str
    endpoint_id: str
    uri: str  # SIP URI of the buyer endpoint
    profile_id: str | None = None
    bid: int = 0  # micro-dollars
    price: int = 0  # what the buyer pays if the call is billable
    min_duration_s: int = 0


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The exchange's answer: targets in order (winner first), or none with a reason."""

    targets: list[Target]
    campaign_id: str | None = None
    reason: str | None = None  # why there is no target (CDR no_buyer, SIP Reason)
    record: dict[str, Any] | None = None  # the auction record stored with the CDR
    decision_us: int = 0


class Settlement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Money fields of a finished call."""

    bid: int | None = None
    price: int | None = None
    payout: int | None = None
    billable: bool = False


class Router(Protocol):
    async def route(self, facts: CallFacts) -> Decision: ...

    def answered(self, facts: CallFacts, target: Target) -> None: ...

    def settle(
        self, facts: CallFacts, target: Target | None, answered: bool, duration_ms: int
    ) -> Settlement: ...
