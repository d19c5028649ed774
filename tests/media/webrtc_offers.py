"""A browser's WebRTC offer and the unusable variants of it that must get 488.

``data/chrome156_offer.sdp`` is Chrome 156's offer for one audio transceiver (ICE, DTLS,
BUNDLE, rtcp-mux; Opus first, PCMU/PCMA and telephone-event among its formats). Shared by the
SDP unit tests (tests/media/test_webrtc_sdp.py) and the in-process WebRTC calls
(tests/webrtc/test_media.py), which check that no port is taken for these offers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROME_OFFER = (Path(__file__).parent / "data" / "chrome156_offer.sdp").read_bytes()


def without(prefix: bytes, body: bytes = CHROME_OFFER) -> bytes:
    """``body`` without the lines that start with ``prefix``."""
    return b"".join(line for line in body.splitlines(keepends=True) if not line.startswith(prefix))


#: (offer, words the SdpError reason must contain), one per reason a browser offer is refused.
UNUSABLE_OFFERS = [
    pytest.param(without(b"a=fingerprint"), "fingerprint", id="no-fingerprint"),
    pytest.param(without(b"a=ice-pwd"), "ICE credentials", id="no-ice-pwd"),
    pytest.param(without(b"a=ice-ufrag"), "ICE credentials", id="no-ice-ufrag"),
    pytest.param(without(b"a=rtcp-mux"), "rtcp-mux", id="no-rtcp-mux"),
    pytest.param(
        CHROME_OFFER.replace(b"UDP/TLS/RTP/SAVPF", b"RTP/AVP"), "not DTLS-SRTP", id="plain-rtp"
    ),
    pytest.param(
        CHROME_OFFER.replace(b" 111 63 9 0 8 13 110 126", b" 111 63 110"),
        "PCMU/PCMA",
        id="opus-only",
    ),
    pytest.param(
        CHROME_OFFER.replace(b"m=audio 43341", b"m=audio 0"), "no live audio", id="audio-port-0"
    ),
    pytest.param(
        CHROME_OFFER.replace(b"a=setup:actpass", b"a=setup:holdconn"), "setup", id="holdconn"
    ),
    pytest.param(
        CHROME_OFFER.replace(b"a=ice-pwd:KuzSqARjvHQhfLT2b7FhZGyQ", b"a=ice-pwd:short"),
        "malformed ICE",
        id="short-ice-pwd",
    ),
    pytest.param(b"this is not SDP", "not <type>=<value>", id="garbage"),
    pytest.param(b"", "empty", id="empty"),
]
