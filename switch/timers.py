"""SIP transaction timer values (RFC 3261 §17 and its Table 4 in Appendix A; RFC 6026).

Timers are plain data: :class:`TimerConfig` holds T1, T2 and T4 and derives every lettered
timer from them. The transaction layer turns these durations into absolute deadlines
(``timer_b_at = now + config.timer_b``); nothing here reads a clock.

=======  ====================  ==============  ======================================
Timer    UDP                   reliable        Meaning
=======  ====================  ==============  ======================================
A        T1, doubling          not started     INVITE request retransmit (§17.1.1.2)
B        64*T1                 64*T1           INVITE transaction timeout
D        max(32 s, 64*T1)      0               absorb retransmitted non-2xx finals
E        T1, doubling to T2    not started     non-INVITE request retransmit (§17.1.2.2)
F        64*T1                 64*T1           non-INVITE transaction timeout
G        T1, doubling to T2    not started     INVITE final response retransmit (§17.2.1)
H        64*T1                 64*T1           wait for the ACK to a non-2xx final
I        T4                    0               absorb ACK retransmissions
J        64*T1                 0               absorb non-INVITE request retransmits (§17.2.2)
K        T4                    0               absorb non-INVITE response retransmits
L        64*T1                 64*T1           RFC 6026: server INVITE leaves Accepted
M        64*T1                 64*T1           RFC 6026: client INVITE leaves Accepted
=======  ====================  ==============  ======================================

Timer D is "at least 32 s" for UDP because it must outlast the peer's Timer H (64*T1); with the
default T1 both are 32 s.
"""

from __future__ import annotations

import msgspec


class TimerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """T1 (RTT estimate), T2 (retransmit cap) and T4 (network lifetime), in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        if not self.t1 > 0:
            raise ValueError(f"T1 {self.t1} must be > 0")
        if not self.t2 >= self.t1:
            raise ValueError(f"T2 {self.t2} must be >= T1 {self.t1}")
        if not self.t4 >= 0:
            raise ValueError(f"T4 {self.t4} must be >= 0")

    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout (§17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout (§17.1.2.2)."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """Wait for the ACK to a non-2xx final response (§17.2.1)."""
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        """RFC 6026: how long a server INVITE transaction stays Accepted."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """RFC 6026: how long a client INVITE transaction stays Accepted."""
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        """Client INVITE Completed: absorb retransmitted non-2xx finals (§17.1.1.2)."""
        return 0.0 if reliable else max(32.0, 64 * self.t1)

    def timer_i(self, reliable: bool) -> float:
        """Server INVITE Confirmed: absorb ACK retransmissions (§17.2.1)."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Server non-INVITE Completed: absorb request retransmissions (§17.2.2)."""
        return 0.0 if reliable else 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """Client non-INVITE Completed: absorb response retransmissions (§17.1.2.2)."""
        return 0.0 if reliable else self.t4
