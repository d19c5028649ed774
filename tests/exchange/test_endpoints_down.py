"""Endpoints that fail their health probes are left out of routing (``Exchange.set_down``): a
buyer that cannot take the call neither wins nor sets the price, and comes back when its
endpoints answer again."""

from __future__ import annotations

from decimal import Decimal

from exchange.auction_index import ENDPOINTS_DOWN, compile_index, without_endpoints
from exchange.caps import InProcessCaps
from exchange.engine import Exchange
from exchange.models import Buyer, Caps, Endpoint, ExchangeConfig, Trunk
from tests.exchange.test_engine import buyer, config, facts, prof, targets


def uri(buyer_id: str, i: int = 0) -> str:
    return f"sip:{buyer_id}-{i}@127.0.0.1"  # as tests.exchange.test_engine.buyer names them


async def test_a_buyer_whose_endpoints_are_down_neither_wins_nor_sets_the_price() -> None:
    cfg = config(
        buyer("a", prof("p1", "10")),
        buyer("b", prof("p1", "8")),
        buyer("c", prof("p1", "6")),
        reserve="1",
    )
    ex = Exchange(cfg)
    compiled = ex.index
    d = await ex.route(facts("c1"))
    assert targets(d) == [("a", "e0", 8_000_000), ("b", "e0", 6_000_000), ("c", "e0", 1_000_000)]

    ex.set_down(frozenset({uri("a")}))
    d = await ex.route(facts("c2"))
    # b wins at c's bid: the second price among the bidders that can take the call.
    assert targets(d) == [("b", "e0", 6_000_000), ("c", "e0", 1_000_000)]
    assert d.record is not None
    assert d.record["excluded"] == {"a/p1": ENDPOINTS_DOWN}
    assert d.record["winner"]["buyer_id"] == "b" and d.record["price"] == "6.000000"
    assert "a/p1" not in d.record["eligible"]

    ex.set_down(frozenset({uri("a"), uri("b"), uri("c")}))
    d = await ex.route(facts("c3"))
    assert d.targets == [] and d.reason == "no_eligible_buyer"
    assert d.record is not None and set(d.record["excluded"].values()) == {ENDPOINTS_DOWN}

    ex.set_down(frozenset())  # they answer again
    d = await ex.route(facts("c4"))
    assert targets(d)[0] == ("a", "e0", 8_000_000)
    assert ex.index is compiled  # the compiled index is back in use, as it was
    await ex.aclose()


async def test_only_the_down_endpoint_of_a_buyer_is_skipped() -> None:
    ex = Exchange(config(buyer("a", prof("p1", "10"), endpoints=3), buyer("b", prof("p1", "4"))))
    ex.set_down(frozenset({uri("a", 0), uri("a", 2)}))
    d = await ex.route(facts())
    assert targets(d) == [("a", "e1", 4_000_000), ("b", "e0", 0)]
    assert d.record is not None and d.record["excluded"] == {}
    await ex.aclose()


async def test_endpoint_limits_count_only_endpoints_that_are_up() -> None:
    # e0 is down and has room; e1 is up and full: the buyer cannot take a second call, and
    # must not win it on the strength of e0's room.
    a = Buyer(
        id="a", name="a",
        endpoints=[Endpoint(id="e0", uri=uri("a", 0), max_concurrent=1),
                   Endpoint(id="e1", uri=uri("a", 1), max_concurrent=1)],
        profiles=[prof("p1", "10")],
    )  # fmt: skip
    ex = Exchange(config(a, buyer("b", prof("p1", "4"))), caps=InProcessCaps())
    ex.set_down(frozenset({uri("a", 0)}))
    d1 = await ex.route(facts("c1"))
    assert targets(d1) == [("a", "e1", 4_000_000), ("b", "e0", 0)]
    d2 = await ex.route(facts("c2"))
    assert targets(d2) == [("b", "e0", 0)]
    assert d2.record is not None and d2.record["excluded"] == {"a/p1": "endpoint_busy"}
    await ex.aclose()


async def test_fallback_buyers_skip_down_endpoints_and_are_excluded_when_all_are() -> None:
    cfg = ExchangeConfig(
        trunks=[Trunk(id="t1", name="t1")],
        buyers=[buyer("y", endpoints=2), buyer("z"), buyer("w")],
    )
    ex = Exchange(cfg)
    ex.set_down(frozenset({uri("y", 0), uri("z")}))
    d = await ex.route(facts(called="+19995550123"))
    assert targets(d) == [("y", "e1", 0), ("w", "e0", 0)]
    assert d.record is not None
    assert d.record["excluded"] == {"z/*": ENDPOINTS_DOWN}
    assert d.record["fallback"] == ["y", "w"]
    await ex.aclose()


async def test_the_down_set_survives_a_config_change() -> None:
    ex = Exchange(config(buyer("a", prof("p1", "10")), buyer("b", prof("p1", "8"))))
    ex.set_down(frozenset({uri("a")}))
    ex.update(config(buyer("a", prof("p1", "12")), buyer("b", prof("p1", "8"))))
    d = await ex.route(facts())
    assert targets(d) == [("b", "e0", 0)]
    assert ex.down == frozenset({uri("a")})
    await ex.aclose()


def test_an_inactive_buyer_keeps_its_own_reason_and_a_shared_uri_is_down_for_all() -> None:
    shared = "sip:pbx@127.0.0.1"
    cfg = config(
        Buyer(id="a", name="a", active=False, endpoints=[Endpoint(id="e", uri=shared)],
              profiles=[prof("p1", "10")]),
        Buyer(id="b", name="b", endpoints=[Endpoint(id="e", uri=shared)],
              profiles=[prof("p1", "5", caps=Caps(budget_daily=Decimal("100")))]),
    )  # fmt: skip
    index = compile_index(cfg)
    derived = without_endpoints(index, frozenset({shared}))
    assert derived.profiles["a/p1"].static_reason == "buyer_inactive"
    assert derived.profiles["b/p1"].static_reason == ENDPOINTS_DOWN
    assert derived.profiles["b/p1"].cap.budget_daily == 100_000_000  # other limits kept
    route = derived.route_for("+18005550100")
    assert [p.static_reason for p in route.profiles] == ["buyer_inactive", ENDPOINTS_DOWN]
    # The compiled index is untouched, and a down set that names nothing in it changes nothing.
    assert index.profiles["b/p1"].static_reason is None
    assert without_endpoints(index, frozenset({"sip:elsewhere@10.0.0.9"})) is index
    assert without_endpoints(index, frozenset()) is index
