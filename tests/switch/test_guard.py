"""Password-guessing guard (switch/guard.py) on fake time: windows, blocks, answers, memory."""

from __future__ import annotations

import pytest

from switch.guard import AuthGuard, Blocked, GuardConfig, source_key

T0 = 1000.0
SRC = "198.51.100.7"


def guard(**kw: float) -> AuthGuard:
    cfg = {"source_limit": 5, "user_limit": 10, "window": 600.0, "block": 600.0, **kw}
    return AuthGuard(GuardConfig(**cfg))  # type: ignore[arg-type]


def test_defaults_are_fail2bans() -> None:
    cfg = GuardConfig()
    assert (cfg.source_limit, cfg.window, cfg.block) == (5, 600.0, 600.0)


def test_the_fifth_failure_in_the_window_blocks_the_source_for_the_block_time() -> None:
    g = guard()
    for i in range(4):
        assert g.failed(SRC, "alice", T0 + i) == []
        assert not g.source_blocked(SRC, T0 + i)
    assert g.failed(SRC, "alice", T0 + 4) == [
        Blocked(kind="source", key=SRC, until=T0 + 604, failures=5)
    ]
    assert g.source_blocked(SRC, T0 + 4)
    assert g.source_blocked(SRC, T0 + 603.9)
    assert not g.source_blocked(SRC, T0 + 604)
    assert not g.source_blocked("198.51.100.8", T0 + 5)
    assert (g.failures, g.source_blocks, g.user_blocks) == (5, 1, 0)


def test_the_per_packet_check_is_false_once_every_block_expired() -> None:
    g = guard(source_limit=1, block=10)
    assert not g.any_source_blocked(T0)
    g.failed("192.0.2.1", None, T0)
    g.failed("192.0.2.2", None, T0 + 5)
    assert g.any_source_blocked(T0 + 9)
    assert g.any_source_blocked(T0 + 10)  # the second block still holds
    assert len(g._sources) == 1  # the first, expired, is gone without being asked about
    assert not g.any_source_blocked(T0 + 15) and not g._sources


def test_the_window_slides() -> None:
    g = guard()
    for t in (0, 100, 200, 300):
        g.failed(SRC, None, T0 + t)
    # 600 s after the first failure it no longer counts: four in the window, not five.
    assert g.failed(SRC, None, T0 + 600) == []
    assert not g.source_blocked(SRC, T0 + 600)
    # Now 100, 200, 300, 600 and this one lie within 600 s.
    assert [b.kind for b in g.failed(SRC, None, T0 + 699)] == ["source"]


def test_counting_starts_afresh_after_a_block() -> None:
    g = guard(block=60)
    for i in range(5):
        g.failed(SRC, None, T0 + i)
    after = T0 + 64
    assert not g.source_blocked(SRC, after)
    for i in range(4):
        assert g.failed(SRC, None, after + i) == []
    assert [b.kind for b in g.failed(SRC, None, after + 4)] == ["source"]


def test_failures_raced_past_a_block_are_not_counted_again() -> None:
    g = guard(block=60)
    for i in range(5):
        g.failed(SRC, None, T0 + i)
    for i in range(10):
        assert g.failed(SRC, None, T0 + 5 + i) == []
    assert g.source_blocks == 1
    assert not g.source_blocked(SRC, T0 + 64)  # the block was not extended


def test_a_limit_of_zero_never_blocks() -> None:
    g = guard(source_limit=0, user_limit=0)
    for i in range(100):
        assert g.failed(SRC, "alice", T0 + i) == []
    assert g.failures == 100 and not g.source_blocked(SRC, T0 + 100)


def test_blocked_requests_answered_one_in_ten_at_most_once_a_second() -> None:
    g = guard()
    for _ in range(5):
        g.failed(SRC, "alice", T0)
    # 2,000 guesses at 600 a second: the first is answered, then at most one a second.
    answered = [i for i in range(2000) if g.answer_blocked(SRC, T0 + i / 600)]
    assert answered[0] == 0
    assert 1 <= len(answered) <= 5
    assert g.refused == 2000 and g.dropped == 2000 - len(answered)
    # A slow guesser (one every 2 s) still gets only one answer in ten.
    g2 = guard()
    for _ in range(5):
        g2.failed(SRC, None, T0)
    slow = [i for i in range(100) if g2.answer_blocked(SRC, T0 + 2 * i)]
    assert slow == list(range(0, 100, 10))


