"""Request and response bodies of the admin API that are not exchange models themselves.

Trunks, campaigns, endpoints and bid profiles go over the wire as ``exchange.models`` types; a
buyer is split in three (``Buyer`` to create one with its endpoints and profiles,
``BuyerUpdate`` to change its own fields, ``BuyerView`` to show it, never with its API key,
``BuyerCreated`` once with the key). Bodies the API reads forbid unknown fields (the models'
``Model`` base); bodies it writes are documented here so that ``/openapi.json`` describes them.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from compliance.consent import ConsentRecord
from exchange.models import BidProfile, Campaign, Endpoint, Id, Model, Name, Trunk

__all__ = [
    "ApiKey",
    "BuyerCreated",
    "BuyerList",
    "BuyerUpdate",
    "BuyerView",
    "CallDetail",
    "CallPage",
    "CallSummary",
    "CampaignList",
    "ConsentIn",
    "ConsentList",
    "ConsentRevoked",
    "DncImported",
    "DncListInfo",
    "DncLists",
    "DncLookup",
    "EndpointHealth",
    "EndpointList",
    "EndpointView",
    "ErasureResult",
    "ErrorBody",
    "LiveCall",
    "LiveCallList",
    "ProfileList",
    "Report",
    "ReportRow",
    "ReportTotals",
    "TrunkList",
]

# Keys are random; 16 characters is the floor for one a user chooses.
ApiKey = Annotated[str, msgspec.Meta(min_length=16, max_length=200)]
_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class View(msgspec.Struct, kw_only=True):
    """Base of response bodies: every field is written, defaults included."""


class ErrorBody(View):
    """Every error: ``error`` says what went wrong in a few words, ``detail`` the specifics.

    Validation errors (422) carry ``{"field": "caps.daily", "message": "..."}`` in ``detail``.
    """

    error: str
    detail: Any = None


# -- buyers --------------------------------------------------------------------------------


class BuyerUpdate(Model, kw_only=True):
    """PUT /buyers/{id}: a buyer's own fields. Endpoints and profiles have their own routes.

    ``api_key`` replaces the key (the old one stops working at once); it is never shown.
    """

    id: Id
    name: Name
    active: bool = True
    api_key: ApiKey | None = None


class BuyerView(View):
    id: str
    name: str
    active: bool
    endpoints: list[Endpoint]
    profiles: list[BidProfile]


class BuyerCreated(BuyerView):
    """The answer to POST /buyers: the only time the API key is shown."""

    api_key: str


class TrunkList(View):
    items: list[Trunk]


class CampaignList(View):
    items: list[Campaign]


class BuyerList(View):
    items: list[BuyerView]


class EndpointHealth(View):
    """What the switch's OPTIONS probes say of an endpoint's URI (docs/sip.md, "Buyer
    endpoint health"). ``probing`` is false when the URI is not probed (probing off, or the
    endpoint or its buyer inactive): then ``state`` is ``unknown`` and the rest is null.
    ``last_status`` is null after a probe that got no answer in time."""

    state: Literal["up", "down", "unknown"]
    probing: bool
    since: datetime | None = None  # when it entered ``state`` (or probing started)
    last_status: int | None = None
    last_probe_at: datetime | None = None  # when the last probe was answered or given up
    failures: int = 0  # consecutive failed probes
    successes: int = 0  # consecutive answered probes


class EndpointView(View):
    """An endpoint as read back: its stored fields and its health."""

    id: str
    uri: str
    max_concurrent: int
    active: bool
    health: EndpointHealth


class EndpointList(View):
    items: list[EndpointView]


class ProfileList(View):
    items: list[BidProfile]


# -- calls (CDRs) --------------------------------------------------------------------------


class CallSummary(View):
    """One CDR (docs/cdr.md). Money is USD as decimal strings; times are RFC 3339 UTC.

    A buyer's key sees ``payout`` (the seller's share) as null.
    """

    call_id: str
    a_call_id: str
    b_call_id: str | None
    trunk_id: str | None
    source: str
    caller: str | None
    called: str | None
    caller_state: str | None
    received_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration_ms: int
    disposition: str
    sip_status: int
    hangup_side: str | None
    campaign_id: str | None
    buyer_id: str | None
    endpoint: str | None
    bid: Decimal | None
    price: Decimal | None
    payout: Decimal | None
    billable: bool
    attempts: int
    compliance: list[str]
    fraud_score: int | None
    attestation: str | None
    decision_us: int | None
    packets_a_to_b: int | None
    packets_b_to_a: int | None
    bytes_a_to_b: int | None
    bytes_b_to_a: int | None
    packets_dropped: int | None
    rule: str | None  # the rule that decided a call that did not connect


class CallDetail(CallSummary):
    """One CDR with its auction record (exchange/auction.py ``AuctionResult.record``).

    A buyer's key sees only its own entries of the record: not the other bidders' bids.
    """

    auction: dict[str, Any] | None


class CallPage(View):
    """A page of CDRs, newest first. Pass ``next_cursor`` as ``cursor`` for the next page
    (with the same filters); it is null on the last page."""

    items: list[CallSummary]
    next_cursor: str | None


# -- reports -------------------------------------------------------------------------------


class ReportTotals(View):
    """Calls received in the report's range (all its rows together).

    ``answered``: calls the caller was connected on (``answered_at`` set); ``billable``: calls
    the buyer pays for. ``revenue`` is what buyers pay (the sum of ``price``), ``payout`` what
    sellers get, ``margin`` the difference: the exchange's share. A buyer's key sees its own
    spend as ``revenue`` and ``payout`` and ``margin`` as null. ``answer_rate`` is answered /
    calls (0 to 1, four decimals; null without calls); ``avg_duration_s`` the mean connected
    time of answered calls in seconds (null without one).
    """

    calls: int
    answered: int
    billable: int
    revenue: Decimal
    payout: Decimal | None
    margin: Decimal | None
    answer_rate: float | None
    avg_duration_s: float | None


class ReportRow(View):
    """One period of one campaign, buyer or trunk (``key``; null for calls without one, such
    as calls refused before any buyer was tried in a report by buyer). ``start`` is the
    period's first instant, with the offset the report's time zone had then. The fields
    after ``key`` are those of ``ReportTotals``."""

    start: datetime
    key: str | None
    calls: int
    answered: int
    billable: int
    revenue: Decimal
    payout: Decimal | None
    margin: Decimal | None
    answer_rate: float | None
    avg_duration_s: float | None


class Report(View):
    """Calls received in ``[from, to)`` by ``period`` (in time zone ``tz``) and by ``by``.

    A period cut by ``from`` or ``to`` holds only the calls inside the range. Rows are in
    period order, then key order (null last); periods and keys without calls have no row.
    ``from``, ``to`` and each row's ``start`` carry the offset of ``tz`` (not UTC). With
    ``format=csv`` the answer is the rows as ``text/csv`` instead (docs/dashboard.md).
    """

    period: Literal["hour", "day"]
    by: Literal["campaign", "buyer", "trunk"]
    tz: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    rows: list[ReportRow]
    totals: ReportTotals


# -- live calls ----------------------------------------------------------------------------


class LiveCall(View):
    """A call in progress, as the running switch sees it.

    ``state``: ``routing`` (the gate and the auction decide), ``media`` (its media opens),
    ``calling`` (an INVITE is out to ``endpoint``), ``ringing`` (the buyer sent a
    provisional), ``answered``. ``campaign_id`` and ``buyer_id`` are null until routing has
    decided them; ``caller`` and ``called`` are E.164 when they parse, as the CDR will hold
    them; ``duration_ms`` counts from the answer. The media counters are the relay's (or the
    WebRTC bridge's) so far, null when the switch does not carry the media (bypass).
    ``DELETE /calls/live/{call_id}`` answers the call as it was just before it was hung up.
    """

    call_id: str
    a_call_id: str
    trunk_id: str | None
    source: str
    caller: str
    called: str
    campaign_id: str | None
    buyer_id: str | None
    endpoint: str | None
    state: Literal["routing", "media", "calling", "ringing", "answered"]
    received_at: datetime
    answered_at: datetime | None
    duration_ms: int
    attempts: int
    packets_a_to_b: int | None
    packets_b_to_a: int | None
    bytes_a_to_b: int | None
    bytes_b_to_a: int | None
    packets_dropped: int | None


class LiveCallList(View):
    """The live calls, oldest first (a buyer key sees only the calls it took)."""

    items: list[LiveCall]


# -- compliance ----------------------------------------------------------------------------


class DncImported(View):
    """What POST /dnc did: lines read (non-blank), numbers imported, lines rejected, imported
    numbers already present, and the list's size afterwards. ``campaigns`` names the
    campaigns whose ``compliance.dnc_lists`` hold the list; with none, ``warning`` says that
    the list blocks no call (a misspelt name, or a campaign still to be pointed at it)."""

    list: str
    read: int
    imported: int
    rejected: int
    duplicates: int
    total: int
    campaigns: builtins.list[str]  # ``list`` is the field above
    warning: str | None


class DncListInfo(View):
    name: str
    source: str
    loaded_at: datetime
    numbers: int
    max_age_days: int | None
    stale: bool


class DncLists(View):
    items: list[DncListInfo]


class DncLookup(View):
    """Which lists hold a number. ``suppressed`` is true for an erased number; its former
    lists stay in ``lists`` because it stays blocked on them."""

    number: str
    lists: list[str]
    suppressed: bool


class ConsentIn(Model, kw_only=True):
    """POST /consent: ``id`` is generated when absent, ``granted_at`` defaults to now; the
    caller is normalised to E.164; times need a time zone."""

    id: Id | None = None
    caller: _Short
    campaign_id: Id
    trunk_id: Id | None = None
    disclosure: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    source_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    certificate_id: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    granted_at: datetime | None = None
    revoked_at: datetime | None = None


class ConsentList(View):
    """A page of consent records in id order; ``next_cursor`` as in ``CallPage``."""

    items: list[ConsentRecord]
    next_cursor: str | None


class ConsentRevoked(View):
    revoked: int


class ErasureResult(View):
    """What DELETE /callers/{e164} erased: the keyed hash that now stands for the number,
    CDRs and consent records rewritten, DNC lists it was removed from, and where it stays
    blocked (``suppressed``: those lists, plus ``"*"`` for every call with ``block_all``)."""

    hash: str
    cdrs: int
    consent_records: int
    dnc_lists: list[str]
    suppressed: list[str]
