"""Media errors. Each peer- or load-caused error carries the SIP status the switch answers with.

Same shape as ``switch/errors.py`` (h11's ``error_status_hint``): the call logic catches
:class:`MediaError`, answers ``exc.status`` with ``exc.reason`` in the Reason/Warning header,
logs and counts it. :class:`InvalidStateError` is our own bug, never the peer's.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base of every error in the media package."""

    status = 500

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SdpError(MediaError):
    """An SDP body we cannot parse or anchor: the INVITE (or re-INVITE/UPDATE) gets 488.

    RFC 3261 §21.4.26: 488 Not Acceptable Here, with ``reason`` naming the offending line.
    """

    status = 488


class PortsExhausted(MediaError):
    """No free RTP/RTCP port pair in DCE_RTP_PORTS: the call gets 503 + Retry-After."""

    status = 503


class InvalidStateError(MediaError):
    """Our own bug: the relay or allocator was driven in a way it does not allow."""
