"""G.711 µ-law and A-law (ITU-T G.711): byte tables that turn one law into the other.

The WebRTC bridge passes G.711 through untouched unless the buyer picks the other law than
the browser; then each payload goes through ``payload.translate(ULAW_TO_ALAW)`` (or the
reverse): one C loop per packet, no PCM in between. The tables are built once, at import,
from the reference companding functions below.
"""

from __future__ import annotations

#: 20 ms of G.711 at 8 kHz: the samples (and octets) in one packet, and its timestamp step.
SAMPLES_PER_PACKET = 160


def ulaw_to_linear(u: int) -> int:
    """A µ-law octet as a 16-bit linear sample."""
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def alaw_to_linear(a: int) -> int:
    """An A-law octet as a 16-bit linear sample."""
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def linear_to_alaw(pcm: int) -> int:
    """A 16-bit linear sample as an A-law octet."""
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    for seg, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        if pcm <= end:
            aval = seg << 4
            aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
            return aval ^ mask
    return 0x7F ^ mask


def linear_to_ulaw(pcm: int) -> int:
    """A 16-bit linear sample as a µ-law octet."""
    pcm >>= 2
    if pcm < 0:
        pcm = -pcm
        mask = 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    for seg, end in enumerate((0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)):
        if pcm <= end:
            return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


#: ``payload.translate(ULAW_TO_ALAW)``: one C loop per packet, no PCM in between.
ULAW_TO_ALAW = bytes(linear_to_alaw(ulaw_to_linear(u)) for u in range(256))
ALAW_TO_ULAW = bytes(linear_to_ulaw(alaw_to_linear(a)) for a in range(256))
