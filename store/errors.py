"""Errors of the store package: PostgreSQL, the CDR writer and the embedded server.

One base, ``StoreError``; ``status`` is what an HTTP edge should answer if one reaches it
(STYLE.md "Errors"). The admin API converts the ones it expects (``StoreConflict`` to 409,
``StoreNotFound`` to 404) into its own errors at its boundary.
"""

from __future__ import annotations

__all__ = [
    "CdrWriterError",
    "EmbeddedPostgresError",
    "StoreConflict",
    "StoreError",
    "StoreNotFound",
]


class StoreError(Exception):
    """A store operation failed for a reason the operator must fix (the message says which)."""

    status = 500


class StoreConflict(StoreError):
    """A write collides with stored data: a duplicate id or API key (the API answers 409)."""

    status = 409


class StoreNotFound(StoreError):
    """A write names a parent that does not exist, e.g. an endpoint of a missing buyer (404)."""

    status = 404


class CdrWriterError(StoreError):
    """The writer cannot start (its spool dir is unusable or owned by another writer)."""


class EmbeddedPostgresError(StoreError):
    """The embedded server could not be set up, started or stopped; the message says why."""

    status = 503
