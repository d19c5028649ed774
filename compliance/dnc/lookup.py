"""One DNC list in memory: its keys as a sorted array of doubles, and membership lookups.

- **Keys.** A number is stored as one IEEE-754 double: a NANP number (``+1`` and ten digits) as
  its ten-digit national number, any other E.164 number as its digits plus ``1e15``, so the two
  ranges never meet. Every key is an integer below 2**53 and therefore exact as a double.
- **Why doubles, not uint64.** The lists are sorted ``array('d')`` searched with ``bisect``:
  8 bytes a number (80 MB for 10 million), no per-number object. CPython sorts a list of floats
  with a specialised comparison that is about twice as fast as its sort of 34-bit ints, and
  ``bisect`` on floats draws its temporaries from the float free list, so a lookup does not reach
  the allocator. Import is dominated by that sort, so the choice is what keeps it above 1M/s.
- **Staleness.** A list older than its ``max_age_days`` (31 for registry copies) makes the gate
  fail closed for the campaigns that require it (FTC safe harbour, 16 CFR 310.4(b)(3)(iv)).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from itertools import compress, islice, repeat
from operator import ne
from typing import Final

from compliance.errors import InvalidDncListName, InvalidStateError

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "DncList",
    "check_name",
    "dnc_key",
    "key_to_e164",
    "sorted_unique",
]

DEFAULT_MAX_AGE_DAYS: Final = 31  # 16 CFR 310.4(b)(3)(iv)
_INTL_OFFSET: Final = 1e15  # keys of non-NANP numbers: digits + 1e15 (< 2**53)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_DIR_MIN: Final = 1 << 14  # smaller lists fit in cache; plain bisect is as fast
_DIR_LO: Final = 2_000_000_000.0  # NANP keys: NPA 200..999
_DIR_SPAN: Final = 8_000_000_000
_DIR_STEP: Final = 4096  # directory slots built per C call (~5 ms on a 10M list)


def dnc_key(e164: str) -> float:
    """The lookup key of an E.164 number, or -1.0 when ``e164`` is not one (never listed)."""
    if len(e164) == 12 and e164.startswith("+1"):
        d = e164[2:]
        if d.isdigit() and d.isascii():
            return float(d)
        return -1.0
    d = e164[1:]
    if e164.startswith("+") and 0 < len(d) <= 15 and d.isdigit() and d.isascii():
        return float(d) + _INTL_OFFSET
    return -1.0


def key_to_e164(key: float) -> str:
    """The E.164 number of a key (the inverse of ``dnc_key``)."""
    if key >= _INTL_OFFSET:
        return f"+{int(key - _INTL_OFFSET)}"
    return f"+1{int(key):010d}"


def check_name(name: str) -> str:
    """``name`` if it is a valid list name; list names are also file names on disk.

    Raises:
        InvalidDncListName: not 1-64 of ``[A-Za-z0-9_.-]``, or starting with ``.`` or ``-``.
    """
    if not _NAME.match(name):
        raise InvalidDncListName(f"DNC list name {name!r} must match {_NAME.pattern}")
    return name


def sorted_unique(keys: Iterable[float]) -> array[float]:
    """Sort and drop duplicates; timsort merges an already-sorted prefix cheaply (merges)."""
    ordered = sorted(keys)
    out = array("d", ordered[:1])
    # Keep element i+1 when it differs from element i: C-level iteration over the list (its
    # floats already exist), no Python loop and no intermediate array.
    out.extend(compress(islice(ordered, 1, None), map(ne, islice(ordered, 1, None), ordered)))
    return out


class DncList:
    """One named list: sorted unique keys plus where they came from and when.

    ``max_age_days`` is how old the data may get before campaigns that require the list fail
    closed (31 for registry copies; None for internal opt-out lists that never go stale).

    Lists of ``_DIR_MIN`` keys or more get a directory over the NANP key range: bucket ``b``
    (of about eight keys) starts at ``_dir[b]``, so a lookup reads two adjacent directory slots
    and bisects one cache line instead of bisecting 80 MB (23 probes, most of them cache and
    TLB misses). It costs 4 bytes per 8 numbers (0.5 MB per million).
    """

    __slots__ = (
        "_dir",
        "_keys",
        "_loaded_at",
        "_max_age_days",
        "_nb",
        "_stale_after",
        "_tombstones",
        "_width",
        "name",
        "source",
    )

    def __init__(
        self,
        name: str,
        *,
        source: str,
        loaded_at: datetime,
        keys: array[float] | None = None,
        max_age_days: int | None = DEFAULT_MAX_AGE_DAYS,
    ) -> None:
        if loaded_at.tzinfo is None:
            raise InvalidStateError("DncList.loaded_at must be an aware datetime")
        self.name = check_name(name)
        self.source = source
        self._loaded_at = loaded_at
        self._max_age_days = max_age_days
        self._stale_after: datetime | None = None
        self._update_stale_after()
        self._keys: array[float] = keys if keys is not None else array("d")
        self._tombstones = 0
        self._dir: array[int] | None = None
        self._width = 1
        self._nb = 0
        self._build_directory()

    def _build_directory(self) -> None:
        keys = self._keys
        n = len(keys)
        if n < _DIR_MIN:
            self._dir = None
            return
        width = max(1, _DIR_SPAN * 8 // n)  # about eight keys a bucket
        nb = _DIR_SPAN // width + 2
        lo = int(_DIR_LO)
        # One bisect per bucket boundary, in C: map over a range of boundaries. In slices of
        # _DIR_STEP, because a C loop never lets go of the GIL: a list built in a worker thread
        # (a reload, dce/sync.py) would otherwise stall the event loop for the whole build
        # (1.6 s for 10 million numbers); between slices the loop gets its turn. Each slice's
        # bisects are confined to the keys between its first and last boundary, which stay
        # in cache: that halves the build time.
        d = array("I" if n < 1 << 32 else "Q")
        end = lo + nb * width
        first = 0
        for start in range(lo, end, _DIR_STEP * width):
            stop = min(end, start + _DIR_STEP * width)
            last = bisect_left(keys, float(stop), first)
            bounds = map(float, range(start, stop, width))
            d.extend(map(bisect_left, repeat(keys), bounds, repeat(first), repeat(last)))
            first = last
        self._dir = d
        self._width = width
        self._nb = nb - 1

    def __len__(self) -> int:
        return len(self._keys) - self._tombstones

    def __contains__(self, key: float) -> bool:
        """Is ``key`` (from ``dnc_key``) on the list? No Python object outlives the call."""
        keys = self._keys
        d = self._dir
        if d is not None and key >= _DIR_LO:
            b = int(key - _DIR_LO) // self._width
            if b < self._nb:
                hi = d[b + 1]
                i = bisect_left(keys, key, d[b], hi)
                return i != hi and keys[i] == key
        i = bisect_left(keys, key)
        return i != len(keys) and keys[i] == key

    def contains(self, e164: str) -> bool:
        """Is this E.164 number on the list?"""
        return dnc_key(e164) in self

    def discard(self, key: float) -> bool:
        """Remove one key in place; True if it was there.

        The slot keeps its predecessor's value (a duplicate, or -2.0 at the front), so the
        array stays sorted and the directory stays right without a rebuild; ``save`` compacts.
        """
        keys = self._keys
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return False
        keys[i] = keys[i - 1] if i > 0 else -2.0
        self._tombstones += 1
        return True

    def live_keys(self) -> array[float]:
        """The sorted unique keys without removal tombstones (shared when there are none)."""
        keys = self._keys
        if not self._tombstones:
            return keys
        out = array("d")
        prev = -1.0
        for k in keys:
            if k > prev:
                out.append(k)
                prev = k
        return out

    @property
    def loaded_at(self) -> datetime:
        """When the data was pulled from its source (aware)."""
        return self._loaded_at

    @loaded_at.setter
    def loaded_at(self, value: datetime) -> None:
        if value.tzinfo is None:
            raise InvalidStateError("DncList.loaded_at must be an aware datetime")
        self._loaded_at = value
        self._update_stale_after()

    @property
    def max_age_days(self) -> int | None:
        """Days after ``loaded_at`` that the list may be used; None: never stale."""
        return self._max_age_days

    @max_age_days.setter
    def max_age_days(self, value: int | None) -> None:
        self._max_age_days = value
        self._update_stale_after()

    def _update_stale_after(self) -> None:
        # Precomputed so the per-call check is one comparison, no timedelta arithmetic.
        days = self._max_age_days
        self._stale_after = None if days is None else self._loaded_at + timedelta(days=days)

    def is_stale(self, now: datetime) -> bool:
        """Older than ``max_age_days`` at ``now`` (FTC safe harbour: 31 days)."""
        after = self._stale_after
        return after is not None and now > after

    def numbers(self) -> Iterator[str]:
        """Every number on the list as E.164, in key order (exports, tests)."""
        return map(key_to_e164, self.live_keys())

    @property
    def nbytes(self) -> int:
        """Bytes held by the key array and its directory."""
        d = self._dir
        extra = d.itemsize * len(d) if d is not None else 0
        return self._keys.itemsize * len(self._keys) + extra

    def __repr__(self) -> str:
        return (
            f"DncList({self.name!r}, source={self.source!r}, "
            f"loaded_at={self.loaded_at.isoformat()}, numbers={len(self)})"
        )
