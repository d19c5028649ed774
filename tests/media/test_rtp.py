"""RTP/RTCP header checks and sequence arithmetic (media/rtp.py)."""

from __future__ import annotations

import struct

import pytest

from media import rtp
from media.rtp import SeqStats


def rtp_packet(
    seq: int = 1, pt: int = 0, marker: bool = False, ts: int = 160, ssrc: int = 7
) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + bytes(160)


def rtcp_packet(packet_type: int) -> bytes:
    return struct.pack("!BBHI", 0x80, packet_type, 1, 7)


CLASSIFY = {
    "empty": (b"", rtp.KIND_INVALID),
    "7 bytes": (b"\x80" * 7, rtp.KIND_INVALID),
    "version 0": (b"\x00" * 12, rtp.KIND_INVALID),
    "version 1": (b"\x40" + b"\x00" * 11, rtp.KIND_INVALID),
    "version 3": (b"\xc0" + b"\x00" * 11, rtp.KIND_INVALID),
    "STUN-like": (b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12), rtp.KIND_INVALID),
    "DTLS-like": (b"\x16\xfe\xfd" + bytes(20), rtp.KIND_INVALID),
    "PCMU": (rtp_packet(pt=0), rtp.KIND_RTP),
    "PCMA": (rtp_packet(pt=8), rtp.KIND_RTP),
    "telephone-event with marker": (rtp_packet(pt=101, marker=True), rtp.KIND_RTP),
    "RTP 11 bytes": (rtp_packet()[:11], rtp.KIND_INVALID),
    "SR 200": (rtcp_packet(200), rtp.KIND_RTCP),
    "RR 201": (rtcp_packet(201), rtp.KIND_RTCP),
    "SDES 202": (rtcp_packet(202), rtp.KIND_RTCP),
    "BYE 203": (rtcp_packet(203), rtp.KIND_RTCP),
    "APP 204": (rtcp_packet(204), rtp.KIND_RTCP),
    "RTPFB 205": (rtcp_packet(205), rtp.KIND_RTCP),
    "XR 207": (rtcp_packet(207), rtp.KIND_RTCP),
    "PT 127 with marker is RTP": (rtp_packet(pt=127, marker=True), rtp.KIND_RTP),
}


@pytest.mark.parametrize(("data", "kind"), CLASSIFY.values(), ids=CLASSIFY.keys())
def test_classify(data: bytes, kind: int) -> None:
    assert rtp.classify(data) == kind


def test_header_fields() -> None:
    pkt = rtp_packet(seq=65535, pt=101, marker=True, ts=0xDEADBEEF, ssrc=0x01020304)
    assert rtp.sequence_number(pkt) == 65535
    assert rtp.payload_type(pkt) == 101
    assert rtp.marker(pkt) is True
    assert rtp.timestamp_ssrc(pkt) == (0xDEADBEEF, 0x01020304)
    assert rtp.is_rtcp(rtcp_packet(200)) and not rtp.is_rtcp(pkt) and not rtp.is_rtcp(b"")


@pytest.mark.parametrize(
    ("a", "b", "diff", "gt"),
    [
        (1, 0, 1, True),
        (0, 65535, 1, True),
        (65535, 0, -1, False),
        (5, 5, 0, False),
        (40000, 7000, -32536, False),
    ],
)
def test_uint16(a: int, b: int, diff: int, gt: bool) -> None:
    assert rtp.uint16_diff(a, b) == diff
    assert rtp.uint16_gt(a, b) is gt
    assert rtp.uint16_add(b, diff) == a


def feed(stats: SeqStats, seqs: list[int]) -> SeqStats:
    for s in seqs:
        stats.update(s)
    return stats


SEQUENCES = {
    "in order": ([10, 11, 12, 13], 4, 0),
    "one gap": ([10, 11, 13, 14], 5, 1),
    "wrap": ([65533, 65534, 65535, 0, 1], 5, 0),
    "gap across wrap": ([65534, 65535, 2, 3], 6, 2),
    "reordered": ([10, 12, 11, 13], 4, 0),
    "duplicate": ([10, 11, 11, 12], 3, 0),  # duplicates never make loss negative
    "restart": ([10, 11, 12, 40000, 40001], 5, 0),  # new SSRC/sender restart, not 39987 lost
    "late packet far back": ([1000, 1001, 990], 2, 0),
}


@pytest.mark.parametrize(("seqs", "expected", "lost"), SEQUENCES.values(), ids=SEQUENCES.keys())
def test_seq_stats(seqs: list[int], expected: int, lost: int) -> None:
    stats = feed(SeqStats(), seqs)
    assert stats.expected == expected
    assert stats.lost == lost
    assert stats.received == len(seqs) - (stats.prior_received)


def test_seq_stats_long_run_with_wraps() -> None:
    stats = SeqStats()
    seq = 60000
    for i in range(200000):
        if i % 100 != 50:  # lose 1 %
            stats.update(seq)
        seq = (seq + 1) & 0xFFFF
    assert stats.expected == 200000 - 0  # first..last inclusive
    assert stats.lost == 2000
    assert stats.cycles == 3 * 65536


def test_seq_stats_empty() -> None:
    assert SeqStats().expected == 0 and SeqStats().lost == 0
