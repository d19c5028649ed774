"""SIP errors. Each peer-caused error carries the status the edge answers with (h11 style)."""

from __future__ import annotations


class SipError(Exception):
    """Base of every error in the SIP package."""

    status = 500


class SipParseError(SipError):
    """A peer sent a message we cannot parse.

    Requests get ``status`` (400) with ``reason``; responses are dropped.
    """

    status = 400

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class MessageTooLarge(SipParseError):
    """RFC 3261 §21.5.14: 513 Message Too Large."""

    status = 513

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 513)


class InvalidStateError(SipError):
    """Our own bug: a state machine was driven in a way it does not allow."""
