"""Buyer endpoint health on fake time: when probes go out, what counts as an answer, when an
endpoint goes down and comes back, and how the prober hands that to routing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from dce.endpoint_health import (
    Health,
    HealthTracker,
    ProbeConfig,
    Prober,
    answers_alive,
    probed_uris,
)
from exchange.models import BidProfile, Buyer, Endpoint, ExchangeConfig

A, B, C, D = (f"sip:{x}@127.0.0.1:50{i}0" for i, x in enumerate("abcd"))


def tracker(uris: list[str] | None = None, now: float = 0.0, **kw: float) -> HealthTracker:
    t = HealthTracker(ProbeConfig(**kw))  # type: ignore[arg-type]
    t.set_uris(uris if uris is not None else [A], now)
    return t


def health(t: HealthTracker, uri: str = A) -> Health:
    state = t.state(uri)
    assert state is not None
    return state.health


def probe_round(t: HealthTracker, now: float, status: int | None, uri: str = A) -> None:
    """One probe of ``uri`` at ``now``: answered ``status`` at once, or (None) never."""
    assert t.due(now) == [uri]
    if status is not None:
        t.answered(uri, status, now + 0.01)
    else:
        t.handle_timer(now + t.config.timeout)


# -- when probes go out -------------------------------------------------------------------------


def test_probes_are_spread_over_the_interval_and_keep_their_phase() -> None:
    t = tracker([D, B, A, C], interval=10.0)
    assert t.due(0.0) == [A]  # the first at once
    assert t.get_timer() == pytest.approx(2.0)  # A's deadline comes before B's turn
    t.answered(A, 200, 0.1)
    assert t.get_timer() == pytest.approx(2.5)
    assert t.due(2.5) == [B]
    assert t.due(5.0) == [C]
    assert t.due(7.49) == []
    assert t.due(7.5) == [D]
    assert t.due(10.0) == [A]  # one interval after its first probe
    assert t.sent == 5


def test_a_late_wake_up_sends_one_probe_not_a_backlog() -> None:
    t = tracker(interval=10.0)
    t.due(0.0)
    t.answered(A, 200, 0.1)
    assert t.due(35.0) == [A]
    assert t.due(39.9) == []
    assert t.due(40.0) == [A]


def test_no_new_probe_while_one_is_out() -> None:
    # A timeout longer than the interval is cut to the interval: the deadline comes first.
    t = tracker(interval=1.0, timeout=5.0)
    assert t.due(0.0) == [A]
    assert t.get_timer() == pytest.approx(1.0)
    assert t.due(1.0) == [A]  # the first was given up at 1.0, then the next one sent
    assert t.state(A) is not None and t.state(A).failures == 1  # type: ignore[union-attr]


def test_interval_zero_probes_nothing() -> None:
    t = tracker([A, B], interval=0.0)
    assert t.due(0.0) == [] and t.get_timer() is None and t.down == frozenset()
    assert t.state(A) is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProbeConfig(down_after=0)
    with pytest.raises(ValueError, match="timeout > 0"):
        ProbeConfig(timeout=0.0)


# -- what counts as an answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "alive"),
    [(200, True), (202, True), (302, True), (403, True), (404, True), (405, True),
     (480, True), (486, True), (501, True), (408, False), (500, False), (502, False),
     (503, False), (504, False), (600, False), (603, False)],
)  # fmt: skip
def test_which_final_statuses_mean_a_live_ua(status: int, alive: bool) -> None:
    assert answers_alive(status) is alive
    t = tracker(down_after=1)
    probe_round(t, 0.0, status)
    state = t.state(A)
    assert state is not None and state.last_status == status
    assert state.health is (Health.UP if alive else Health.DOWN)


# -- down and up again --------------------------------------------------------------------------


def test_down_after_n_silent_probes_and_up_after_m_answers() -> None:
    t = tracker([A], interval=10.0, timeout=2.0, down_after=3, up_after=2)
    assert t.due(0.0) == [A]
    t.handle_timer(2.0)  # no answer within the timeout
    s = t.state(A)
    assert s is not None and health(t) is Health.UNKNOWN and s.failures == 1
    assert s.last_status is None and s.last_result_at == 2.0
    probe_round(t, 10.0, None)
    assert health(t) is Health.UNKNOWN and t.down == frozenset()
    v = t.version
    probe_round(t, 20.0, 503)
    assert health(t) is Health.DOWN and s.since == pytest.approx(20.01)
    assert t.down == frozenset({A}) and t.version == v + 1
    assert t.failed == 3
    probe_round(t, 30.0, 200)
    assert health(t) is Health.DOWN and s.successes == 1  # one answer is not enough
    probe_round(t, 40.0, None)  # a failure resets the run of answers
    assert s.successes == 0 and s.failures == 1
    probe_round(t, 50.0, 200)
    probe_round(t, 60.0, 404)  # a live UA that does not know the user: an answer
    assert health(t) is Health.UP and t.down == frozenset() and s.since == pytest.approx(60.01)
    assert t.counts() == {Health.UP: 1, Health.DOWN: 0, Health.UNKNOWN: 0}


def test_unknown_is_up_after_one_answer_and_up_is_down_after_n_failures() -> None:
    t = tracker(down_after=2, up_after=3)
    probe_round(t, 0.0, 200)
    s = t.state(A)
    assert s is not None and health(t) is Health.UP
    probe_round(t, 10.0, 500)
    assert health(t) is Health.UP
    probe_round(t, 20.0, None)
    assert health(t) is Health.DOWN


def test_an_answer_after_the_probe_was_given_up_is_ignored() -> None:
    t = tracker(down_after=1, timeout=2.0)
    assert t.due(0.0) == [A]
    t.handle_timer(2.0)
    s = t.state(A)
    assert s is not None and s.health is Health.DOWN
    t.answered(A, 200, 5.0)  # the core still had the transaction (Timer F is 32 s)
    assert s.health is Health.DOWN and s.successes == 0 and t.late == 1
    # The core's own give-up (Timer F) for a probe already given up: ignored too.
    t.answered(A, None, 32.0)
    assert t.late == 2 and s.failures == 1


def test_the_core_giving_up_counts_as_a_failure() -> None:
    t = tracker(down_after=1, timeout=2.0)
    t.due(0.0)
    t.answered(A, None, 1.0)  # no answer before Timer F (a short T1)
    s = t.state(A)
    assert s is not None and s.health is Health.DOWN
    t.handle_timer(2.0)  # its deadline passes: nothing more happens
    assert s.failures == 1 and t.failed == 1


# -- config changes -----------------------------------------------------------------------------


def test_set_uris_keeps_states_forgets_removed_and_spreads_new_ones() -> None:
    t = tracker([A, B], interval=10.0, down_after=1)
    assert t.due(0.0) == [A]
    t.handle_timer(2.0)
    assert t.down == frozenset({A})
    v = t.version
    t.set_uris([A, C, D], 3.0)  # B goes, C and D come
    assert t.down == frozenset({A}) and t.version == v
    assert t.state(B) is None
    assert t.due(3.0) == [C]
    t.answered(C, 200, 3.1)
    assert t.due(7.9) == []
    assert t.due(8.0) == [D]
    t.answered(D, 200, 8.1)
    assert t.due(10.0) == [A]  # A keeps its phase
    t.set_uris([C, D], 11.0)  # the down endpoint leaves the config: nothing is down
    assert t.down == frozenset() and t.version == v + 1
    assert t.due(12.0) == []  # A's pending deadline and next probe are forgotten


def test_probed_uris_are_the_active_endpoints_of_active_buyers() -> None:
    cfg = ExchangeConfig(buyers=[
        Buyer(id="b1", name="b1", endpoints=[
            Endpoint(id="e1", uri=A), Endpoint(id="e2", uri=B, active=False)],
            profiles=[BidProfile(id="p", bid=Decimal("1"))]),
        Buyer(id="b2", name="b2", endpoints=[Endpoint(id="e1", uri=A), Endpoint(id="e2", uri=C)]),
        Buyer(id="b3", name="b3", active=False, endpoints=[Endpoint(id="e1", uri=D)]),
    ])  # fmt: skip
    assert probed_uris(cfg) == {A, C}


# -- the prober ---------------------------------------------------------------------------------


class FakeCore:
    def __init__(self) -> None:
        self.sent: list[tuple[str, float]] = []

    def send_options(self, uri: str, now: float) -> bool:
        if not uri.startswith("sip:"):
            return False
        self.sent.append((uri, now))
        return True


class FakeRouter:
    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    def set_down(self, uris: frozenset[str]) -> None:
        self.calls.append(uris)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_prober_sends_due_probes_and_hands_changes_to_the_router() -> None:
    core, router, clock = FakeCore(), FakeRouter(), Clock()
    transmits: list[float] = []
    prober = Prober(
        HealthTracker(ProbeConfig(interval=10.0, timeout=2.0, down_after=1, up_after=1)),
        core,
        lambda: transmits.append(clock.now),
        clock,
    )
    prober.router = router
    cfg = ExchangeConfig(
        buyers=[
            Buyer(
                id="b",
                name="b",
                endpoints=[Endpoint(id="e1", uri=A), Endpoint(id="e2", uri="tel:+15551234")],
            )
        ]
    )
    prober.set_config(cfg)
    assert router.calls == [frozenset()]
    assert prober.tick() == pytest.approx(102.0)
    assert core.sent == [(A, 100.0)] and transmits == [100.0]
    clock.now = 102.0
    prober.tick()  # A timed out
    assert router.calls[-1] == frozenset({A})
    clock.now = 105.0
    prober.tick()  # the tel: URI cannot be probed: a failure, at once
    assert router.calls[-1] == frozenset({A, "tel:+15551234"})
    assert core.sent == [(A, 100.0)]
    clock.now = 110.0
    prober.tick()
    prober.answered(A, 200, 110.05)  # the pump's ProbeAnswered
    assert router.calls[-1] == frozenset({"tel:+15551234"})
    n = len(router.calls)
    prober.tick()
    assert len(router.calls) == n  # no change, no call

    def wall(mono: float) -> datetime:
        return datetime(2026, 12, 3, tzinfo=UTC) + timedelta(seconds=mono)

    view = prober.view(A, wall)
    assert view == {
        "state": "up", "probing": True, "since": wall(110.05), "last_status": 200,
        "last_probe_at": wall(110.05), "failures": 0, "successes": 1,
    }  # fmt: skip
    assert prober.view(B, wall) == {"state": "unknown", "probing": False}
