"""Trunk admission: who may send calls (SPEC.md "SIP", RFC 3261 §22, RFC 8760).

Theory of operation
-------------------
A trunk (a seller) is recognised by the packet's source address or by digest credentials.
:class:`Admission` is built once from the trunk list, whenever the list changes, and then
answers per request without allocating much:

* Source match: an exact-address ``dict`` first (the common case: a carrier's SBC), then
  the CIDRs, longest prefix first, as one ``dict`` per prefix length keyed by the masked
  address, so a lookup costs one probe per distinct prefix length. IPv4 and IPv6 have
  separate tables; an IPv4-mapped IPv6 peer (``::ffff:192.0.2.1`` from a dual-stack socket)
  is matched as the IPv4 address.
* Digest: a ``dict`` from user name to trunk feeds
  :meth:`~switch.auth.DigestAuthenticator.verify`.

:meth:`Admission.admit` decides, in this order (``text`` is the ``Reason`` the peer sees)::

    source address matches an active trunk       -> Admitted(via="source")
    no active trunk has digest credentials       -> Forbidden(text="unknown_source")
    the source is blocked (guard)                -> Forbidden(text="blocked")       unchecked
    no usable Digest credentials for our realm   -> Challenge(stale=False)   (401)
    the user name is blocked for this source     -> Forbidden(text="blocked")       unchecked
    credentials valid                            -> Admitted(via="digest")
    right digest, expired nonce                  -> Challenge(stale=True)    (401)
    nonce not ours (e.g. issued before a restart
    that changed the secret)                     -> Challenge(stale=False)
    unknown user or wrong password               -> Forbidden(text="auth_failed", failure=True)
    anything else (malformed, unsupported ...)   -> Forbidden(text=<the reason>, failure=True)

An unknown user name and a wrong password get the same answer, so a peer cannot tell which
user names exist (the reason for logs says which). ``failure=True`` marks refused
credentials: the caller reports them to the :class:`~switch.guard.AuthGuard` and logs them;
this module only reads the guard.

A UAC that answers a fresh challenge wrongly gets 403, so there is no challenge loop
(RFC 3261 §22.2: a UAC should not retry credentials that were just refused). Inactive
trunks are left out of every table: they never admit, by address or by password.
Configuration mistakes raise ``ValueError`` naming the trunk: a bad address or CIDR, a CIDR
with host bits set, a user name without password (or the reverse), and two active trunks
claiming the same address, network or user name, since that would pay the wrong seller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

import msgspec

from switch.auth import (
    AuthFailed,
    AuthFailure,
    AuthOk,
    AuthStale,
    DigestAuthenticator,
    DigestParseError,
    UnsupportedScheme,
    parse_authorization,
)
from switch.guard import AuthGuard

__all__ = ["Admission", "AdmissionResult", "Admitted", "Challenge", "Forbidden", "TrunkLike"]


class TrunkLike(Protocol):
    """What admission reads from a trunk; ``exchange.models.Trunk`` fits."""

    @property
    def id(self) -> str: ...
    @property
    def source_ips(self) -> Sequence[str]: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def active(self) -> bool: ...


T = TypeVar("T", bound=TrunkLike)


class Admitted(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """The request comes from ``trunk``; ``via`` says how it was recognised."""

    trunk: T
    via: Literal["source", "digest"]


class Challenge(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Answer 401 with one ``WWW-Authenticate`` field per value in ``headers``."""

    headers: tuple[str, ...]
    stale: bool


