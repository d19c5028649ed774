"""Campaigns: what is sold, selected by the called number, ``/campaigns`` (admin only).

A called number selects one campaign: writing a campaign with a number another campaign
already has is 409, before the candidate config is compiled.
"""

from __future__ import annotations

from typing import Final

import msgspec

from api.auth import Access
from api.documents import Kind, crud_routes
from api.errors import Conflict
from api.models import CampaignList
from api.routes import Route
from api.validation import check_campaign, join
from exchange.models import Campaign, ExchangeConfig

__all__ = ["CAMPAIGNS", "ROUTES", "check_numbers_free"]


def check_numbers_free(cfg: ExchangeConfig, c: Campaign, at: str = "") -> None:
    """409 when a called number of ``c`` already selects another campaign."""
    owners = {n: o.id for o in cfg.campaigns if o.id != c.id for n in o.numbers}
    for i, n in enumerate(c.numbers):
        if n in owners:
            raise Conflict(
                {
                    "field": join(at, f"numbers[{i}]"),
                    "message": f"{n} already selects campaign {owners[n]!r}",
                },
                error="called number in use",
            )


CAMPAIGNS: Final = Kind(
    "campaign",
    "campaigns",
    Campaign,
    msgspec.json.Decoder(Campaign),
    check_campaign,
    child=False,
    check_stored=check_numbers_free,
)
ROUTES: Final[tuple[Route, ...]] = tuple(
    crud_routes("/campaigns", CAMPAIGNS, Access.ADMIN, CampaignList)
)
