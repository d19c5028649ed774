"""Errors of the exchange package.

Expected outcomes (no eligible buyer, a cap is full, a bidder timed out) are return values, not
exceptions (STYLE.md "Errors"). These classes are for a configuration the exchange cannot run
(the admin API turns them into a 4xx naming the field) and for a shared store that is down.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of the exchange's errors; ``status`` is what an HTTP edge should answer."""

    status = 500


class ConfigInvalid(ExchangeError):
    """The exchange config cannot be compiled; ``field`` names the offending entry.

    ``field`` is a path such as ``buyers[2].profiles[0].timezone`` so that the admin API can put
    it in ``{"error": ..., "detail": ...}`` and the user can fix it.
    """

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CapsUnavailable(ExchangeError):
    """The shared cap store (Redis) did not answer; profiles with caps cannot be taken."""

    status = 503


class InvalidStateError(ExchangeError):
    """A bug in our own code: an internal invariant does not hold."""
