"""The media side of one call, as the switch core sees it.

The glue opens a session (async: sockets, or a WebRTC peer connection) while the call is being
routed; from then on the core only calls these synchronous methods, which transform SDP and
update in-memory state. Three kinds implement it: :class:`PassthroughSession` (DCE_MEDIA_MODE
=bypass: SDP untouched), the RTP relay (media/transport.py) and the WebRTC bridge
(media/webrtc.py).

``b_offer`` is what every buyer attempt is offered. ``b_answered`` takes a buyer's SDP answer
(from a 18x or the 200) and returns what the caller gets. ``reoffer``/``reanswer`` handle
re-INVITE/UPDATE in either direction. Each may raise :class:`media.errors.MediaError`, whose
``status`` (488, 503) the core answers with.
"""

from __future__ import annotations

from typing import Protocol


class MediaSession(Protocol):
    @property
    def b_offer(self) -> bytes: ...

    def new_attempt(self) -> None:
        """A new buyer is about to be tried: forget what the previous one announced."""

    def b_answered(self, sdp: bytes) -> bytes:
        """The buyer's answer -> the caller's answer."""

    def answered(self) -> None:
        """The call was answered (200 relayed): media timeout accounting starts."""

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        """An offer in a re-INVITE/UPDATE from one leg -> the offer for the other leg."""

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        """The answer to it from the other leg -> the answer for the offering leg.

        ``from_a`` is who made the offer.
        """

    def send_dtmf(self, digit: str, duration_ms: int) -> bool:
        """Send a DTMF digit toward the buyer as RFC 4733; False when this media cannot."""

    def close(self) -> None:
        """Free ports and sockets; idempotent."""


class PassthroughSession:
    """DCE_MEDIA_MODE=bypass: signalling only, SDP passes untouched."""

    def __init__(self, a_offer: bytes) -> None:
        self._offer = a_offer

    @property
    def b_offer(self) -> bytes:
        return self._offer

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

    def send_dtmf(self, digit: str, duration_ms: int) -> bool:
        return False

    def close(self) -> None:
        return None
