"""Errors of the compliance package.

A call the gate turns away is an outcome, not an error: ``Gate.check`` returns a ``Verdict`` and
the STIR/SHAKEN verifier a ``StirResult`` with a reason (STYLE.md "Errors"). These classes cover
what the admin API and CLI must report (a bad calling-hours window, a DNC list that does not
exist, an unreadable persisted list or trust store) and our own bugs. ``status`` is what an HTTP
edge should answer.
"""

from __future__ import annotations


class ComplianceError(Exception):
    """Base of the compliance package's errors."""

    status = 500


class InvalidWindow(ComplianceError, ValueError):
    """A calling-hours window is not ``HH:MM-HH:MM`` (configuration, 422)."""

    status = 422


class InvalidDncListName(ComplianceError, ValueError):
    """A DNC list name that cannot be a file name (``[A-Za-z0-9_.-]``, 1-64 chars)."""

    status = 422


class DncListNotFound(ComplianceError, KeyError):
    """No DNC list by that name is loaded (404)."""

    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"DNC list {name!r} is not loaded")
        self.name = name

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class DncStoreCorrupt(ComplianceError):
    """A persisted DNC list does not match its metadata (size, checksum or format)."""

    status = 500


class TrustStoreError(ComplianceError):
    """The STIR/SHAKEN trust store folder cannot be read."""

    status = 500


class ConsentInvalid(ComplianceError, ValueError):
    """A consent record that cannot be stored (unparseable caller, revoked before granted)."""

    status = 422


class InvalidStateError(ComplianceError):
    """A bug in our own code, e.g. a naive ``datetime`` handed to the gate."""
