"""Password-guessing guard: failed digest authentications counted per source and per user name,
and blocks that refuse a source (or a user name) for a while without checking any password.

Theory of operation
-------------------
Every refused set of credentials is reported with :meth:`AuthGuard.failed` (source address,
user name, ``now``). Two sliding windows count them: one per source, one per user name
(whether that user exists or not, so a block never tells which names exist). Each window
keeps only the last ``limit`` failure times, so the check is exact and costs O(1)::

    failures of key K at t1 <= ... <= tN (N = limit, older ones forgotten)
    tN - t1 < window   ->  K is blocked until now + block, and its failures are forgotten

While a **source** is blocked, every request from it that would need authentication is
refused before its credentials are read, so the right password is refused too until the block
expires. Most of those requests should cost nothing, not even a response:
:meth:`AuthGuard.answer_blocked` says which to answer (with a constant 403) and which to drop:
the first of the block, then one in ``reply_every`` and at most one per ``reply_interval``
seconds. A legitimate UA behind that address still learns why it fails; a guesser gets almost
nothing back.

While a **user name** is blocked (many sources failing for it: distributed guessing), its
credentials are refused unchecked from every source except those that authenticated as that
user within ``trust`` seconds (:meth:`AuthGuard.succeeded`), so an attacker cannot lock a
working trunk out by failing with its name. Successes never reset failure counts: one known
password must not buy unlimited guesses at another.

IPv6 sources are counted and blocked per /64, the block one host is normally given; an
IPv4-mapped IPv6 address counts as the IPv4 address.

Memory is bounded: each table holds at most ``max_entries`` keys. Expired entries are swept
when a table is full, then the least recently failing keys (for counts) or the soonest to
expire (for blocks) are evicted.

Nothing here reads a clock: ``now`` is monotonic seconds from the caller.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

__all__ = ["AuthGuard", "Blocked", "GuardConfig", "source_key"]

_TRUSTED_PER_USER: Final = 16  # sources remembered per user name (a trunk's SBCs)
_IPV6_PREFIX: Final = 64


class GuardConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The guard's limits. Defaults follow fail2ban's (5 failures in 10 minutes, banned 10
    minutes). A limit of 0 turns that kind of block off (failures are still counted)."""

    source_limit: int = 5  # failures from one source within `window` that block it
    user_limit: int = 10  # failures for one user name (any source) within `window`
    window: float = 600.0  # seconds
    block: float = 600.0  # seconds a block lasts
    trust: float = 86_400.0  # a source that authenticated as a user is exempt from its block
    reply_every: int = 10  # of a blocked source's requests, answer one in this many ...
    reply_interval: float = 1.0  # ... and at most one per this many seconds
    max_entries: int = 100_000  # per table

    def __post_init__(self) -> None:
        for name in ("source_limit", "user_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window", "block", "trust"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.reply_every < 1:
            raise ValueError(f"reply_every must be >= 1, got {self.reply_every}")
        if self.reply_interval < 0:
            raise ValueError(f"reply_interval must be >= 0, got {self.reply_interval}")
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {self.max_entries}")


class Blocked(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A block that :meth:`AuthGuard.failed` just imposed (for the log line and metrics)."""

    kind: Literal["source", "user"]
    key: str  # the source key (address, or IPv6 /64) or the user name
    until: float
    failures: int


@dataclass(slots=True)
class _SourceBlock:
    until: float
    seen: int = 0  # requests refused during this block
    replied_at: float = float("-inf")


def source_key(ip: str) -> str:
    """The key a source is counted and blocked under: the address as given for IPv4 (the
    common case costs nothing), ``a:b:c:d::/64`` for IPv6."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))


class AuthGuard:
    """Failure windows and blocks (see the module docstring). Not thread-safe: one event loop."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config: Final = config or GuardConfig()
        # key -> the last `limit` failure times; insertion order = least recently failing first
        self._source_fails: dict[str, deque[float]] = {}
        self._user_fails: dict[str, deque[float]] = {}
        # key -> block; insertion order = soonest to expire first (every block lasts as long)
        self._sources: dict[str, _SourceBlock] = {}
        self._users: dict[str, float] = {}
        # user name -> {source key: trusted until}
        self._trusted: dict[str, dict[str, float]] = {}
        self.failures = 0  # every failed authentication reported
        self.source_blocks = 0  # blocks imposed
        self.user_blocks = 0
        self.refused = 0  # requests refused unchecked because of a block
        self.dropped = 0  # of those, the ones not answered at all

    # -- questions asked before checking credentials ------------------------------------------

    def any_source_blocked(self, now: float) -> bool:
        """Cheap test for the per-packet path: false almost always. Ends expired blocks first:
        the table's order is their expiry order, so only its head need be looked at."""
        sources = self._sources
        while sources:
            key, block = next(iter(sources.items()))
            if now < block.until:
                return True
            del sources[key]
        return False

    def source_blocked(self, ip: str, now: float) -> bool:
        """Whether requests from ``ip`` that need authentication are refused right now."""
        if not self._sources:
            return False
        key = source_key(ip)
        block = self._sources.get(key)
        if block is None:
            return False
        if now >= block.until:
            del self._sources[key]
            return False
        return True

    def user_blocked(self, username: str, ip: str, now: float) -> bool:
        """Whether credentials for ``username`` from ``ip`` are refused unchecked right now
        (counted in ``refused`` when they are)."""
        if not self._user_block_in_force(username, now):
            return False
        trusted = self._trusted.get(username)
        if trusted is not None:
            t = trusted.get(source_key(ip))
            if t is not None and now < t:
                return False
        self.refused += 1
        return True

    def _user_block_in_force(self, username: str, now: float) -> bool:
        until = self._users.get(username)
        if until is None:
            return False
        if now >= until:
            del self._users[username]
            return False
        return True

    def answer_blocked(self, ip: str, now: float) -> bool:
        """A request from a blocked source was refused: answer it (True) or drop it (False).

        The first request of a block is answered, then one in ``reply_every``, at most one per
        ``reply_interval`` seconds. Call only when :meth:`source_blocked` is true.
        """
        self.refused += 1
        block = self._sources.get(source_key(ip))
        if block is None:  # expired between the two calls: answer, it costs one response
            return True
        cfg = self.config
        turn = block.seen % cfg.reply_every == 0
        block.seen += 1
        if turn and now - block.replied_at >= cfg.reply_interval:
            block.replied_at = now
            return True
        self.dropped += 1
        return False

    # -- outcomes ------------------------------------------------------------------------------

    def failed(self, ip: str, username: str | None, now: float) -> list[Blocked]:
        """Credentials from ``ip`` (for ``username``, when they named one) were refused.

        Returns the blocks this failure imposed (none, the source, the user name or both).
        """
        self.failures += 1
        cfg = self.config
        out: list[Blocked] = []
        key = source_key(ip)
        # A blocked key's own failures (a request that raced its block) are not counted.
        if not self.source_blocked(ip, now) and self._count(
            self._source_fails, key, cfg.source_limit, now
        ):
            self._evict_blocks(self._sources, now)
            self._sources[key] = _SourceBlock(until=now + cfg.block)
            self.source_blocks += 1
            out.append(Blocked(kind="source", key=key, until=now + cfg.block,
                               failures=cfg.source_limit))
        if username is not None and not self._user_block_in_force(username, now) and self._count(
            self._user_fails, username, cfg.user_limit, now
        ):
            self._evict_blocks(self._users, now)
            self._users[username] = now + cfg.block
            self.user_blocks += 1
            out.append(Blocked(kind="user", key=username, until=now + cfg.block,
                               failures=cfg.user_limit))
        return out

    def succeeded(self, ip: str, username: str, now: float) -> None:
        """``ip`` authenticated as ``username``: it stays exempt from that user's blocks for
        ``trust`` seconds. Failure counts are left alone (see the module docstring)."""
        trusted = self._trusted.setdefault(username, {})
        key = source_key(ip)
        trusted.pop(key, None)  # re-insert: the dict's order is least recently seen first
        trusted[key] = now + self.config.trust
        if len(trusted) > _TRUSTED_PER_USER:
            del trusted[next(iter(trusted))]

    def _count(self, table: dict[str, deque[float]], key: str, limit: int, now: float) -> bool:
        """Record one failure of ``key``; True when it makes ``limit`` within the window."""
        if limit == 0:
            return False
        times = table.pop(key, None)  # re-inserted last: the table's order is by last failure
        if times is None:
            if len(table) >= self.config.max_entries:
                self._evict_counts(table, now)
            times = deque(maxlen=limit)
        times.append(now)
        if len(times) == limit and now - times[0] < self.config.window:
            return True  # the key is now blocked: its count starts afresh after the block
        table[key] = times
        return False

    def _evict_counts(self, table: dict[str, deque[float]], now: float) -> None:
        horizon = now - self.config.window
        for key in [k for k, times in table.items() if times[-1] <= horizon]:
            del table[key]
        while len(table) >= self.config.max_entries:
            del table[next(iter(table))]

    def _evict_blocks(self, table: dict[str, _SourceBlock] | dict[str, float], now: float) -> None:
        if len(table) < self.config.max_entries:
            return
        for key in [k for k, v in table.items() if _until(v) <= now]:
            del table[key]
        while len(table) >= self.config.max_entries:
            del table[next(iter(table))]

    # -- for metrics and the API ---------------------------------------------------------------

    def blocked_sources(self, now: float) -> int:
        return sum(1 for b in self._sources.values() if now < b.until)

    def blocked_users(self, now: float) -> int:
        return sum(1 for until in self._users.values() if now < until)


def _until(value: _SourceBlock | float) -> float:
    return value.until if isinstance(value, _SourceBlock) else value
