"""Per-source rate limits and bans (switch/pike.py), on fake time: no loop, no sockets."""

from __future__ import annotations

import pytest

from switch.pike import Ban, Pike, PikeConfig

FLOODER = "198.51.100.7"
TRUNK = "192.0.2.10"


def pike(**limits: float) -> Pike:
    config = PikeConfig(**{"window": 2.0, "limit": 10, "ban": 60.0, **limits})  # type: ignore[arg-type]
    return Pike(config, trusted=lambda host: host == TRUNK)


def send(p: Pike, host: str, count: int, now: float) -> list[bool]:
    return [p.hit(host, now) for _ in range(count)]


def test_a_source_within_the_limit_is_never_banned() -> None:
    p = pike()
    for second in range(0, 60, 2):  # 10 per 2 s window, for a minute
        assert all(send(p, FLOODER, 10, float(second)))
    assert p.banned == {}
    assert p.stats.bans == 0


def test_the_message_over_the_limit_bans_the_source_until_the_ban_ends() -> None:
    p = pike()
    assert send(p, FLOODER, 11, 100.0) == [True] * 10 + [False]
    assert p.banned == {FLOODER: 160.0}
    assert p.active == 1
    assert p.stats.bans == 1
    assert p.bans_to_push() == [Ban(host=FLOODER, seconds=60.0, at=100.0, reason="rate")]
    assert p.bans_to_push() == []  # handed over once
    assert p.get_timer() == 102.0  # the window's counts are freed first
    p.handle_timer(102.0)
    assert FLOODER in p.banned
    assert p.get_timer() == 160.0
    p.handle_timer(159.9)
    assert FLOODER in p.banned
    p.handle_timer(160.0)
    assert p.banned == {}
    assert p.get_timer() is None  # nothing left to do: no wake-ups while idle
    # After the ban the source starts from zero.
    assert all(send(p, FLOODER, 10, 161.0))


def test_the_eleventh_message_within_one_window_is_refused_and_a_new_window_resets() -> None:
    p = pike()
    assert all(send(p, FLOODER, 10, 0.0))
    assert p.hit(FLOODER, 2.0)  # a new window began at 2.0
    assert all(send(p, FLOODER, 9, 3.9))
    assert not p.hit(FLOODER, 3.95)


def test_a_trusted_source_is_never_banned_and_asked_once_per_window() -> None:
    asked: list[str] = []

    def trusted(host: str) -> bool:
        asked.append(host)
        return host == TRUNK

    p = Pike(PikeConfig(window=2.0, limit=10), trusted=trusted)
    assert all(send(p, TRUNK, 1000, 0.0))
    assert asked == [TRUNK]  # only when it crossed the limit, not per message
    assert all(send(p, TRUNK, 1000, 2.5))
    assert asked == [TRUNK, TRUNK]
    assert p.banned == {}
    assert p.stats.trusted_over_limit == 2
    assert not p.ban(TRUNK, 3.0, 600.0, "auth")  # nor on another module's word
    assert p.banned == {}


def test_a_source_that_proved_a_password_is_trusted_for_trust_ttl() -> None:
    p = Pike(PikeConfig(window=2.0, limit=10, trust_ttl=100.0))
    p.trust(FLOODER, 0.0)
    assert all(send(p, FLOODER, 50, 1.0))
    assert p.get_timer() == 3.0  # the window began with the first message, at 1.0
    p.handle_timer(3.0)
    assert p.get_timer() == 100.0  # when its trust runs out
    p.handle_timer(100.0)
    assert p.get_timer() is None
    assert send(p, FLOODER, 11, 101.0)[-1] is False  # an ordinary source again


def test_ban_on_another_modules_word_and_extension() -> None:
    p = pike()
    assert p.ban(FLOODER, 10.0, 30.0, "auth")
    assert p.banned == {FLOODER: 40.0}
    assert p.ban(FLOODER, 20.0, 5.0)  # ends earlier than the running ban: no change
    assert p.banned == {FLOODER: 40.0}
    assert p.ban(FLOODER, 20.0, 60.0)  # ends later: extended
    assert p.banned == {FLOODER: 80.0}
    assert p.stats.bans == 1  # one source banned, once
    assert [b.reason for b in p.bans_to_push()] == ["auth", "rate"]
    p.handle_timer(40.0)  # the first ban's end is stale: nothing lifted
    assert p.banned == {FLOODER: 80.0}
    p.handle_timer(80.0)
    assert p.banned == {}


def test_unban_lifts_a_ban_at_once() -> None:
    p = pike()
    p.ban(FLOODER, 0.0)
    p.unban(FLOODER)
    assert p.banned == {}
    p.handle_timer(60.0)  # its stale heap entry does no harm
    assert p.banned == {}


def test_the_banned_dict_is_never_replaced() -> None:
    """Transports keep a reference to it and test membership without calling the pike."""
    p = pike()
    banned = p.banned
    send(p, FLOODER, 11, 0.0)
    p.handle_timer(60.0)
    send(p, FLOODER, 11, 61.0)
    assert p.banned is banned
    assert FLOODER in banned


def test_many_sources_each_counted_on_its_own() -> None:
    p = pike()
    for i in range(1000):
        assert all(send(p, f"10.0.{i // 250}.{i % 250}", 10, 0.0))
    assert p.banned == {}


def test_the_table_is_bounded_and_freed_after_the_window() -> None:
    p = Pike(PikeConfig(window=2.0, limit=10, max_sources=100))
    for i in range(150):
        assert p.hit(f"203.0.113.{i}", 0.0)
    assert p.stats.untracked == 50
    assert len(p._counts) == 100
    p.handle_timer(2.0)
    assert p._counts == {}
    assert p.get_timer() is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("window", 0.0), ("limit", 0), ("ban", 0.0), ("max_sources", 0)],
    ids=["window", "limit", "ban", "max_sources"],
)
def test_limits_that_cannot_work_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PikeConfig(**{field: value})  # type: ignore[arg-type]
