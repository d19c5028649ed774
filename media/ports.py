"""RTP/RTCP port pairs from DCE_RTP_PORTS: even port for RTP, the next odd one for RTCP.

RFC 3550 §11: RTP uses an even port and RTCP the next higher odd one; RFC 3605 lets SDP say
otherwise, but peers that ignore ``a=rtcp`` still find RTCP at RTP + 1, so the switch keeps the
classic layout on its own side.

O(1) both ways: free pairs sit in a FIFO (``collections.deque``) and a ``bytearray`` marks
which are in use, so :meth:`PortAllocator.release` is idempotent and a double release cannot
put a pair in the pool twice. The pool starts in random order (from the ``random.Random``
passed in, STYLE.md) and released pairs go to the back: a port is reused as late as possible,
so stray packets for a finished call rarely reach the next one, and ports are hard to guess.
"""

from __future__ import annotations

import random
from collections import deque

from media.errors import PortsExhausted


class PortAllocator:
    """Even/odd port pairs in ``low..high`` (inclusive). Not thread-safe; one per loop."""

    __slots__ = ("_first", "_free", "_in_use", "capacity", "high", "low")

    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad RTP port range {low}-{high}")
        self.low, self.high = low, high
        self._first = low + (low & 1)  # first even port
        ports = list(range(self._first, high, 2))  # p + 1 <= high for every p
        if not ports:
            raise ValueError(f"RTP port range {low}-{high} holds no even/odd pair")
        (rng or random.Random()).shuffle(ports)
        self.capacity = len(ports)
        self._free: deque[int] = deque(ports)
        self._in_use = bytearray(self.capacity)

    def allocate(self) -> int:
        """An even RTP port (RTCP is ``port + 1``).

        Raises:
            PortsExhausted: (status 503) every pair is in use.
        """
        if not self._free:
            raise PortsExhausted(
                f"all {self.capacity} RTP port pairs in {self.low}-{self.high} are in use"
            )
        port = self._free.popleft()
        self._in_use[(port - self._first) >> 1] = 1
        return port

    def release(self, port: int) -> bool:
        """Give ``port`` back; False (and nothing changes) if it was not allocated."""
        offset = port - self._first
        if offset < 0 or offset & 1 or port >= self.high:
            return False
        index = offset >> 1
        if not self._in_use[index]:
            return False
        self._in_use[index] = 0
        self._free.append(port)
        return True

    def is_allocated(self, port: int) -> bool:
        offset = port - self._first
        if offset < 0 or offset & 1 or port >= self.high:
            return False
        return bool(self._in_use[offset >> 1])

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)
