"""The auction's index: routes by called number, compiled profiles, config errors, local time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exchange.auction_index import compile_index
from exchange.caps import Buckets
from exchange.errors import ConfigInvalid
from exchange.models import Campaign, ExchangeConfig
from tests.exchange.auctionkit import DID, buyer, config, prof


def test_called_number_selects_campaign_and_profiles() -> None:
    other = Campaign(id="c2", name="c2", numbers=["+18005550199"])
    cfg = ExchangeConfig(
        campaigns=[Campaign(id="c1", name="c1", numbers=[DID]), other],
        buyers=[
            buyer("a", prof("p1", "5"), prof("p2", "6", campaign="c2")),
            buyer("b", prof("p1", "4", campaign=None, numbers=[DID])),  # by number
            buyer("c", prof("p1", "3", campaign=None)),  # every call
        ],
    )
    index = compile_index(cfg)
    route = index.route_for(DID)
    assert route.campaign is not None and route.campaign.id == "c1"
    assert [p.key for p in route.profiles] == ["a/p1", "b/p1", "c/p1"]
    assert [p.key for p in index.route_for("+18005550199").profiles] == ["a/p2", "c/p1"]
    unknown = index.route_for("+19995550000")
    assert unknown.campaign is None
    assert [p.key for p in unknown.profiles] == ["c/p1"]


def test_profiles_are_precompiled_to_micros_bitmasks_and_sets() -> None:
    p = prof(
        "p1",
        "12.345678",
        states=["NY", "NJ"],
        area_codes=["212"],
        hours={"mon": ["09:00-17:00"]},
        timezone="America/Chicago",
    )
    cp = compile_index(config(buyer("a", p))).profiles["a/p1"]
    assert cp.bid == 12_345_678
    assert cp.bid_text == "12.345678"
    assert cp.states == frozenset({"NY", "NJ"})
    assert cp.area_codes == frozenset({"212"})
    assert cp.hours is not None
    assert (cp.hours[0] >> (9 * 60)) & 1 and not (cp.hours[0] >> (17 * 60)) & 1
    assert cp.hours[1] == 0  # Tuesday absent: closed
    assert cp.tz.key == "America/Chicago"


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (
            ExchangeConfig(buyers=[buyer("a"), buyer("a")]),
            "buyers[1].id",
        ),
        (
            config(buyer("a", prof("p1", "1"), prof("p1", "2"))),
            "buyers[0].profiles[1].id",
        ),
        (
            config(buyer("a", prof("p1", "1", timezone="Mars/Olympus"))),
            "buyers[0].profiles[0].timezone",
        ),
        (
            config(buyer("a", prof("p1", "1", campaign="nope"))),
            "buyers[0].profiles[0].campaign_id",
        ),
        (
            config(buyer("a", prof("p1", "1", hours={"mon": ["09:00-09:00"]}))),
            "buyers[0].profiles[0].hours.mon[0]",
        ),
        (
            config(buyer("a", prof("p1", "1", rtb_url="ftp://x"))),
            "buyers[0].profiles[0].rtb_url",
        ),
        (
            ExchangeConfig(
                campaigns=[
                    Campaign(id="c1", name="c1", numbers=[DID]),
                    Campaign(id="c2", name="c2", numbers=[DID]),
                ]
            ),
            "campaigns[1].numbers[0]",
        ),
    ],
    ids=[
        "dup-buyer",
        "dup-profile",
        "bad-tz",
        "unknown-campaign",
        "empty-hours",
        "rtb-scheme",
        "number-twice",
    ],
)
def test_bad_config_names_the_field(cfg: ExchangeConfig, field: str) -> None:
    with pytest.raises(ConfigInvalid) as exc:
        compile_index(cfg)
    assert exc.value.field == field


def test_local_time_buckets_are_in_the_profile_zone() -> None:
    index = compile_index(config(buyer("a", prof("p1", "1", timezone="America/Los_Angeles"))))
    p = index.profiles["a/p1"]
    late = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)  # still Nov 30 in Los Angeles
    lt = index.local_time(p.tz, late)
    assert lt.buckets == Buckets(hour=2026113019, day=20261130, month=202611)
    assert lt.weekday == 0 and lt.minute == 19 * 60 + 30
