"""Re-originated RTP (media/rtp_rewrite.py): stream numbering, headers, payload bounds."""

from __future__ import annotations

import struct

import pytest

from media.rtp_rewrite import RtpRewriter, payload_end, payload_offset, rtp_header


def test_rewriter_keeps_one_stream_across_ssrc_changes() -> None:
    rw = RtpRewriter(ssrc=99, seq=1000, ts=5000)
    assert rw.map(1, 7, 100) == (1000, 5000)
    assert rw.map(1, 8, 260) == (1001, 5160)
    assert rw.map(1, 10, 580) == (1003, 5480)  # a gap stays a gap
    assert rw.map(1, 9, 420) == (1002, 5320)  # reordering stays reordering
    assert rw.insert() == 1004  # a DTMF packet we originate
    assert rw.map(1, 11, 740) == (1005, 5640)  # later input shifts past it
    assert rw.map(2, 60000, 9) == (1006, 5800)  # a new SSRC continues the numbering
    assert rw.map(2, 65535, 0)[0] == (1006 + 5535) & 0xFFFF


def test_an_event_we_originate_starts_one_packet_after_the_last() -> None:
    rw = RtpRewriter(ssrc=99, seq=1000, ts=5000)
    assert rw.next_ts() == 5000  # nothing sent yet: where the first packet would go
    rw.map(1, 7, 100)
    assert rw.next_ts() == 5160
    wrap = RtpRewriter(ssrc=99, seq=0, ts=0xFFFFFFFF)
    wrap.map(1, 7, 100)
    assert wrap.next_ts() == 159  # timestamps wrap at 2**32


def test_rtp_header_is_version_2_with_marker_and_payload_type() -> None:
    header = rtp_header(1, 101, 0xBEEF, 0xDEADBEEF, 42)
    assert header == struct.pack("!BBHII", 0x80, 0x80 | 101, 0xBEEF, 0xDEADBEEF, 42)
    assert rtp_header(0, 8, 1, 2, 3)[1] == 8


def packet(first: int, extra: bytes = b"", payload: bytes = b"\xd5" * 160) -> bytes:
    return bytes([first, 0]) + struct.pack("!HII", 1, 160, 7) + extra + payload


@pytest.mark.parametrize(
    ("data", "bounds"),
    [
        (packet(0x80), (12, 172)),
        (packet(0x82, b"\x00" * 8), (20, 180)),  # two CSRCs
        (packet(0x90, b"\xbe\xde\x00\x01" + b"\x00" * 4), (20, 180)),  # one-word extension
        (packet(0xA0, payload=b"\xd5" * 160 + b"\x00\x00\x03"), (12, 172)),  # 3 octets padding
        (packet(0x90, b"\xbe\xde", b""), (-1, 14)),  # extension header cut short
        (packet(0x8F, payload=b""), (-1, 12)),  # 15 CSRCs announced, none there
    ],
    ids=["plain", "csrc", "extension", "padding", "short-extension", "missing-csrc"],
)
def test_payload_bounds(data: bytes, bounds: tuple[int, int]) -> None:
    assert (payload_offset(data), payload_end(data)) == bounds
