"""Keyset pagination: ``limit`` and an opaque ``cursor`` (``next_cursor`` of the last page).

A cursor is base64url (unpadded) of the JSON of the last row's sort key, so the next page
starts strictly after it and rows written meanwhile neither repeat nor go missing. The key is
the resource's: ``[received_at, call_id]`` for CDRs, the id for consent records.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, TypeVar

import msgspec

from api.errors import Invalid
from api.routes import STR, Param
from api.validation import int_param

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "PAGING",
    "decode_key",
    "encode_key",
    "not_ours",
    "page_limit",
]

_NOT_OURS_RULE: Final = "a next_cursor this API returned"
MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 100
PAGING: Final = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
          f"page size ({DEFAULT_PAGE})"),
    Param("cursor", STR, "next_cursor of the previous page", checked=_NOT_OURS_RULE),
)  # fmt: skip

_T = TypeVar("_T")
_ENCODER = msgspec.json.Encoder()
_NOT_OURS: Final = "not a cursor this API returned"


def page_limit(q: dict[str, str]) -> int:
    """The ``limit`` parameter: 1 to MAX_PAGE, DEFAULT_PAGE when absent."""
    return int_param(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE)


def encode_key(key: Any) -> str:
    """The cursor after a row whose sort key is ``key``."""
    return base64.urlsafe_b64encode(_ENCODER.encode(key)).rstrip(b"=").decode()


def decode_key(text: str, decoder: msgspec.json.Decoder[_T]) -> _T:
    """The sort key in a cursor; 422 (field ``cursor``) for anything this API did not write."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Invalid("cursor", _NOT_OURS) from exc
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise Invalid("cursor", _NOT_OURS) from exc


def not_ours() -> Invalid:
    """The 422 for a cursor that decodes but holds no key of ours."""
    return Invalid("cursor", _NOT_OURS)
