"""The media side of one call, as the switch core sees it: SDP in, SDP out, no I/O.

The glue opens a session when the core asks (``OpenMedia``) and hands it back with
``SwitchCore.media_opened()``. From then on the core calls only these synchronous methods,
which transform SDP and update in-memory state; packets are never sent from here (DTMF toward
the buyer is the ``SendDtmf`` effect). media/ implements it three ways: bypass (SDP
untouched), the RTP relay and the WebRTC bridge.

``b_offer`` is what every buyer attempt is offered. ``b_answered`` takes a buyer's SDP answer
(from a 18x or the 200) and returns what the caller gets. ``reoffer``/``reanswer`` handle
re-INVITE/UPDATE in either direction; ``from_a`` is True when the caller's leg made the
offer. Each may raise the exception class named in ``CoreConfig.media_error`` (the glue
passes media.errors.MediaError; switch/ imports nothing from media/), carrying ``status``
(488, 503) and ``reason``, which the core answers with.
"""

from __future__ import annotations

from typing import Protocol


class MediaRefused(Exception):
    """A media refusal with the status the peer gets: the default ``CoreConfig.media_error``."""

    def __init__(self, reason: str, status: int = 488) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class MediaSession(Protocol):
    @property
    def b_offer(self) -> bytes: ...

    @property
    def dtmf_to_buyer(self) -> bool:
        """True when the core should turn the caller's SIP INFO DTMF into ``SendDtmf``."""
        ...

    def new_attempt(self) -> None:
        """A new buyer is about to be tried: forget what the previous one announced."""

    def b_answered(self, sdp: bytes) -> bytes:
        """The buyer's answer -> the caller's answer."""

    def answered(self) -> None:
        """The call was answered (200 relayed): media timeout accounting starts."""

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        """An offer in a re-INVITE/UPDATE from one leg -> the offer for the other leg."""

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        """The answer to it from the other leg -> the answer for the offering leg."""