def test_user_block_spares_sources_that_authenticated_and_trust_expires() -> None:
    g = AuthGuard(GuardConfig(source_limit=0, user_limit=3, window=60, block=60, trust=300))
    g.succeeded("203.0.113.1", "alice", T0)
    blocks = [g.failed(f"198.51.100.{i}", "alice", T0 + 1) for i in range(3)]
    assert blocks[-1] == [Blocked(kind="user", key="alice", until=T0 + 61, failures=3)]
    assert g.user_blocked("alice", "198.51.100.200", T0 + 2)
    assert not g.user_blocked("alice", "203.0.113.1", T0 + 2)  # its trunk keeps calling
    assert not g.user_blocked("bob", "198.51.100.200", T0 + 2)
    assert not g.user_blocked("alice", "198.51.100.200", T0 + 61)
    assert g.refused == 1
    # Trust lasts `trust` seconds after the last success.
    for i in range(3):
        g.failed(f"198.51.100.{i}", "alice", T0 + 299)
    assert not g.user_blocked("alice", "203.0.113.1", T0 + 299.5)
    assert g.user_blocked("alice", "203.0.113.1", T0 + 300)


def test_unknown_user_names_are_counted_like_real_ones() -> None:
    g = AuthGuard(GuardConfig(source_limit=0, user_limit=2))
    g.failed("198.51.100.1", "no-such-user", T0)
    assert [b.key for b in g.failed("198.51.100.2", "no-such-user", T0)] == ["no-such-user"]


def test_success_does_not_reset_failures() -> None:
    g = guard()
    for i in range(4):
        g.failed(SRC, "mallory", T0 + i)
    g.succeeded(SRC, "alice", T0 + 4)  # one known password buys no more guesses
    assert [b.kind for b in g.failed(SRC, "mallory", T0 + 5)] == ["source"]


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:0:0:1::9", "2001:db8::/64"),
        ("2001:DB8::1%eth0", "2001:db8::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_key(ip: str, key: str) -> None:
    assert source_key(ip) == key


def test_ipv6_sources_are_blocked_per_64() -> None:
    g = guard()
    for i in range(5):
        g.failed(f"2001:db8::{i + 1}", None, T0)
    assert g.source_blocked("2001:db8::ffff", T0)
    assert not g.source_blocked("2001:db8:0:1::1", T0)


def test_tables_are_bounded_and_blocks_survive_a_spray() -> None:
    g = AuthGuard(GuardConfig(source_limit=2, user_limit=2, max_entries=50))
    g.failed(SRC, None, T0)
    g.failed(SRC, None, T0)
    assert g.source_blocked(SRC, T0)
    for i in range(1000):  # one failure each from many (spoofed) sources and user names
        g.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}", T0 + 1)
    assert len(g._source_fails) <= 50 and len(g._user_fails) <= 50
    assert g.source_blocked(SRC, T0 + 1)


def test_block_table_evicts_the_soonest_to_expire() -> None:
    g = AuthGuard(GuardConfig(source_limit=1, max_entries=3, block=100))
    for i in range(4):
        g.failed(f"192.0.2.{i}", None, T0 + i)
    assert [g.source_blocked(f"192.0.2.{i}", T0 + 4) for i in range(4)] == [
        False, True, True, True]
    assert g.blocked_sources(T0 + 4) == 3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"source_limit": -1}, "source_limit"),
        ({"window": 0}, "window"),
        ({"block": -1.0}, "block"),
        ({"reply_every": 0}, "reply_every"),
        ({"max_entries": 0}, "max_entries"),
    ],
)
def test_bad_config(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuardConfig(**kw)  # type: ignore[arg-type]
