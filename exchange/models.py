"""The exchange's domain objects as the config file, the admin API and the store see them.

These are wire models: money is ``Decimal`` (USD, encoded as a decimal string), validated by
msgspec with limits in the type. Hot paths (the auction, caps) compile them into their own
integer micro-dollar form (``exchange.money``). SPEC.md "Exchange" is the contract.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from compliance.policy import CompliancePolicy, TimeRange

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# msgspec cannot put limits on Decimal, so money fields are checked in __post_init__ below
# (a ValueError there becomes a msgspec.ValidationError naming the field).
Usd = Decimal
Percent = Decimal
Count = Annotated[int, msgspec.Meta(ge=0)]
# E.164 with the plus, e.g. "+18005550100"; config and API inputs are normalised before storing.
E164 = Annotated[str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{6,14}$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Model(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Base of every config/API model: unknown fields are errors that name the field."""


def check_usd(value: Decimal | None, field: str) -> None:
    """Money must be a finite, non-negative amount with at most six decimal places."""
    if value is None:
        return
    if not value.is_finite() or value < 0:
        raise ValueError(f"`{field}` must be a non-negative amount, got {value}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise ValueError(f"`{field}` has more than 6 decimal places: {value}")


def check_percent(value: Decimal, field: str) -> None:
    if not value.is_finite() or not 0 <= value <= 100:
        raise ValueError(f"`{field}` must be between 0 and 100, got {value}")


class Trunk(Model, kw_only=True):
    """A seller: where its calls come from and what share of the price it earns."""

    id: Id
    name: Name
    source_ips: list[str] = []  # IPs or CIDRs; checked when loaded
    username: str | None = None  # digest credentials (RFC 8760)
    password: str | None = None
    # Browsers (WebRTC over ws://.../sip?token=...) are admitted by this token, never by IP.
    ws_token: Annotated[str, msgspec.Meta(min_length=16, max_length=200)] | None = None
    payout_share: Percent = Decimal(70)
    active: bool = True

    def __post_init__(self) -> None:
        check_percent(self.payout_share, "payout_share")
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and `password` must be given together")


class Campaign(Model, kw_only=True):
    """Called numbers (DIDs) that select the campaign, its reserve and auction rule."""

    id: Id
    name: Name
    numbers: list[E164] = []
    reserve: Usd = Decimal(0)
    auction: Literal["second_price", "first_price"] = "second_price"
    compliance: CompliancePolicy = msgspec.field(default_factory=CompliancePolicy)
    expose_caller: bool = False  # send the caller number in RTB bid requests
    active: bool = True

    def __post_init__(self) -> None:
        check_usd(self.reserve, "reserve")


class Endpoint(Model, kw_only=True):
    """A buyer's SIP destination."""

    id: Id
    uri: Annotated[str, msgspec.Meta(min_length=5, max_length=512)]
    max_concurrent: Count = 0  # 0 = no limit
    active: bool = True


class Caps(Model, kw_only=True):
    """Per-profile limits; ``None`` is no limit. Budgets are USD spent at the settled price."""

    concurrent: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    monthly: Count | None = None
    budget_daily: Usd | None = None
    budget_monthly: Usd | None = None

    def __post_init__(self) -> None:
        check_usd(self.budget_daily, "budget_daily")
        check_usd(self.budget_monthly, "budget_monthly")


class DuplicateRule(Model, kw_only=True):
    """The same caller is not sold twice to this buyer within ``window_days``."""

    window_days: Annotated[int, msgspec.Meta(ge=1, le=365)]
    count_on: Literal["connect", "billable"] = "connect"


class BidProfile(Model, kw_only=True):
    """What a buyer buys and at what price."""

    id: Id
    campaign_id: Id | None = None
    numbers: list[E164] = []  # called numbers, when not by campaign
    states: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]] = []
    area_codes: list[Annotated[str, msgspec.Meta(pattern=r"^[2-9][0-9]{2}$")]] = []
    # Hours of operation per weekday in ``timezone``; a day that is absent is closed. No
    # ``hours`` at all means open around the clock.
    hours: dict[Weekday, list[TimeRange]] | None = None
    timezone: str = "America/New_York"
    bid: Usd
    min_duration: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 0
    caps: Caps = msgspec.field(default_factory=Caps)
    rtb_url: str | None = None
    duplicate: DuplicateRule | None = None
    active: bool = True

    def __post_init__(self) -> None:
        check_usd(self.bid, "bid")


class Buyer(Model, kw_only=True):
    """A buyer with its endpoints (tried in order) and bid profiles."""

    id: Id
    name: Name
    active: bool = True
    api_key: str | None = None  # plaintext only on input; stored hashed
    endpoints: list[Endpoint] = []
    profiles: list[BidProfile] = []


class ExchangeConfig(Model, kw_only=True):
    """The declarative part of a config file: ``[[trunks]]``, ``[[campaigns]]``, ``[[buyers]]``."""

    trunks: list[Trunk] = []
    campaigns: list[Campaign] = []
    buyers: list[Buyer] = []
