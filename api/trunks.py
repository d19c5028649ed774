"""Trunks: the sellers, ``/trunks`` (admin only). A trunk's digest password is write-only."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from api.auth import Access
from api.bodies import full
from api.documents import Kind, crud_routes
from api.models import TrunkList
from api.routes import Route
from api.validation import check_trunk
from exchange.models import Trunk

__all__ = ["ROUTES", "TRUNKS"]


def _trunk_view(t: Trunk) -> dict[str, Any]:
    """A trunk as answered: the digest password is write-only (PUT must repeat it)."""
    out: dict[str, Any] = full(t)
    if out["password"] is not None:
        out["password"] = None
    return out


TRUNKS: Final = Kind(
    "trunk",
    "trunks",
    Trunk,
    msgspec.json.Decoder(Trunk),
    check_trunk,
    child=False,
    view=_trunk_view,
)
ROUTES: Final[tuple[Route, ...]] = tuple(crud_routes("/trunks", TRUNKS, Access.ADMIN, TrunkList))