class Forbidden(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Answer 403 with ``text`` as the Reason; ``reason`` is for logs, not for the peer."""

    reason: str
    text: str
    failure: bool = False  # credentials were presented and refused: count and log them
    username: str | None = None  # the user name they named, when they could be read


AdmissionResult = Admitted[T] | Challenge | Forbidden

_BLOCKED_SOURCE = Forbidden(reason="source blocked", text="blocked")


def _public_text(reason: AuthFailure) -> str:
    """The Reason text a peer gets: one text for "no such user" and "wrong password"."""
    if reason in (AuthFailure.UNKNOWN_USER, AuthFailure.WRONG_RESPONSE):
        return "auth_failed"
    return reason.value.replace(" ", "_")


_IPV4_BITS = 32
_IPV6_BITS = 128


class _NetworkTable(Generic[T]):
    """Longest-prefix match over networks of one IP version."""

    __slots__ = ("_bits", "_by_prefix", "_ordered")

    def __init__(self, bits: int) -> None:
        self._bits = bits
        # prefix length -> {network address >> (bits - prefix): trunk}
        self._by_prefix: dict[int, dict[int, T]] = {}
        self._ordered: list[tuple[int, dict[int, T]]] = []

    def add(self, prefixlen: int, network: int, trunk: T, text: str) -> None:
        table = self._by_prefix.setdefault(prefixlen, {})
        key = network >> (self._bits - prefixlen)
        other = table.get(key)
        if other is not None and other is not trunk:
            raise ValueError(f"trunk {trunk.id!r}: network {text} is already trunk {other.id!r}'s")
        table[key] = trunk

    def freeze(self) -> None:
        # Longest prefix first, so the first hit is the most specific network.
        self._ordered = [
            (self._bits - plen, self._by_prefix[plen])
            for plen in sorted(self._by_prefix, reverse=True)
        ]

    def match(self, address: int) -> T | None:
        for shift, table in self._ordered:
            trunk = table.get(address >> shift)
            if trunk is not None:
                return trunk
        return None


class Admission(Generic[T]):
    """An index of the active trunks by source address and by digest user name.

    Raises:
        ValueError: on a configuration mistake, naming the trunk (see the module docstring).
    """

    def __init__(self, trunks: Iterable[T]) -> None:
        self._exact: dict[str, T] = {}
        self._v4: _NetworkTable[T] = _NetworkTable(_IPV4_BITS)
        self._v6: _NetworkTable[T] = _NetworkTable(_IPV6_BITS)
        self._users: dict[str, T] = {}
        for trunk in trunks:
            networks = [_parse_network(trunk, text) for text in trunk.source_ips]
            if (trunk.username is None) != (trunk.password is None):
                raise ValueError(f"trunk {trunk.id!r}: username and password go together")
            if trunk.username is not None and not trunk.username:
                raise ValueError(f"trunk {trunk.id!r}: username must not be empty")
            if not trunk.active:
                continue
            for text, network in zip(trunk.source_ips, networks, strict=True):
                self._add_network(trunk, text, network)
            if trunk.username is not None:
                other = self._users.get(trunk.username)
                if other is not None:
                    raise ValueError(
                        f"trunk {trunk.id!r}: username {trunk.username!r} is already "
                        f"trunk {other.id!r}'s"
                    )
                self._users[trunk.username] = trunk
        self._v4.freeze()
        self._v6.freeze()

    def _add_network(
        self, trunk: T, text: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ) -> None:
        if network.num_addresses == 1:
            # A host (bare address, /32 or /128) goes in the exact table, keyed by the
            # canonical text a socket reports, so the common case needs no parsing.
            key = str(network.network_address)
            other = self._exact.get(key)
            if other is not None and other is not trunk:
                raise ValueError(
                    f"trunk {trunk.id!r}: address {key} is already trunk {other.id!r}'s"
                )
            self._exact[key] = trunk
            return
        table = self._v4 if network.version == 4 else self._v6
        table.add(network.prefixlen, int(network.network_address), trunk, text)

    def match_source(self, ip: str) -> T | None:
        """The active trunk whose addresses contain ``ip``, most specific first; else ``None``.

        ``ip`` is the peer address as the transport reports it; anything unparseable matches
        nothing.
        """
        trunk = self._exact.get(ip)
        if trunk is not None:
            return trunk
        try:
            # Drop an IPv6 zone ("fe80::1%eth0"): configured networks carry none.
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return None
        if address.version == 6:
            mapped = address.ipv4_mapped
            if mapped is not None:
                address = mapped
        canonical = str(address)
        if canonical != ip:
            # Same address, other spelling (upper-case hex, leading zeros, mapped IPv4).
            trunk = self._exact.get(canonical)
            if trunk is not None:
                return trunk
        table = self._v4 if address.version == 4 else self._v6
        return table.match(int(address))

    def needs_digest(self) -> bool:
        """True when some active trunk has digest credentials, so challenging makes sense."""
        return bool(self._users)

    def trunk_for_user(self, username: str) -> T | None:
        """The active trunk with this digest user name (case-sensitive), else ``None``."""
        return self._users.get(username)

    def password_for(self, username: str) -> str | None:
        """The password of the active trunk with this user name; for ``verify``."""
        trunk = self._users.get(username)
        return None if trunk is None else trunk.password

    def admit(
        self,
        ip: str,
        authorization: str | None,
        method: str,
        now: float,
        auth: DigestAuthenticator,
        *,
        request_uri: str | None = None,
        guard: AuthGuard | None = None,
        by_source: bool = True,
    ) -> Admitted[T] | Challenge | Forbidden:
        """Decide whether a request from ``ip`` may place a call (table in the module docstring).

        Call it for requests outside a dialog (INVITE, OPTIONS ...). Never for ACK or CANCEL,
        which cannot be challenged (RFC 3261 §22.1: ACK and CANCEL are not resubmitted), nor
        for requests inside a dialog, which belong to a call already admitted.

        Args:
            ip: the peer's address as the transport reports it.
            authorization: the ``Authorization`` (or ``Proxy-Authorization``) value, if any.
            method: the request method, hashed into the digest.
            now: monotonic seconds, for nonce freshness and new nonces.
            auth: the authenticator whose realm and secret apply.
            request_uri: when given, digest credentials must be for this URI.
            guard: blocks to honour (read only: the caller reports outcomes to it).
            by_source: False for peers never admitted by address (browsers); ``ip`` still
                counts for the guard.
        """
        if by_source:
            trunk = self.match_source(ip)
            if trunk is not None:
                return Admitted(trunk=trunk, via="source")
        if not self._users:
            return Forbidden(reason="unknown source", text="unknown_source")
        if guard is not None and guard.source_blocked(ip, now):
            return _BLOCKED_SOURCE
        if authorization is None:
            return self._challenge(auth, now, stale=False)
        try:
            creds = parse_authorization(authorization)
        except UnsupportedScheme:
            # Basic or another scheme: we have not been answered in Digest yet.
            return self._challenge(auth, now, stale=False)
        except DigestParseError as exc:
            return Forbidden(reason=f"malformed credentials: {exc}",
                             text="malformed_credentials", failure=True)
        if creds.realm != auth.realm:
            # RFC 3261 §22.3: credentials for another realm are no credentials for ours.
            return self._challenge(auth, now, stale=False)
        if guard is not None and guard.user_blocked(creds.username, ip, now):
            return Forbidden(reason="user blocked", text="blocked", username=creds.username)
        result = auth.verify(creds, method, self.password_for, now, request_uri=request_uri)
        match result:
            case AuthOk(username=username):
                trunk = self._users.get(username)
                if trunk is None:  # pragma: no cover - password_for found it a moment ago
                    return Forbidden(reason=AuthFailure.UNKNOWN_USER.value, text="auth_failed",
                                     failure=True, username=username)
                return Admitted(trunk=trunk, via="digest")
            case AuthStale():
                return self._challenge(auth, now, stale=True)
            case AuthFailed(reason=AuthFailure.NONCE_NOT_OURS):
                return self._challenge(auth, now, stale=False)
            case AuthFailed(reason=reason):
                return Forbidden(reason=reason.value, text=_public_text(reason), failure=True,
                                 username=creds.username)

    @staticmethod
    def _challenge(auth: DigestAuthenticator, now: float, *, stale: bool) -> Challenge:
        return Challenge(headers=tuple(auth.challenge(now, stale=stale)), stale=stale)


def _parse_network(trunk: TrunkLike, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``text`` (an address or a CIDR) as a network, or a ValueError naming the trunk."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"trunk {trunk.id!r}: bad source address {text!r}: {exc}") from exc
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            # Configured as ::ffff:a.b.c.d(/n): store it as the IPv4 network it denotes,
            # since match_source() unmaps peers the same way.
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network
