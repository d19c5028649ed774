"""Re-originating RTP: one outgoing stream built from incoming packets (RFC 3550 §7.2).

The WebRTC bridge does not relay packets as they are: it takes the payload out of each one
(:func:`payload_offset`, :func:`payload_end`) and sends it under a header of its own
(:func:`rtp_header`) with its own SSRC and the payload type the other side negotiated, as an
RTP translator would. :class:`RtpRewriter` numbers that stream: sequence numbers and
timestamps continue across a change of input SSRC, keep the input's gaps and reordering, and
make room for packets the bridge originates itself (RFC 4733 DTMF).

Header layout: see :mod:`media.rtp`.
"""

from __future__ import annotations

import struct

from media.g711 import SAMPLES_PER_PACKET
from media.rtp import RTP_HEADER_LEN

_RTP_HEADER = struct.Struct("!BBHII")


def rtp_header(marker: int, pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    """A 12-octet version-2 RTP header: no padding, extension or CSRCs."""
    return _RTP_HEADER.pack(0x80, (marker << 7) | pt, seq, ts, ssrc)


def payload_offset(data: bytes) -> int:
    """Where the RTP payload starts (after CSRCs and the header extension), or -1."""
    n = len(data)
    offset = RTP_HEADER_LEN + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if n < offset + 4:
            return -1
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return offset if offset <= n else -1


def payload_end(data: bytes) -> int:
    """RFC 3550 §5.1: with P set, the last octet counts the padding."""
    if data[0] & 0x20:
        return len(data) - data[-1]
    return len(data)


class RtpRewriter:
    """One outgoing RTP stream built from incoming ones (RFC 3550 §7.2, like a translator).

    Output SSRC is fixed; each new input SSRC gets offsets that continue the output numbering,
    so the receiver sees one stream. Within an input stream, gaps and reordering are kept.
    The first packet of a new input SSRC lands one G.711 packet (20 ms) after the last one.
    """

    __slots__ = ("in_ssrc", "last_seq", "last_ts", "seq_off", "ssrc", "started", "ts_off")

    def __init__(self, ssrc: int, seq: int, ts: int) -> None:
        self.ssrc = ssrc
        self.in_ssrc = -1
        self.seq_off = 0
        self.ts_off = 0
        self.last_seq = (seq - 1) & 0xFFFF
        self.last_ts = (ts - SAMPLES_PER_PACKET) & 0xFFFFFFFF
        self.started = False

    def map(self, in_ssrc: int, seq: int, ts: int) -> tuple[int, int]:
        """The output sequence number and timestamp of an input packet."""
        if in_ssrc != self.in_ssrc:
            self.in_ssrc = in_ssrc
            self.seq_off = (self.last_seq + 1 - seq) & 0xFFFF
            self.ts_off = (self.last_ts + SAMPLES_PER_PACKET - ts) & 0xFFFFFFFF
        out_seq = (seq + self.seq_off) & 0xFFFF
        out_ts = (ts + self.ts_off) & 0xFFFFFFFF
        if not self.started or 0 < ((out_seq - self.last_seq) & 0xFFFF) < 0x8000:
            self.started = True
            self.last_seq = out_seq
            self.last_ts = out_ts
        return out_seq, out_ts

    def insert(self) -> int:
        """A sequence number for a packet we originate (DTMF); later input shifts past it."""
        self.seq_off = (self.seq_off + 1) & 0xFFFF
        self.last_seq = (self.last_seq + 1) & 0xFFFF
        self.started = True
        return self.last_seq

    def next_ts(self) -> int:
        """The timestamp one packet after the last one sent: where an event we originate starts."""
        return (self.last_ts + SAMPLES_PER_PACKET) & 0xFFFFFFFF
