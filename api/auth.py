"""Who is calling: bearer-token authentication (RFC 6750) and buyer ownership.

The admin token is compared as SHA-256 digests with ``hmac.compare_digest``, so neither its
content nor its length leaks through timing; any other token is taken as a buyer's API key and
looked up by its SHA-256 (``store.exchange.hash_api_key``; the store keeps only that hash). No
token: 401 with ``WWW-Authenticate: Bearer``.

Routes are ``Access.ADMIN`` (a buyer key gets 403), ``Access.BUYER`` (the admin, or a buyer key
on its own objects: another buyer's answer the same 404 as objects that do not exist, before
anything is read or changed) or ``Access.PUBLIC`` (the OpenAPI document).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from typing import Final

from aiohttp import web

from api.errors import NotFound, Unauthorized
from store.database import Store
from store.exchange import hash_api_key

__all__ = ["ADMIN", "PRINCIPAL", "Access", "Authenticator", "Principal", "require_own"]

_BEARER: Final = 'Bearer realm="dce"'


class Access(Enum):
    PUBLIC = "public"
    ADMIN = "admin"
    BUYER = "buyer"  # the admin, or a buyer key on its own objects


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: the admin (``buyer_id`` None) or one buyer."""

    buyer_id: str | None

    @property
    def admin(self) -> bool:
        return self.buyer_id is None


ADMIN: Final = Principal(None)
PRINCIPAL: Final = web.RequestKey("dce_principal", Principal)


class Authenticator:
    """Turns a request's ``Authorization`` header into a ``Principal``."""

    def __init__(self, admin_token: str, store: Store) -> None:
        if not admin_token:
            raise ValueError("the admin token must not be empty")
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest()
        self._store = store

    async def authenticate(self, request: web.Request) -> Principal:
        """The admin or the buyer whose key the request carries.

        Raises:
            Unauthorized: no bearer token, another scheme, or a token nobody has (401).
        """
        header = request.headers.get("Authorization")
        if not header:
            raise Unauthorized("a bearer token is required", headers={"WWW-Authenticate": _BEARER})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "expected Authorization: Bearer <token>",
                headers={"WWW-Authenticate": _BEARER + ', error="invalid_request"'},
            )
        digest = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(digest, self._admin_digest):
            return ADMIN
        buyer_id = await self._store.exchange.buyer_for_key(hash_api_key(token))
        if buyer_id is None:
            raise Unauthorized(
                "unknown token", headers={"WWW-Authenticate": _BEARER + ', error="invalid_token"'}
            )
        return Principal(buyer_id)


def require_own(request: web.Request, buyer_id: str) -> None:
    """A buyer key reaches only its own buyer: another's is 404, exactly as a missing one."""
    principal = request[PRINCIPAL]
    if not principal.admin and principal.buyer_id != buyer_id:
        raise NotFound(f"no buyer {buyer_id!r}")
