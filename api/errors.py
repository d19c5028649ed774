"""Errors of the admin API: each is an answer, ``{"error": ..., "detail": ...}`` with ``status``.

``ApiError`` is the base (h11's ``error_status_hint`` idea: the class says what the client sees).
Errors of the layers below (``ExchangeError``, ``ComplianceError``, ``StoreError``) are not
answers: the handlers convert the ones they expect (``raise NotFound(...) from exc``) and the
middleware answers any other exception with a logged 500.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


class ApiError(Exception):
    """An error answer: ``status``, a short ``error`` and a ``detail`` for the body."""

    status = 500
    error = "internal error"

    def __init__(
        self,
        detail: Any = None,
        *,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error or self.error)
        self.detail = detail
        if error is not None:
            self.error = error
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400
    error = "bad request"


class Unauthorized(ApiError):
    status = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status = 403
    error = "forbidden"


class NotFound(ApiError):
    status = 404
    error = "not found"


class Conflict(ApiError):
    status = 409
    error = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    error = "request body too large"


class UnsupportedMediaType(ApiError):
    status = 415
    error = "unsupported media type"


class Invalid(ApiError):
    """422: a well-formed request with a value that fails validation; names the field."""

    status = 422
    error = "validation failed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__({"field": field, "message": message})
        self.field = field


class Unavailable(ApiError):
    status = 503
    error = "unavailable"
