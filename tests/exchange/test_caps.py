"""Cap slots: atomic take, idempotent release, both backends (Redis against a real server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.caps import (
    Buckets,
    CapsBackend,
    CapSpec,
    InProcessCaps,
    TakeRequest,
    make_spec,
)
from exchange.caps_redis import RedisCaps
from exchange.errors import CapsUnavailable

B = Buckets(hour=2026112315, day=20261123, month=202611)
NEXT_HOUR = Buckets(hour=2026112316, day=20261123, month=202611)
NOW_MS = 1_795_000_000_000
DAY_MS = 86_400_000


def req(
    spec: CapSpec, amount: int = 0, buckets: Buckets = B, caller: str = "", at: int = NOW_MS
) -> TakeRequest:
    return TakeRequest(spec, buckets, amount, caller, at)


class FakeMono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class RedisFactory:
    """RedisCaps instances sharing one fresh key prefix; their keys are deleted afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"dce:test:{uuid.uuid4().hex}:"
        self.made: list[RedisCaps] = []

    def __call__(self, **kw: Any) -> RedisCaps:
        c = RedisCaps(self.url, prefix=self.prefix, **kw)
        self.made.append(c)
        return c

    async def cleanup(self) -> None:
        for c in self.made:
            await c.aclose()
        r = aioredis.Redis.from_url(self.url)
        keys = [k async for k in r.scan_iter(match=self.prefix + "*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


@pytest.fixture
async def redis_caps(redis_url: str) -> AsyncIterator[RedisFactory]:
    factory = RedisFactory(redis_url)
    yield factory
    await factory.cleanup()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[CapsBackend]:
    if request.param == "memory":
        yield InProcessCaps()
        return
    factory = RedisFactory(request.getfixturevalue("redis_url"))
    yield factory()
    await factory.cleanup()


# -- 200 concurrent takes against a cap of N ---------------------------------------------------


@pytest.mark.parametrize("n", [1, 10, 37])
async def test_200_concurrent_takes_admit_exactly_n(backend: CapsBackend, n: int) -> None:
    spec = make_spec("b1", "p1", concurrent=n)

    async def one(i: int) -> bool:
        return (await backend.take(f"call-{i}", [req(spec)]))[0].ok

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(results) == n


@pytest.mark.parametrize(
    ("kw", "amount"),
    [
        ({"hourly": 25}, 0),
        ({"daily": 25}, 0),
        ({"monthly": 25}, 0),
        ({"budget_daily": 25_000_000}, 1_000_000),
        ({"budget_monthly": 25_000_000}, 1_000_000),
    ],
    ids=["hourly", "daily", "monthly", "budget-daily", "budget-monthly"],
)
async def test_200_concurrent_takes_against_counters(
    backend: CapsBackend, kw: dict[str, Any], amount: int
) -> None:
    spec = make_spec("b1", "p1", **kw)
    outcomes = await asyncio.gather(
        *(backend.take(f"call-{i}", [req(spec, amount)]) for i in range(200))
    )
    assert sum(o[0].ok for o in outcomes) == 25


async def test_200_concurrent_takes_against_endpoint_limits(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", endpoints=[("e1", 3), ("e2", 4)])
    outcomes = await asyncio.gather(*(backend.take(f"c{i}", [req(spec)]) for i in range(200)))
    ok = [o[0] for o in outcomes if o[0].ok]
    assert len(ok) == 4  # a call takes a lease on every endpoint with room
    assert sum("e1" in o.endpoints for o in ok) == 3
    assert all(o.reason == "endpoint_busy" for (o,) in outcomes if not o.ok)


# -- release ---------------------------------------------------------------------------------------


async def test_release_is_idempotent(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", concurrent=2)
    r = req(spec)
    assert (await backend.take("a", [r]))[0].ok
    assert (await backend.take("b", [r]))[0].ok
    assert not (await backend.take("c", [r]))[0].ok
    for _ in range(3):  # a retransmitted BYE, a retried release
        backend.release("a", r, counted=False, spent=0, record_duplicate=False)
    await backend.flush()
    outcomes = [(await backend.take(f"n{i}", [r]))[0].ok for i in range(3)]
    assert outcomes == [True, False, False]  # one slot freed, not three


async def test_take_is_idempotent_per_call(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", concurrent=5, hourly=5)
    r = req(spec)
    for _ in range(3):
        assert (await backend.take("same", [r]))[0].ok
    assert sum([(await backend.take(f"o{i}", [r]))[0].ok for i in range(10)]) == 4


async def test_connected_calls_stay_counted_and_others_are_returned(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", concurrent=10, hourly=2)
    r = req(spec)
    assert (await backend.take("a", [r]))[0].ok
    assert (await backend.take("b", [r]))[0].ok
    assert not (await backend.take("c", [r]))[0].ok
    backend.release("a", r, counted=True, spent=0, record_duplicate=False)  # answered
    await backend.flush()
    assert not (await backend.take("c", [r]))[0].ok  # still 2 this hour
    backend.release("b", r, counted=False, spent=0, record_duplicate=False)  # went elsewhere
    await backend.flush()
    assert (await backend.take("c", [r]))[0].ok
    # The next hour is a new bucket.
    assert (await backend.take("d", [req(spec, buckets=NEXT_HOUR)]))[0].ok


async def test_budget_reserves_then_charges_the_price(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", budget_daily=10_000_000)
    r = req(spec, amount=6_000_000)
    assert (await backend.take("a", [r]))[0].ok
    assert not (await backend.take("b", [r]))[0].ok  # 6 reserved + 6 > 10
    backend.release("a", r, counted=True, spent=4_000_000, record_duplicate=False)
    await backend.flush()
    assert (await backend.take("b", [r]))[0].ok  # 4 spent + 6 = 10
    backend.release("b", r, counted=False, spent=0, record_duplicate=False)  # not billable
    await backend.flush()
    assert not (await backend.take("c", [req(spec, amount=6_000_001)]))[0].ok
    assert (await backend.take("c", [req(spec, amount=6_000_000)]))[0].ok


async def test_duplicate_caller_window(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", dup_window_ms=30 * DAY_MS)
    r = req(spec, caller="k1")
    assert (await backend.take("a", [r]))[0].ok
    backend.release("a", r, counted=True, spent=0, record_duplicate=True)
    await backend.flush()
    assert (await backend.take("b", [r]))[0].reason == "duplicate"
    assert (await backend.take("c", [req(spec, caller="k2")]))[0].ok
    later = req(spec, caller="k1", at=NOW_MS + 31 * DAY_MS)
    assert (await backend.take("d", [later]))[0].ok
    # Another profile of the same buyer shares the buyer's history.
    other = make_spec("b1", "p2", dup_window_ms=7 * DAY_MS)
    assert (await backend.take("e", [req(other, caller="k1")]))[0].reason == "duplicate"


async def test_room_reflects_own_slots(backend: CapsBackend) -> None:
    spec = make_spec("b1", "p1", concurrent=1)
    assert backend.room(spec, B, 0, "", NOW_MS) is None
    assert (await backend.take("a", [req(spec)]))[0].ok
    assert backend.room(spec, B, 0, "", NOW_MS) == "cap_concurrent"
    backend.release("a", req(spec), counted=False, spent=0, record_duplicate=False)
    assert backend.room(spec, B, 0, "", NOW_MS) is None
    await backend.flush()


# -- in-process specifics ---------------------------------------------------------------------


def test_lost_release_is_bounded_by_the_lease() -> None:
    mono = FakeMono()
    caps = InProcessCaps(lease_s=60, monotonic=mono)
    spec = make_spec("b1", "p1", concurrent=1)
    assert caps.take_now("a", req(spec)).ok
    assert not caps.take_now("b", req(spec)).ok
    mono.t += 61
    assert caps.take_now("b", req(spec)).ok


def test_release_after_the_hour_rolled_does_not_touch_the_new_hour() -> None:
    caps = InProcessCaps()
    spec = make_spec("b1", "p1", hourly=1)
    assert caps.take_now("a", req(spec)).ok
    assert caps.take_now("b", req(spec, buckets=NEXT_HOUR)).ok
    caps.release("a", req(spec), counted=False, spent=0, record_duplicate=False)
    assert not caps.take_now("c", req(spec, buckets=NEXT_HOUR)).ok


async def test_unreachable_redis_raises_caps_unavailable() -> None:
    caps = RedisCaps("redis://127.0.0.1:1/0", pool_timeout=0.5)
    with pytest.raises(CapsUnavailable):
        await caps.take("a", [req(make_spec("b1", "p1", concurrent=1))])
    await caps._redis.aclose()


# -- Redis specifics ----------------------------------------------------------------------------


async def test_redis_instances_share_caps(redis_caps: RedisFactory) -> None:
    one, two = redis_caps(), redis_caps()
    spec = make_spec("b1", "p1", concurrent=3)
    results = await asyncio.gather(
        *(c.take(f"call-{i}", [req(spec)]) for i, c in enumerate([one, two] * 50))
    )
    assert sum(o[0].ok for o in results) == 3
    # The refusal is remembered briefly so that eligibility skips the profile without a trip.
    refused_on = one if not results[0][0].ok or not results[2][0].ok else two
    assert refused_on.room(spec, B, 0, "", NOW_MS) == "cap_concurrent"


async def test_redis_lease_expires(redis_caps: RedisFactory) -> None:
    caps = redis_caps(lease_s=0.2)
    spec = make_spec("b1", "p1", concurrent=1)
    assert (await caps.take("a", [req(spec)]))[0].ok
    assert not (await caps.take("b", [req(spec)]))[0].ok
    await asyncio.sleep(0.3)  # the lease is Redis server time, not a protocol timer
    assert (await caps.take("b", [req(spec)]))[0].ok


async def test_redis_time_buckets_have_ttls(redis_url: str, redis_caps: RedisFactory) -> None:
    caps = redis_caps()
    spec = make_spec("b1", "p1", hourly=5, budget_daily=10_000_000)
    assert (await caps.take("a", [req(spec, amount=1)]))[0].ok
    r = aioredis.Redis.from_url(redis_url)
    keys = [k.decode() async for k in r.scan_iter(match=caps._prefix + "*")]
    ttls = {k.rsplit("/", 1)[1].split(":")[0]: await r.ttl(k) for k in keys if "/" in k}
    await r.aclose()
    assert 0 < ttls["conc"] <= 4 * 3600  # the concurrency leases: as long as a lease
    assert 0 < ttls["h"] <= 2 * 3600
    assert 0 < ttls["bd"] <= 2 * 86400
    assert 0 < ttls["m"] <= 32 * 86400


# -- property: caps are never exceeded -----------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("take"), st.integers(0, 30), st.integers(0, 3_000_000), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 30), st.integers(0, 3_000_000), st.booleans()),
)


@settings(max_examples=150, deadline=None)
@given(
    limits=st.tuples(
        st.integers(0, 6), st.integers(0, 10), st.integers(0, 15), st.integers(0, 20_000_000)
    ),
    ops=st.lists(op, max_size=80),
)
def test_property_caps_never_exceeded(
    limits: tuple[int, int, int, int], ops: list[tuple[str, int, int, bool]]
) -> None:
    conc, hourly, daily, budget = limits
    caps = InProcessCaps()
    spec = make_spec(
        "b",
        "p",
        concurrent=conc,
        hourly=hourly,
        daily=daily,
        budget_daily=budget,
        endpoints=[("e1", 2), ("e2", 0)],
    )
    live: dict[str, int] = {}  # call -> reserved amount
    counted = 0  # connected calls that stay in the hour
    spent = 0
    for kind, n, amount, flag in ops:
        call = f"c{n}"
        r = req(spec, amount)
        if kind == "take":
            out = caps.take_now(call, r)
            if out.ok and call not in live:
                live[call] = amount
                assert "e2" in out.endpoints
        else:
            # ``flag``: the call connected (stays counted) and was billable; the engine never
            # charges more than it reserved (the price can only fall after the take).
            charge = min(amount, live.get(call, 0)) if flag else 0
            caps.release(call, r, counted=flag, spent=charge, record_duplicate=False)
            if call in live:
                del live[call]
                if flag:
                    counted += 1
                    spent += charge
        in_flight = caps.in_flight(spec.key)
        hour_n, day_n, _, spent_day, _ = caps.counts(spec.key)
        assert in_flight == len(live) <= conc
        assert hour_n == len(live) + counted
        assert hour_n <= hourly and day_n <= daily
        assert spent_day == sum(live.values()) + spent <= budget
        assert sum(1 for call in live if call in caps._endpoints.get(("b", "e1"), {})) <= 2


@settings(max_examples=25, deadline=None)
@given(
    limits=st.tuples(
        st.integers(0, 4), st.integers(0, 6), st.integers(0, 8), st.integers(0, 9_000_000)
    ),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["take", "release"]),
            st.integers(0, 12),
            st.integers(0, 3_000_000),
            st.booleans(),
            st.sampled_from(["", "k1", "k2"]),
        ),
        max_size=40,
    ),
)
def test_property_redis_and_in_process_agree(
    redis_url: str,
    limits: tuple[int, int, int, int],
    ops: list[tuple[str, int, int, bool, str]],
) -> None:
    """The Lua scripts and the in-process code are one semantics: same outcomes, op by op."""
    conc, hourly, daily, budget = limits
    spec = make_spec(
        "b", "p", concurrent=conc, hourly=hourly, daily=daily, budget_daily=budget,
        dup_window_ms=DAY_MS, endpoints=[("e1", 2), ("e2", 0)],
    )  # fmt: skip

    async def run() -> None:
        factory = RedisFactory(redis_url)
        remote, local = factory(), InProcessCaps()
        reserved: dict[str, TakeRequest] = {}
        try:
            for kind, n, amount, flag, caller in ops:
                call = f"c{n}"
                if kind == "take":
                    r = req(spec, amount, caller=caller)
                    (a,) = await remote.take(call, [r])
                    b = local.take_now(call, r)
                    assert (a.ok, a.reason, a.endpoints) == (b.ok, b.reason, b.endpoints)
                    if a.ok:
                        reserved.setdefault(call, r)
                else:
                    r = reserved.pop(call, req(spec, amount, caller=caller))
                    charge = min(amount, r.amount) if flag else 0
                    for caps in (remote, local):
                        caps.release(call, r, counted=flag, spent=charge, record_duplicate=flag)
                    await remote.flush()
        finally:
            await factory.cleanup()

    asyncio.run(run())
