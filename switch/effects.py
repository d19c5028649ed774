"""What the sans-IO switch core asks its glue to do, and the results the glue feeds back.

Effects are imperative (``RouteCall``, ``WriteCdr``); results come back through
``SwitchCore.route_done``. None of these touch a socket: the glue in ``server.py`` does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from exchange.routing import CallFacts, Target
from store.cdr import Cdr


class RouteCall(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Run the compliance gate and the auction for a new call."""

    call_id: str
    facts: CallFacts
    identity: str | None = None  # RFC 8224 Identity header
    pai: str | None = None  # P-Asserted-Identity (verstat)
    offer: bytes = b""  # the caller's SDP offer, for the media session
    source_ip: str = ""  # where the INVITE came from (media latching behind NAT)


class WriteCdr(msgspec.Struct, kw_only=True, gc=False):
    """Settle the call's money with the exchange and hand the CDR to the writer."""

    cdr: Cdr
    facts: CallFacts
    target: Target | None
    answered: bool


class RouteOutcome(msgspec.Struct, kw_only=True, gc=False):
    """The glue's answer to RouteCall: targets to try, or a rejection."""

    targets: list[Target] = []
    reject_status: int | None = None  # 403, 480 ...
    reject_reason: str | None = None  # reason phrase
    rule: str | None = None  # Reason header text / first failed rule
    disposition: str | None = None  # CDR disposition for a rejection
    cdr: dict[str, Any] = {}  # extra CDR fields (campaign_id, compliance, fraud_score ...)


class CallAnswered(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A buyer answered: the exchange frees the slots it held for the other bidders."""

    facts: CallFacts
    target: Target


Effect = RouteCall | WriteCdr | CallAnswered
