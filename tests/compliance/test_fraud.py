"""compliance.fraud: each signal, the weights, bounded memory."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.fraud import WEIGHTS, FraudConfig, FraudScorer, unassignable
from compliance.numbers import NumberInfo, info
from compliance.stir import StirResult

A = StirResult(attestation="A", source="identity", reason=None)
NONE = StirResult(attestation="none", source="none", reason="missing")
C = StirResult(attestation="C", source="identity", reason=None)
FORGED = StirResult(attestation="none", source="none", reason="bad_signature")
T = 1_780_000_000.0
CALLED = info("+18005550100")


def score(
    f: FraudScorer,
    caller: str | None,
    ts: float = T,
    stir: StirResult = A,
    called: str | None = None,
    trunk: str = "t1",
) -> tuple[int, tuple[str, ...]]:
    s = f.observe(
        caller=info(caller) if caller else None,
        called=info(called) if called else CALLED,
        trunk_id=trunk,
        stir=stir,
        ts=ts,
    )
    return s.score, s.signals


def test_clean_call_scores_zero() -> None:
    assert score(FraudScorer(), "+12125551234") == (0, ())


@pytest.mark.parametrize(
    ("caller", "signal"),
    [
        ("+12129111234", "unassignable_number"),  # N11 as NXX
        ("+14115551234", "unassignable_number"),  # N11 as NPA
        ("+12125550142", "unassignable_number"),  # 555-01xx
        ("+11234567890", "invalid_number"),
    ],
)
def test_bad_numbers(caller: str, signal: str) -> None:
    assert signal in score(FraudScorer(), caller)[1]


def test_unparseable_caller() -> None:
    assert score(FraudScorer(), None) == (WEIGHTS["invalid_number"], ("invalid_number",))


def test_unassignable_helper() -> None:
    assert not unassignable(info("+12125550200"))
    assert not unassignable(info("+442079460000"))


# The rule as a pattern over "+1" NPA NXX line: N11 as NPA, N11 as NXX, or 555-0100..0199.
_UNASSIGNABLE = re.compile(r"\+1(?:.11.{7}|.{4}11.{4}|.{3}55501.{2})")


@given(st.from_regex(r"\+1[0-9]{10}", fullmatch=True) | st.text("+0123456789", max_size=14))
def test_unassignable_matches_its_pattern(e164: str) -> None:
    number = NumberInfo(
        e164=e164, valid=True, region="US", state=None, area_code=None, time_zones=()
    )
    assert unassignable(number) == bool(_UNASSIGNABLE.fullmatch(e164))


def test_attestation_signals() -> None:
    f = FraudScorer()
    assert score(f, "+12125551234", stir=NONE)[1] == ("attestation_none",)
    assert score(f, "+13125551234", stir=C)[1] == ("attestation_c",)
    assert score(f, "+14155551234", stir=FORGED) == (45, ("stir_failed", "attestation_none"))


def test_neighbour_spoofing() -> None:
    f = FraudScorer()
    assert "neighbour_spoof" in score(f, "+12125551234", called="+12125559876")[1]
    assert "neighbour_spoof" not in score(f, "+12125561234", called="+12125559876")[1]


def test_velocity_15_minutes() -> None:
    f = FraudScorer()
    got = [score(f, "+12125551234", ts=T + 60 * i)[1] for i in range(4)]
    assert got[:3] == [(), (), ()]
    assert got[3] == ("velocity_15m",)
    # An hour later the 15-minute window has emptied.
    assert "velocity_15m" not in score(f, "+12125551234", ts=T + 3600)[1]


def test_velocity_day() -> None:
    f = FraudScorer()
    day = 86400 * 20602 + 3600  # 01:00 UTC, so the calls share one day bucket
    for i in range(19):
        assert score(f, "+12125551234", ts=day + 600 * i)[1] == ()  # every 10 min
    assert score(f, "+12125551234", ts=day + 600 * 19)[1] == ("velocity_day",)
    assert "velocity_day" not in score(f, "+12125551234", ts=day + 86400 * 2)[1]


def test_velocity_window_slides_across_buckets() -> None:
    f = FraudScorer()
    edge = 900 * 2_000_000  # a 15-minute bucket boundary
    for k in range(3):
        score(f, "+12125551234", ts=edge - 120 + k)  # three calls two minutes before it
    # After the boundary the previous bucket still weighs 14/15 of its calls:
    # 1 + 3 * 0.93 < 4, then 2 + 3 * 0.93 >= 4.
    assert "velocity_15m" not in score(f, "+12125551234", ts=edge + 60)[1]
    assert "velocity_15m" in score(f, "+12125551234", ts=edge + 61)[1]


def test_number_rotation() -> None:
    f = FraudScorer()
    for last in ("10", "11", "12", "13"):
        assert "rotation" not in score(f, "+1212555" + "12" + last)[1]
    assert "rotation" in score(f, "+121255512" + "14", ts=T + 120)[1]
    # Same block twenty minutes later: the window has moved on.
    assert "rotation" not in score(f, "+121255512" + "15", ts=T + 1500)[1]


def test_short_calls_clustered_under_minimum() -> None:
    f = FraudScorer()
    for _ in range(7):
        f.record_call_end("t1", 25_000, 60, T)  # short but far from the threshold
    for _ in range(3):
        f.record_call_end("t1", 57_000, 60, T)  # 3 s under the 60 s minimum
    assert "short_calls" in score(f, "+12125551234", trunk="t1")[1]
    assert "short_calls" not in score(f, "+12125551234", trunk="t2")[1]
    f.record_call_end("t1", 1000, 0, T)  # no minimum: ignored
    assert "short_calls" not in score(f, "+12125551234", ts=T + 7200, trunk="t1")[1]


def test_score_is_capped_and_sorted_by_weight() -> None:
    f = FraudScorer()
    for i in range(3):
        score(f, "+12129111234", ts=T + i)
    s, signals = score(f, "+12129111234", ts=T + 3, stir=FORGED, called="+12129119999")
    assert s == 100
    weights = [WEIGHTS[x] for x in signals]
    assert weights == sorted(weights, reverse=True)


def test_custom_weights() -> None:
    f = FraudScorer(FraudConfig(weights={"attestation_none": 90}))
    assert score(f, "+12125551234", stir=NONE)[0] == 90


def test_memory_is_bounded() -> None:
    f = FraudScorer(FraudConfig(max_keys=100))
    for i in range(5000):
        score(f, f"+1212555{i:04d}", ts=T + i * 0.01)
    assert f._v15.keys() <= 2 * 100
    assert f._rot.keys() <= 2 * 100
    assert f.overflow > 0


def test_clock_stepping_back_does_not_reopen_buckets() -> None:
    f = FraudScorer()
    for i in range(3):
        score(f, "+12125551234", ts=T + i)
    # NTP steps back an hour: the call still lands in the newest bucket.
    assert score(f, "+12125551234", ts=T - 3600)[1] == ("velocity_15m",)
