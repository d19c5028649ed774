"""Port-pair allocator (media/ports.py)."""

from __future__ import annotations

import random

import pytest

from media.errors import PortsExhausted
from media.ports import PortAllocator


def test_pairs_are_even_and_in_range() -> None:
    alloc = PortAllocator(20000, 29999, random.Random(1))
    assert alloc.capacity == 5000
    ports = [alloc.allocate() for _ in range(alloc.capacity)]
    assert len(set(ports)) == 5000
    assert all(p % 2 == 0 and p >= 20000 and p + 1 <= 29999 for p in ports)
    assert alloc.free == 0 and alloc.in_use == 5000


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (20001, 20006, [20002, 20004]),
        (20000, 20005, [20000, 20002, 20004]),
        (20000, 20001, [20000]),
    ],
    ids=["odd low", "odd high", "one pair"],
)
def test_range_edges(low: int, high: int, expected: list[int]) -> None:
    alloc = PortAllocator(low, high, random.Random(1))
    assert sorted(alloc.allocate() for _ in range(alloc.capacity)) == expected


@pytest.mark.parametrize(("low", "high"), [(0, 10), (20000, 19999), (20001, 20002), (20000, 70000)])
def test_bad_ranges(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortAllocator(low, high)


def test_exhaustion_is_refused_cleanly() -> None:
    alloc = PortAllocator(30000, 30005, random.Random(1))
    taken = [alloc.allocate() for _ in range(3)]
    with pytest.raises(PortsExhausted) as info:
        alloc.allocate()
    assert info.value.status == 503
    assert "30000-30005" in info.value.reason
    assert alloc.free == 0  # the failed attempt took nothing
    assert alloc.release(taken[1])
    assert alloc.allocate() == taken[1]


def test_release_is_idempotent_and_ignores_strangers() -> None:
    alloc = PortAllocator(30000, 30009, random.Random(1))
    port = alloc.allocate()
    assert alloc.is_allocated(port)
    assert alloc.release(port) is True
    assert alloc.release(port) is False  # double release: no duplicate in the pool
    assert not alloc.is_allocated(port)
    for stranger in (port + 1, 29998, 30010, 40000, -2):
        assert alloc.release(stranger) is False
        assert not alloc.is_allocated(stranger)
    assert alloc.free == alloc.capacity
    assert len({alloc.allocate() for _ in range(alloc.capacity)}) == alloc.capacity


def test_released_ports_are_reused_last() -> None:
    alloc = PortAllocator(30000, 30099, random.Random(1))
    first = alloc.allocate()
    alloc.release(first)
    following = [alloc.allocate() for _ in range(alloc.capacity - 1)]
    assert first not in following
    assert alloc.allocate() == first


def test_start_is_randomised_by_the_rng() -> None:
    one = PortAllocator(30000, 39999, random.Random(1))
    two = PortAllocator(30000, 39999, random.Random(2))
    a = [one.allocate() for _ in range(20)]
    b = [two.allocate() for _ in range(20)]
    assert a != b and a != sorted(a)
