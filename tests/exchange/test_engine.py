"""The Exchange as the switch's Router: route, settle, update; with RTB and both cap backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from config.settings import load_settings
from exchange.caps import InProcessCaps
from exchange.caps_redis import RedisCaps
from exchange.engine import Exchange
from exchange.errors import ConfigInvalid
from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Caps,
    DuplicateRule,
    Endpoint,
    ExchangeConfig,
    Trunk,
)
from exchange.money import to_micros
from exchange.routing import CallFacts, Decision, Router, Target
from exchange.rtb import RtbClient
from tests.exchange.test_caps import RedisFactory

DID = "+18005550100"
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # Monday 10:00 New York


def facts(call_id: str = "call-1", caller: str = "+12125550100", called: str = DID) -> CallFacts:
    return CallFacts(
        call_id=call_id, trunk_id="t1", source="sip", caller=caller, called=called, received_at=NOW
    )


def prof(pid: str, bid: str, **kw: Any) -> BidProfile:
    kw.setdefault("campaign_id", "c1")
    return BidProfile(id=pid, bid=Decimal(bid), **kw)


def buyer(bid_: str, *profiles: BidProfile, endpoints: int = 1, **kw: Any) -> Buyer:
    eps = [Endpoint(id=f"e{i}", uri=f"sip:{bid_}-{i}@127.0.0.1") for i in range(endpoints)]
    return Buyer(id=bid_, name=bid_, endpoints=eps, profiles=list(profiles), **kw)


def config(*buyers: Buyer, reserve: str = "0", **kw: Any) -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[Trunk(id="t1", name="t1", payout_share=Decimal("70"))],
        campaigns=[Campaign(id="c1", name="c1", numbers=[DID], reserve=Decimal(reserve), **kw)],
        buyers=list(buyers),
    )


def targets(d: Decision) -> list[tuple[str, str, int]]:
    return [(t.buyer_id, t.endpoint_id, t.price) for t in d.targets]


@pytest.fixture
async def ex() -> AsyncIterator[Exchange]:
    e = Exchange(config())
    yield e
    await e.aclose()


def test_exchange_is_a_router() -> None:
    router: Router = Exchange(config())
    assert router is not None


async def test_route_orders_winner_then_failover_with_endpoints_in_order() -> None:
    cfg = config(
        buyer("a", prof("p1", "10"), endpoints=2),
        buyer("b", prof("p1", "8")),
        buyer("c", prof("p1", "6", states=["CA"])),
        buyer("z"),  # no profiles: price 0 after the bidders
    )
    ex = Exchange(cfg)
    d = await ex.route(facts())
    assert targets(d) == [
        ("a", "e0", 8_000_000),
        ("a", "e1", 8_000_000),
        ("b", "e0", 0),
        ("z", "e0", 0),
    ]
    assert d.targets[0].uri == "sip:a-0@127.0.0.1"
    assert d.targets[0].profile_id == "p1" and d.targets[0].bid == 10_000_000
    assert d.campaign_id == "c1" and d.reason is None
    assert d.record is not None
    assert d.record["excluded"] == {"c/p1": "state"}  # the caller is in New York
    assert d.record["winner"]["buyer_id"] == "a"
    assert d.decision_us == d.record["elapsed_us"] >= 0
    await ex.aclose()


async def test_issue_3_fallback_without_profiles_or_campaigns() -> None:
    cfg = ExchangeConfig(
        trunks=[Trunk(id="t1", name="t1")],
        buyers=[buyer("a", endpoints=2), buyer("b", active=False), buyer("c")],
    )
    ex = Exchange(cfg)
    d = await ex.route(facts(called="+19995550123"))
    assert targets(d) == [("a", "e0", 0), ("a", "e1", 0), ("c", "e0", 0)]
    assert d.campaign_id is None
    s = ex.settle(facts(), d.targets[0], True, 120_000)
    assert s.billable and s.price == 0 and s.payout == 0
    await ex.aclose()


async def test_no_targets_has_a_reason() -> None:
    ex = Exchange(config(buyer("a", prof("p1", "5", states=["CA"]))))
    d = await ex.route(facts())
    assert d.targets == [] and d.reason == "no_eligible_buyer"
    ex.update(config(buyer("a", prof("p1", "5")), active=False))
    d = await ex.route(facts())
    assert d.targets == [] and d.reason == "campaign_inactive"
    await ex.aclose()


@pytest.mark.parametrize(
    ("answered", "duration_ms", "billable"),
    [(True, 60_000, True), (True, 59_999, False), (False, 0, False), (True, 61_000, True)],
    ids=["at-minimum", "just-short", "unanswered", "longer"],
)
async def test_settle_billable_price_payout(
    answered: bool, duration_ms: int, billable: bool
) -> None:
    ex = Exchange(
        config(
            buyer("a", prof("p1", "10", min_duration=60)),
            buyer("b", prof("p1", "3.333333", min_duration=60)),
        )
    )
    d = await ex.route(facts())
    s = ex.settle(facts(), d.targets[0], answered, duration_ms)
    assert s.billable is billable
    assert s.bid == 10_000_000
    if billable:
        assert s.price == 3_333_333
        assert s.payout == 2_333_333  # 70 % rounded half-even to the micro-dollar
    else:
        assert s.price is None and s.payout is None
    assert ex.settle(facts(), None, False, 0).billable is False
    await ex.aclose()


async def test_settle_releases_and_commits_cap_slots() -> None:
    caps = InProcessCaps()
    cfg = config(
        buyer(
            "a", prof("p1", "10", caps=Caps(concurrent=1, hourly=5, budget_daily=Decimal("100")))
        ),
        buyer("b", prof("p1", "4", caps=Caps(concurrent=1, hourly=5))),
    )
    ex = Exchange(cfg, caps=caps)
    d1 = await ex.route(facts("c1"))
    assert [t.buyer_id for t in d1.targets] == ["a", "b"]
    # Both slots are held while call 1 is being placed: the next call gets nobody.
    d2 = await ex.route(facts("c2"))
    assert d2.targets == []
    assert d2.record is not None
    assert d2.record["excluded"] == {"a/p1": "cap_concurrent", "b/p1": "cap_concurrent"}
    # a did not answer, b did and the call was billable at b's price (the reserve, 0).
    ex.settle(facts("c1"), d1.targets[1], True, 30_000)
    assert caps.in_flight("a/p1") == 0 and caps.in_flight("b/p1") == 0
    assert caps.counts("a/p1")[0] == 0  # a's hour slot given back
    assert caps.counts("b/p1")[0] == 1  # b's connected call stays counted
    d3 = await ex.route(facts("c3"))
    ex.settle(facts("c3"), d3.targets[0], True, 30_000)  # a answers, pays 4
    assert caps.counts("a/p1")[3] == 4_000_000  # budget charged the price, not the bid
    # A second settle of the same call changes nothing.
    ex.settle(facts("c3"), d3.targets[0], True, 30_000)
    assert caps.counts("a/p1")[:4] == (1, 1, 1, 4_000_000)
    await ex.aclose()


async def test_answer_frees_the_failover_bidders_slots_at_once() -> None:
    caps = InProcessCaps()
    cfg = config(
        buyer("a", prof("p1", "10", caps=Caps(concurrent=1))),
        buyer("b", prof("p1", "4", caps=Caps(concurrent=1))),
    )
    ex = Exchange(cfg, caps=caps)
    d1 = await ex.route(facts("c1"))
    assert [t.buyer_id for t in d1.targets] == ["a", "b"]
    assert caps.in_flight("b/p1") == 1  # b stands in line while call 1 rings
    ex.answered(facts("c1"), d1.targets[0])  # a answers call 1
    assert caps.in_flight("a/p1") == 1 and caps.in_flight("b/p1") == 0
    d2 = await ex.route(facts("c2"))  # b is free for the next call during a's conversation
    assert [t.buyer_id for t in d2.targets] == ["b"]
    ex.settle(facts("c1"), d1.targets[0], True, 30_000)
    ex.settle(facts("c2"), d2.targets[0], False, 0)  # b did not answer call 2
    assert caps.in_flight("a/p1") == 0 and caps.in_flight("b/p1") == 0
    assert caps.counts("a/p1")[0] == 1  # a's answered call counts toward its hourly cap
    assert caps.counts("b/p1")[0] == 0  # b's standing in line for call 1 never counted



@pytest.mark.parametrize(
    ("count_on", "billable_ms", "blocked"),
    [
        ("connect", 1_000, True),
        ("billable", 1_000, False),
        ("billable", 90_000, True),
    ],
)
async def test_duplicate_caller_rule(count_on: str, billable_ms: int, blocked: bool) -> None:
    rule = DuplicateRule(window_days=30, count_on=count_on)  # type: ignore[arg-type]
    cfg = config(
        buyer("a", prof("p1", "10", min_duration=60, duplicate=rule)), buyer("b", prof("p1", "1"))
    )
    ex = Exchange(cfg)
    d = await ex.route(facts("c1"))
    ex.settle(facts("c1"), d.targets[0], True, billable_ms)
    again = await ex.route(facts("c2"))
    assert (again.targets[0].buyer_id == "b") is blocked
    other = await ex.route(facts("c3", caller="+13105550100"))
    assert other.targets[0].buyer_id == "a"
    await ex.aclose()


async def test_update_applies_to_the_next_call() -> None:
    ex = Exchange(config(buyer("a", prof("p1", "5")), buyer("b", prof("p1", "4"))))
    assert (await ex.route(facts("c1"))).targets[0].buyer_id == "a"
    ex.update(config(buyer("a", prof("p1", "5")), buyer("b", prof("p1", "6"))))
    assert (await ex.route(facts("c2"))).targets[0].buyer_id == "b"
    with pytest.raises(ConfigInvalid):
        ex.update(config(buyer("a", prof("p1", "5", timezone="Nowhere/Land"))))
    assert (await ex.route(facts("c3"))).targets[0].buyer_id == "b"  # old config kept
    # A slot taken before an update is released after it.
    ex.update(config(buyer("a", prof("p1", "5", caps=Caps(concurrent=1)))))
    d = await ex.route(facts("c4"))
    ex.update(config(buyer("a", prof("p1", "7", caps=Caps(concurrent=1)))))
    assert (await ex.route(facts("c5"))).targets == []
    ex.settle(facts("c4"), d.targets[0], False, 0)
    assert (await ex.route(facts("c6"))).targets[0].price == 0
    await ex.aclose()


async def test_200_concurrent_routes_against_a_concurrency_cap() -> None:
    ex = Exchange(
        config(buyer("a", prof("p1", "10", caps=Caps(concurrent=7))), buyer("b", prof("p1", "1")))
    )
    ds = await asyncio.gather(*(ex.route(facts(f"c{i}")) for i in range(200)))
    assert sum(d.targets[0].buyer_id == "a" for d in ds) == 7
    assert all(d.targets for d in ds)  # the others went to b
    await ex.aclose()


async def test_200_concurrent_routes_with_two_instances_sharing_redis(redis_url: str) -> None:
    factory = RedisFactory(redis_url)
    cfg = config(buyer("a", prof("p1", "10", caps=Caps(concurrent=7))), buyer("b", prof("p1", "1")))
    one, two = Exchange(cfg, caps=factory()), Exchange(cfg, caps=factory())
    try:
        ds = await asyncio.gather(
            *((one if i % 2 else two).route(facts(f"c{i}")) for i in range(200))
        )
        winners = [d for d in ds if d.targets[0].buyer_id == "a"]
        assert len(winners) == 7
        # An instance whose take was refused re-ran the auction without a: it recorded why.
        losers = [d for d in ds if d.targets[0].buyer_id == "b"]
        assert all(
            d.record and d.record["excluded"].get("a/p1") == "cap_concurrent" for d in losers
        )
        for i, d in enumerate(ds):
            (one if i % 2 else two).settle(facts(f"c{i}"), d.targets[0], False, 0)
        await one.caps.flush()
        await two.caps.flush()
        d = await one.route(facts("again"))
        assert d.targets[0].buyer_id == "a"
        one.settle(facts("again"), d.targets[0], False, 0)
    finally:
        await one.aclose()
        await two.aclose()
        await factory.cleanup()


async def test_unreachable_redis_drops_only_capped_profiles() -> None:
    caps = RedisCaps("redis://127.0.0.1:1/0", pool_timeout=0.5)
    cfg = config(buyer("a", prof("p1", "10", caps=Caps(hourly=100))), buyer("b", prof("p1", "1")))
    ex = Exchange(cfg, caps=caps)
    d = await ex.route(facts())
    assert [t.buyer_id for t in d.targets] == ["b"]
    assert d.record is not None and d.record["excluded"]["a/p1"] == "caps_unavailable"
    ex.settle(facts(), d.targets[0], True, 1000)
    await caps.flush()
    await ex.aclose()


async def test_cancelled_route_gives_its_slots_back() -> None:
    class SlowCaps(InProcessCaps):
        async def take(self, call_id: str, requests: Any) -> Any:
            out = await super().take(call_id, requests)
            await asyncio.sleep(10)
            return out

    caps = SlowCaps()
    ex = Exchange(config(buyer("a", prof("p1", "10", caps=Caps(concurrent=1)))), caps=caps)
    task = asyncio.ensure_future(ex.route(facts()))
    await asyncio.sleep(0.01)
    assert caps.in_flight("a/p1") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert caps.in_flight("a/p1") == 0


async def test_unsettled_calls_are_swept() -> None:
    now = [0.0]
    caps = InProcessCaps(monotonic=lambda: now[0])
    cfg = config(buyer("a", prof("p1", "10", caps=Caps(concurrent=1))), buyer("b", prof("p1", "1")))
    ex = Exchange(cfg, caps=caps, stale_after_s=60, monotonic=lambda: now[0])
    assert (await ex.route(facts("lost"))).targets[0].buyer_id == "a"
    now[0] = 61
    assert (await ex.route(facts("next"))).targets[0].buyer_id == "a"


# -- RTB through the engine ----------------------------------------------------------------------


class Bidder:
    def __init__(self, answer: dict[str, Any] | None, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Bidder:
        async def handle(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            await asyncio.sleep(self.delay)
            return web.json_response(self.answer) if self.answer else web.Response(status=204)

        app = web.Application()
        app.router.add_post("/bid", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/bid"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def rtb_bidders() -> AsyncIterator[tuple[Bidder, Bidder, Bidder]]:
    fast = await Bidder({"bid": "20.00", "expires_in": 60, "min_duration": 30}).start()
    slow = await Bidder({"bid": "50.00"}, delay=0.5).start()
    bad = await Bidder({"bid": 30.5}).start()
    yield fast, slow, bad
    for b in (fast, slow, bad):
        await b.stop()


@pytest.mark.parametrize("expose", [False, True])
async def test_rtb_bidders_in_the_auction(
    rtb_bidders: tuple[Bidder, Bidder, Bidder], expose: bool
) -> None:
    fast, slow, bad = rtb_bidders
    cfg = config(
        buyer("s", prof("p1", "10")),
        buyer("f", prof("p1", "0", rtb_url=fast.url)),
        buyer("l", prof("p1", "0", rtb_url=slow.url)),
        buyer("g", prof("p1", "0", rtb_url=bad.url)),
        buyer("x", prof("p1", "0", rtb_url=fast.url, states=["CA"])),  # not eligible: no ping
        reserve="1",
        expose_caller=expose,
    )
    ex = Exchange(cfg, rtb=RtbClient(timeout=0.1))
    d = await ex.route(facts())
    assert [t.buyer_id for t in d.targets] == ["f", "s"]
    assert d.targets[0].min_duration_s == 30
    s30 = ex.index.survival(30)
    assert d.targets[0].price == -(-(10_000_000 * 1_000_000) // s30)  # s's EV in f's terms
    assert d.decision_us < 400_000
    assert d.record is not None
    assert d.record["excluded"]["l/p1"] == "rtb_no_bid"
    assert d.record["excluded"]["g/p1"] == "rtb_no_bid"
    assert d.record["excluded"]["x/p1"] == "state"
    assert d.record["rtb_asked"] == 3
    assert len(fast.bodies) == 1  # x was never pinged
    body = fast.bodies[0]
    assert body["profile_id"] == "p1" and body["called"] == DID and body["reserve"] == "1.000000"
    assert body["caller_state"] == "NY" and body["caller_area_code"] == "212"
    assert ("caller" in body) is expose
    if expose:
        assert body["caller"] == "+12125550100"
    # The same caller again: the fast answer is reused, only the others are pinged.
    ex.settle(facts(), d.targets[0], False, 0)
    await ex.route(facts("call-2"))
    assert len(fast.bodies) == 1 and len(slow.bodies) == 2
    await ex.aclose()


async def test_no_rtb_round_without_eligible_rtb_profiles() -> None:
    ex = Exchange(
        config(
            buyer("s", prof("p1", "10")),
            buyer("r", prof("p1", "0", rtb_url="http://127.0.0.1:1/", states=["CA"])),
        )
    )
    d = await ex.route(facts())
    assert [t.buyer_id for t in d.targets] == ["s"]
    assert ex.rtb.stats["requests"] == 0
    assert d.record is not None and "rtb_asked" not in d.record
    await ex.aclose()


def test_settle_is_in_micro_dollars() -> None:
    t = Target(
        buyer_id="a",
        endpoint_id="e0",
        uri="sip:a@h",
        profile_id="p1",
        bid=to_micros("2"),
        price=to_micros("1.000001"),
    )
    s = Exchange(config()).settle(facts(), t, True, 10)
    assert s.price == 1_000_001 and s.payout == 700_001  # 700000.7 rounds half-even up
    late = NOW + timedelta(seconds=1)
    assert late > NOW


async def test_endpoint_max_concurrent_and_inactive_endpoints() -> None:
    a = Buyer(
        id="a",
        name="a",
        endpoints=[
            Endpoint(id="e0", uri="sip:a0@h", max_concurrent=1),
            Endpoint(id="off", uri="sip:off@h", active=False),
            Endpoint(id="e1", uri="sip:a1@h"),
        ],
        profiles=[prof("p1", "5")],
    )
    z = Buyer(id="z", name="z", endpoints=[Endpoint(id="e0", uri="sip:z@h", max_concurrent=1)])
    ex = Exchange(config(a, z))
    d1 = await ex.route(facts("c1"))
    assert [(t.buyer_id, t.endpoint_id) for t in d1.targets] == [
        ("a", "e0"),
        ("a", "e1"),
        ("z", "e0"),
    ]
    d2 = await ex.route(facts("c2"))
    assert [(t.buyer_id, t.endpoint_id) for t in d2.targets] == [("a", "e1")]
    assert d2.record is not None and d2.record["excluded"] == {"z/*": "endpoint_busy"}
    ex.settle(facts("c1"), d1.targets[0], True, 5_000)
    d3 = await ex.route(facts("c3"))
    assert [(t.buyer_id, t.endpoint_id) for t in d3.targets] == [
        ("a", "e0"),
        ("a", "e1"),
        ("z", "e0"),
    ]
    await ex.aclose()


async def test_from_settings_picks_the_backend() -> None:
    settings = load_settings(env={"DCE_AUCTION_TIMEOUT": "250ms"})
    ex = Exchange.from_settings(
        config(), redis_url=settings.redis_url, auction_timeout=settings.auction_timeout
    )
    assert isinstance(ex.caps, InProcessCaps)
    assert ex.rtb.timeout == 0.25
    await ex.aclose()
    ex = Exchange.from_settings(config(), redis_url="redis://127.0.0.1:1/0", auction_timeout=0.1)
    assert isinstance(ex.caps, RedisCaps)
    await ex.aclose()
