"""Per-trunk limits (switch/limits.py) on fake time: token bucket, live calls, pending."""

from __future__ import annotations

import pytest

from switch.limits import CONCURRENT, CPS, TrunkLimit, TrunkLimiter

T0 = 50.0


def test_no_limits_admit_everything_and_still_count_live_calls() -> None:
    lim = TrunkLimiter()
    for i in range(100):
        assert lim.admit("t", T0) is None
        lim.started(f"c{i}", "t")
    lim.settled()
    assert lim.live("t") == 100 and lim.live_by_trunk() == {"t": 100}
    assert lim.refused == {}


def test_cps_burst_then_the_rate() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_cps=2, burst=3)})
    # A burst of 3 at once, then refused until tokens come back at 2 a second.
    assert [lim.admit("t", T0) for _ in range(5)] == [None, None, None, CPS, CPS]
    assert lim.admit("t", T0 + 0.4) == CPS  # 0.8 token
    assert lim.admit("t", T0 + 0.5) is None  # 1 token
    assert lim.admit("t", T0 + 0.5) == CPS
    # Offered 10 a second for 10 s: exactly 2 a second get through (plus the burst).
    lim2 = TrunkLimiter({"t": TrunkLimit(max_cps=2, burst=3)})
    through = sum(lim2.admit("t", T0 + i / 10) is None for i in range(100))
    assert through == 3 + 19  # 9.9 s of refill at 2/s, rounded down by whole tokens
    assert lim2.refused == {("t", CPS): 100 - through}


def test_default_burst_is_one_second_of_calls() -> None:
    assert TrunkLimit(max_cps=2.5).capacity == 3.0
    assert TrunkLimit(max_cps=0.5).capacity == 1.0
    lim = TrunkLimiter({"t": TrunkLimit(max_cps=0.5)})
    assert [lim.admit("t", T0 + t) for t in (0, 1, 2, 3.9, 4)] == [None, CPS, None, CPS, None]


def test_a_trunk_at_its_rate_with_jitter_is_never_refused() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_cps=10)})
    times = [T0 + i * 0.1 + (0.05 if i % 2 else -0.05) for i in range(1, 200)]
    assert all(lim.admit("t", t) is None for t in times)


def test_concurrent_calls_count_until_they_end() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_concurrent=2)})
    assert lim.admit("t", T0) is None
    lim.started("a", "t")
    assert lim.admit("t", T0) is None
    lim.started("b", "t")
    lim.settled()
    assert lim.admit("t", T0) == CONCURRENT
    # The refused call ends too (the core writes its CDR): it was never live.
    lim.ended("refused-call")
    assert lim.admit("t", T0) == CONCURRENT
    lim.ended("a")
    assert lim.admit("t", T0) is None
    assert lim.refused == {("t", CONCURRENT): 2}
    assert lim.admit("other", T0) is None  # other trunks are not limited


def test_admissions_fed_in_one_batch_count_before_they_start() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_concurrent=2)})
    # Three INVITEs in one TCP read: no RouteCall seen yet between them.
    assert [lim.admit("t", T0) for _ in range(3)] == [None, None, CONCURRENT]
    lim.started("a", "t")
    lim.started("b", "t")
    lim.settled()
    assert lim.live("t") == 2


def test_an_admission_that_never_became_a_call_is_forgotten_when_settled() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_concurrent=1)})
    assert lim.admit("t", T0) is None  # e.g. answered 400 for its Request-URI: no call
    assert lim.admit("t", T0) == CONCURRENT
    lim.settled()
    assert lim.admit("t", T0) is None


def test_concurrency_is_checked_first_and_a_refusal_spends_no_token() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_cps=1, burst=1, max_concurrent=1)})
    assert lim.admit("t", T0) is None
    lim.started("a", "t")
    lim.settled()
    assert lim.admit("t", T0 + 5) == CONCURRENT
    lim.ended("a")
    assert lim.admit("t", T0 + 5) is None  # the token was not spent by the refusal


def test_reconfigure_keeps_live_counts_and_caps_the_bucket() -> None:
    lim = TrunkLimiter({"t": TrunkLimit(max_cps=100, max_concurrent=10)})
    lim.admit("t", T0)
    lim.started("a", "t")
    lim.settled()
    lim.configure({"t": TrunkLimit(max_cps=1, burst=1, max_concurrent=1)})
    assert lim.admit("t", T0) == CONCURRENT
    lim.ended("a")
    assert lim.admit("t", T0) is None
    lim.settled()  # that one never became a call: concurrency is free, the bucket is not
    assert lim.admit("t", T0) == CPS
    lim.configure({})
    assert all(lim.admit("t", T0) is None for _ in range(50))


def test_started_twice_counts_once() -> None:
    lim = TrunkLimiter()
    lim.started("a", "t")
    lim.started("a", "t")
    lim.ended("a")
    lim.ended("a")
    assert lim.live("t") == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_cps": 0.0}, "max_cps"),
        ({"max_cps": float("inf")}, "max_cps"),
        ({"burst": 0}, "burst"),
        ({"max_concurrent": 0}, "max_concurrent"),
    ],
)
def test_bad_limits(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrunkLimit(**kw)  # type: ignore[arg-type]
