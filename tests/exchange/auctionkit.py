"""Shared by the auction tests: a one-campaign config built from buyers and bid profiles."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk

DID = "+18005550100"


def prof(pid: str, bid: str, campaign: str | None = "c1", **kw: Any) -> BidProfile:
    return BidProfile(id=pid, campaign_id=campaign, bid=Decimal(bid), **kw)


def buyer(bid_: str, *profiles: BidProfile, endpoints: int = 1, **kw: Any) -> Buyer:
    eps = [Endpoint(id=f"e{i}", uri=f"sip:{bid_}-{i}@127.0.0.1") for i in range(endpoints)]
    return Buyer(id=bid_, name=bid_, endpoints=eps, profiles=list(profiles), **kw)


def config(
    *buyers: Buyer,
    reserve: str = "0",
    auction: Literal["second_price", "first_price"] = "second_price",
    **kw: Any,
) -> ExchangeConfig:
    camp = Campaign(
        id="c1", name="c1", numbers=[DID], reserve=Decimal(reserve), auction=auction, **kw
    )
    return ExchangeConfig(trunks=[Trunk(id="t1", name="t1")], campaigns=[camp], buyers=list(buyers))
