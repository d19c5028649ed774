"""RTP/RTCP header checks and sequence-number arithmetic, without building packet objects.

The relay never parses a packet into an object: it reads the few header bits it needs straight
from the ``bytes`` asyncio hands it (indexing a ``bytes`` returns a cached small int; a
precompiled ``struct.Struct`` reads wider fields). RFC 3550 §5.1 fixed header::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           synchronization source (SSRC) identifier            |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+

RTCP (RFC 3550 §6.4) shares the version bits; its second octet is the packet type, 200 (SR)
to 204 (APP), plus 205/206 (RFC 4585 feedback) and 207 (RFC 3611 XR). RFC 5761 §4 reserves
the whole second-octet range 192-223 for RTCP so that RTP and RTCP can share one port
(``a=rtcp-mux``): that is the test :func:`is_rtcp` applies.

Sequence numbers are 16 bits and wrap (RFC 3550 appendix A.1). :class:`SeqStats` keeps the
extended highest sequence number and a received count, which is all appendix A.3 needs for
the cumulative loss estimate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_HEADER_LEN = 12
#: RFC 3550 §6.4.2: the smallest valid RTCP compound packet is an empty RR: 8 octets.
RTCP_MIN_LEN = 8
VERSION_MASK = 0xC0
VERSION_2 = 0x80
#: RFC 5761 §4: second octets 192-223 are RTCP packet types (RTP PT 64-95 with M set).
RTCP_TYPE_MIN = 192
RTCP_TYPE_MAX = 223
SEQ_MOD = 1 << 16
#: RFC 3550 appendix A.1: a forward jump beyond this is a restart, not loss.
MAX_DROPOUT = 3000
#: RFC 3550 appendix A.1: a backward step up to this is reordering, not a restart.
MAX_MISORDER = 100

KIND_INVALID = 0
KIND_RTP = 1
KIND_RTCP = 2

_SEQ = struct.Struct("!H")
_TS_SSRC = struct.Struct("!II")


def classify(data: bytes) -> int:
    """KIND_RTP, KIND_RTCP (RFC 5761 demultiplexing) or KIND_INVALID (short, not version 2)."""
    if len(data) < RTCP_MIN_LEN or data[0] & VERSION_MASK != VERSION_2:
        return KIND_INVALID
    if RTCP_TYPE_MIN <= data[1] <= RTCP_TYPE_MAX:
        return KIND_RTCP
    if len(data) < RTP_HEADER_LEN:
        return KIND_INVALID
    return KIND_RTP


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: a version-2 packet whose second octet is 192-223 is RTCP."""
    return len(data) >= 2 and RTCP_TYPE_MIN <= data[1] <= RTCP_TYPE_MAX


def sequence_number(data: bytes) -> int:
    """RTP sequence number (octets 2-3)."""
    seq: int = _SEQ.unpack_from(data, 2)[0]
    return seq


def payload_type(data: bytes) -> int:
    """RTP payload type (low 7 bits of octet 1)."""
    return data[1] & 0x7F


def marker(data: bytes) -> bool:
    """RTP marker bit (RFC 4733 §2.5.1.3 sets it on the first packet of an event)."""
    return bool(data[1] & 0x80)


def timestamp_ssrc(data: bytes) -> tuple[int, int]:
    """RTP timestamp and SSRC (octets 4-11)."""
    ts, ssrc = _TS_SSRC.unpack_from(data, 4)
    return int(ts), int(ssrc)


def uint16_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**16."""
    return (a + b) & 0xFFFF


def uint16_diff(a: int, b: int) -> int:
    """Signed distance from ``b`` to ``a`` across the wrap, in -32768..32767."""
    d = (a - b) & 0xFFFF
    return d - SEQ_MOD if d >= 0x8000 else d


def uint16_gt(a: int, b: int) -> bool:
    """``a`` is after ``b`` in sequence-number order (RFC 1982 serial arithmetic)."""
    return 0 < ((a - b) & 0xFFFF) < 0x8000


@dataclass(slots=True)
class SeqStats:
    """Received count and extended highest sequence number of one RTP stream.

    RFC 3550 appendix A.3: expected = extended max - base + 1, lost = expected - received.
    Cheap enough for every packet: a subtraction, a mask, two compares. A jump of more than
    MAX_DROPOUT forward or MAX_MISORDER back (a new SSRC after a re-INVITE, a restarted
    sender) starts a new run; earlier runs stay in the totals.
    """

    received: int = 0
    base: int = 0
    max_seq: int = -1  # -1: no packet yet
    cycles: int = 0
    prior_expected: int = 0
    prior_received: int = 0

    def update(self, seq: int) -> None:
        """Account one packet with sequence number ``seq``."""
        if self.max_seq < 0:
            self.base = self.max_seq = seq
        else:
            delta = (seq - self.max_seq) & 0xFFFF
            if delta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += SEQ_MOD  # wrapped past 65535
                self.max_seq = seq
            elif delta <= SEQ_MOD - MAX_MISORDER:
                self.restart(seq)
            # else: late or duplicate within MAX_MISORDER: counted, max unchanged
        self.received += 1

    def restart(self, seq: int) -> None:
        """Close the current run and start a new one at ``seq``."""
        self.prior_expected += self.cycles + self.max_seq - self.base + 1
        self.prior_received += self.received
        self.received = 0
        self.cycles = 0
        self.base = self.max_seq = seq

    @property
    def expected(self) -> int:
        """Packets the sequence numbers say were sent (all runs)."""
        if self.max_seq < 0:
            return self.prior_expected
        return self.prior_expected + self.cycles + self.max_seq - self.base + 1

    @property
    def lost(self) -> int:
        """Cumulative loss estimate; duplicates can make the raw figure negative: floor at 0."""
        return max(0, self.expected - self.prior_received - self.received)
