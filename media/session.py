"""Bypass media (DCE_MEDIA_MODE=bypass): the session whose SDP passes untouched.

Every media session has the same shape, the one the switch core asks for
(``switch.media_session.MediaSession``, matched structurally): ``b_offer``,
``dtmf_to_buyer``, ``new_attempt``, ``b_answered``, ``answered``, ``reoffer``, ``reanswer``
and ``close``. The other two kinds are the RTP relay (media/anchor.py) and the WebRTC bridge
(media/webrtc.py).
"""

from __future__ import annotations


class PassthroughSession:
    """DCE_MEDIA_MODE=bypass: signalling only, SDP passes untouched."""

    def __init__(self, a_offer: bytes) -> None:
        self._offer = a_offer

    @property
    def b_offer(self) -> bytes:
        return self._offer

    @property
    def dtmf_to_buyer(self) -> bool:
        return False  # SIP INFO DTMF is relayed to the buyer as it is

    def new_attempt(self) -> None:
        return None

    def b_answered(self, sdp: bytes) -> bytes:
        return sdp

    def answered(self) -> None:
        return None

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp

    def close(self) -> None:
        return None
