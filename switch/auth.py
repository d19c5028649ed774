"""SIP digest authentication, server side (RFC 3261 §22, RFC 8760, RFC 7616, RFC 2617).

Theory of operation
-------------------
The switch is the UAS for a trunk's A leg. A request from a source it does not recognise is
answered 401 with one ``WWW-Authenticate`` value per algorithm (:meth:`challenge`); the UAC
picks the first one it supports, so the strongest comes first (RFC 8760 §2.4: SHA-256, then
MD5 for old UAs). The retried request carries ``Authorization`` (or ``Proxy-Authorization``
after a 407: same syntax), which :func:`parse_authorization` turns into
:class:`DigestCredentials` and :meth:`DigestAuthenticator.verify` checks::

    HA1      = H(username ":" realm ":" password)              RFC 7616 §3.4.2
    HA1-sess = H(HA1 ":" nonce ":" cnonce)                     (the -sess algorithms)
    HA2      = H(method ":" digest-uri)                        RFC 7616 §3.4.3 (qop=auth)
    response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   qop=auth
    response = H(HA1 ":" nonce ":" HA2)                        RFC 2069, no qop (MD5 only)

``H`` is MD5 or SHA-256 and the result is lower-case hex. Strings are hashed as UTF-8.

Nonces are stateless and self-validating, so any worker holding the secret can check them
and nothing is stored per client::

    nonce = base64url( issued_at (8-byte IEEE double, monotonic seconds)
                       || HMAC-SHA256(secret, "dce-digest-nonce" || realm || issued_at)[:16] )

A nonce whose MAC does not verify was not issued by us (or was tampered with) and fails. A
nonce that verifies but is older than ``nonce_ttl`` (or dated in the future, i.e. from a
process whose monotonic clock had another origin) is *stale*: RFC 7616 §3.3 says to report
``stale=true`` only when the digest itself is right, so the UAC retries with the fresh nonce
without asking its user again; a wrong digest on an expired nonce is still a failure.

What is not done, on purpose:

* No nonce-count (``nc``) replay tracking. That needs per-nonce state, which the stateless
  design avoids; a captured ``Authorization`` can be replayed for the same method and URI
  until the nonce expires (``nonce_ttl``, 5 minutes by default). Passing ``request_uri`` to
  :meth:`DigestAuthenticator.verify` at least pins the replay to the original Request-URI.
* No ``qop=auth-int``, ``userhash`` (RFC 7616 §3.4.4) or ``username*`` (RFC 7616 §3.4.4 with
  RFC 5987); we never offer them, so a UAC that uses them is answered with a failure.
* No ``opaque``: it is optional in every digest RFC and carries nothing the nonce does not.

:class:`AuthFailed` reasons are for logs and metrics. The peer should get a plain 403 (or a
fresh challenge) and never learn whether the user name exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Final, Protocol

import msgspec

from switch.errors import SipParseError

__all__ = [
    "AuthFailed",
    "AuthFailure",
    "AuthOk",
    "AuthResult",
    "AuthStale",
    "DigestAuthenticator",
    "DigestCredentials",
    "DigestParseError",
    "UnsupportedScheme",
    "format_authorization",
    "parse_authorization",
]


class DigestParseError(SipParseError, ValueError):
    """A malformed ``Authorization``/``Proxy-Authorization`` value (the peer's fault): 400."""


class UnsupportedScheme(DigestParseError):
    """The credentials use a scheme other than Digest (e.g. Basic, forbidden by RFC 3261 §22.1)."""


class _Hash(Protocol):
    def hexdigest(self) -> str: ...


_HashFactory = Callable[[bytes], _Hash]

# Canonical algorithm name -> (hash, is it a -sess variant). Keys are upper case because
# algorithm tokens compare case-insensitively (RFC 7616 §3.3 "algorithm").
_ALGORITHMS: Final[dict[str, tuple[str, _HashFactory, bool]]] = {
    "MD5": ("MD5", hashlib.md5, False),
    "MD5-SESS": ("MD5-sess", hashlib.md5, True),
    "SHA-256": ("SHA-256", hashlib.sha256, False),
    "SHA-256-SESS": ("SHA-256-sess", hashlib.sha256, True),
}

_NONCE_LABEL: Final = b"dce-digest-nonce"
_NONCE_MAC_LEN: Final = 16
_NONCE_RAW_LEN: Final = 8 + _NONCE_MAC_LEN  # 24 bytes -> 32 base64 characters, no padding
# A nonce dated this far in the future came from a process with another monotonic origin.
_FUTURE_SLACK: Final = 1.0
_MIN_SECRET: Final = 16


class DigestCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """The parameters of a Digest ``Authorization`` value (RFC 7616 §3.4, RFC 3261 §25.1).

    Values are kept exactly as sent, because the response hash covers them byte for byte.
    ``algorithm`` defaults to ``"MD5"`` when the header omits it (RFC 7616 §3.3).
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False


class AuthFailure(StrEnum):
    """Why :meth:`DigestAuthenticator.verify` refused credentials (for logs, not the peer)."""

    UNKNOWN_USER = "unknown user"
    WRONG_RESPONSE = "wrong response"
    NONCE_NOT_OURS = "nonce not ours"
    REALM_MISMATCH = "realm mismatch"
    UNSUPPORTED_ALGORITHM = "unsupported algorithm"
    UNSUPPORTED_QOP = "unsupported qop"
    QOP_REQUIRED = "qop required"
    MISSING_CNONCE = "missing cnonce or nc"
    URI_MISMATCH = "uri mismatch"
    USERHASH_UNSUPPORTED = "userhash not supported"


class AuthOk(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The digest is right and the nonce is fresh."""

    username: str


class AuthStale(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The digest is right but the nonce expired: re-challenge with ``stale=true``."""

    username: str


class AuthFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The credentials were refused."""

    reason: AuthFailure


AuthResult = AuthOk | AuthStale | AuthFailed


class DigestAuthenticator:
    """Issues digest challenges and verifies the answers, with stateless nonces.

    Args:
        realm: the protection realm shown to UACs (RFC 3261 §22.1: usually the host name).
        secret: at least 16 random bytes for the nonce MAC. Share it between workers that
            must accept each other's nonces; a new secret invalidates every nonce out there.
        nonce_ttl: seconds a nonce stays fresh; older ones yield :class:`AuthStale`.
        algorithms: what to offer, most preferred first; the ``-sess`` variant of an offered
            algorithm is accepted too. Dropping ``"MD5"`` refuses MD5 answers as well.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        nonce_ttl: float = 300.0,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
    ) -> None:
        if not realm:
            raise ValueError("realm must not be empty")
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"secret has {len(secret)} bytes, need at least {_MIN_SECRET}")
        if not nonce_ttl > 0:
            raise ValueError(f"nonce_ttl must be positive, got {nonce_ttl}")
        if not algorithms:
            raise ValueError("at least one algorithm is required")
        offered: list[str] = []
        for name in algorithms:
            entry = _ALGORITHMS.get(name.upper())
            if entry is None:
                raise ValueError(f"unsupported digest algorithm {name!r}")
            offered.append(entry[0])
        self.realm: Final = realm
        self.nonce_ttl: Final = float(nonce_ttl)
        self.algorithms: Final[tuple[str, ...]] = tuple(offered)
        self._secret = bytes(secret)
        self._realm_bytes = realm.encode()
        accepted = {name.upper() for name in offered}
        accepted |= {f"{name}-SESS" for name in accepted if not name.endswith("-SESS")}
        self._accepted: frozenset[str] = frozenset(accepted)
        self._challenge_tail = f'realm={_quote(realm)}, nonce="'

    # -- challenges -----------------------------------------------------------------------

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """``WWW-Authenticate``/``Proxy-Authenticate`` values, one per algorithm, best first.

        RFC 8760 §2.4: a UAS offering several algorithms sends one header field per algorithm
        in order of preference; every value shares one nonce.
        """
        nonce = self.make_nonce(now)
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest {self._challenge_tail}{nonce}", qop="auth", algorithm={alg}{suffix}'
            for alg in self.algorithms
        ]

    def make_nonce(self, now: float) -> str:
        """A nonce dated ``now`` (monotonic seconds) and MACed with the secret."""
        stamp = struct.pack(">d", now)
        raw = stamp + self._mac(stamp)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def nonce_issued_at(self, nonce: str) -> float | None:
        """When we issued ``nonce``, or ``None`` if we did not (bad MAC, wrong shape)."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (UnicodeEncodeError, binascii.Error):
            return None
        # The decoder skips characters outside the alphabet; insist on our exact spelling so
        # one nonce has one string (the string is what the response hash covers).
        if len(raw) != _NONCE_RAW_LEN or base64.urlsafe_b64encode(raw) != nonce.encode():
            return None
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return None
        issued: float = struct.unpack(">d", stamp)[0]
        return issued if math.isfinite(issued) else None

    def _mac(self, stamp: bytes) -> bytes:
        # The realm is in the MAC so a nonce for one realm is useless in another sharing the
        # secret.
        msg = _NONCE_LABEL + self._realm_bytes + b"\x00" + stamp
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_NONCE_MAC_LEN]

    # -- verification ---------------------------------------------------------------------

    def verify(
        self,
        creds: DigestCredentials,
        method: str,
        password_lookup: Callable[[str], str | None],
        now: float,
        *,
        request_uri: str | None = None,
    ) -> AuthResult:
        """Check ``creds`` for a request with ``method`` (RFC 7616 §3.4, RFC 3261 §22.4).

        Args:
            creds: from :func:`parse_authorization`.
            method: the request method, as on the request line (it is hashed into HA2).
            password_lookup: the plaintext password for a user name, ``None`` if unknown.
            now: monotonic seconds, to judge the nonce's age.
            request_uri: when given, the ``uri`` parameter must equal it (RFC 7616 §3.4.6),
                which stops credentials being replayed against another Request-URI.

        Returns:
            :class:`AuthOk`, :class:`AuthStale` (right digest, expired nonce) or
            :class:`AuthFailed` with the reason.
        """
        if creds.realm != self.realm:
            return AuthFailed(reason=AuthFailure.REALM_MISMATCH)
        issued = self.nonce_issued_at(creds.nonce)
        if issued is None:
            return AuthFailed(reason=AuthFailure.NONCE_NOT_OURS)
        algorithm = creds.algorithm.upper()
        entry = _ALGORITHMS.get(algorithm)
        if entry is None or algorithm not in self._accepted:
            return AuthFailed(reason=AuthFailure.UNSUPPORTED_ALGORITHM)
        _, hash_factory, sess = entry
        if creds.userhash:
            return AuthFailed(reason=AuthFailure.USERHASH_UNSUPPORTED)
        if creds.qop is None:
            # RFC 2069 compatibility (RFC 2617 §3.2.2.1) exists for MD5 only; RFC 7616 and
            # RFC 8760 make qop mandatory, and -sess needs a cnonce.
            if algorithm != "MD5":
                return AuthFailed(reason=AuthFailure.QOP_REQUIRED)
        elif creds.qop.lower() != "auth":
            return AuthFailed(reason=AuthFailure.UNSUPPORTED_QOP)
        elif creds.nc is None or creds.cnonce is None:
            return AuthFailed(reason=AuthFailure.MISSING_CNONCE)
        if request_uri is not None and creds.uri != request_uri:
            return AuthFailed(reason=AuthFailure.URI_MISMATCH)

        password = password_lookup(creds.username)
        # Hash even for an unknown user, so timing does not tell which user names exist.
        expected = _expected_response(
            hash_factory, sess, creds, method, password if password is not None else ""
        )
        matches = hmac.compare_digest(expected.encode(), creds.response.lower().encode())
        if password is None:
            return AuthFailed(reason=AuthFailure.UNKNOWN_USER)
        if not matches:
            return AuthFailed(reason=AuthFailure.WRONG_RESPONSE)
        age = now - issued
        if age > self.nonce_ttl or age < -_FUTURE_SLACK:
            return AuthStale(username=creds.username)
        return AuthOk(username=creds.username)


def _expected_response(
    hash_factory: _HashFactory,
    sess: bool,
    creds: DigestCredentials,
    method: str,
    password: str,
) -> str:
    """The response a UAC knowing ``password`` would send (formulas in the module docstring)."""

    def h(text: str) -> str:
        return hash_factory(text.encode()).hexdigest()

    ha1 = h(f"{creds.username}:{creds.realm}:{password}")
    if sess:
        # RFC 7616 §3.4.2: the -sess HA1 mixes in both nonces; a missing cnonce hashes as "".
        ha1 = h(f"{ha1}:{creds.nonce}:{creds.cnonce or ''}")
    ha2 = h(f"{method}:{creds.uri}")
    if creds.qop is None:
        return h(f"{ha1}:{creds.nonce}:{ha2}")
    return h(f"{ha1}:{creds.nonce}:{creds.nc}:{creds.cnonce}:{creds.qop}:{ha2}")


# -- parsing ------------------------------------------------------------------------------

# RFC 3261 §25.1 token characters.
_TOKEN_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_LWS: Final = " \t\r\n"
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_REQUIRED: Final = ("username", "realm", "nonce", "uri", "response")


def parse_authorization(value: str) -> DigestCredentials:
    """Parse a Digest ``Authorization``/``Proxy-Authorization`` value (RFC 3261 §25.1).

    Accepts quoted strings with backslash escapes (commas inside quotes are data), unquoted
    tokens, parameter names in any case and linear white space anywhere between items.
    Quoted and unquoted forms are both accepted for every parameter, since UAs differ on
    ``algorithm``, ``qop`` and ``nc``. Unknown parameters are ignored (``auth-param``).

    Raises:
        UnsupportedScheme: the scheme is not Digest.
        DigestParseError: anything else malformed, with the offset of the problem.
    """
    text = value.strip(_LWS)
    i = 0
    n = len(text)
    while i < n and text[i] in _TOKEN_CHARS:
        i += 1
    scheme = text[:i]
    if not scheme:
        raise DigestParseError("Authorization: missing scheme")
    if scheme.lower() != "digest":
        raise UnsupportedScheme(f"Authorization: scheme {scheme!r} is not Digest")
    if i < n and text[i] not in _LWS:
        raise DigestParseError(f"Authorization: unexpected {text[i]!r} after scheme at offset {i}")

    params: dict[str, str] = {}
    while True:
        # Empty list elements are legal in #rule lists, so skip stray commas too.
        while i < n and (text[i] in _LWS or text[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise DigestParseError(
                f"Authorization: expected a parameter name at offset {start}, got {text[start]!r}"
            )
        i = _skip_lws(text, i)
        if i >= n or text[i] != "=":
            raise DigestParseError(f"Authorization: expected '=' after {name!r} at offset {i}")
        i = _skip_lws(text, i + 1)
        if i < n and text[i] == '"':
            param, i = _read_quoted(text, i)
        else:
            start = i
            while i < n and text[i] not in _LWS and text[i] not in ',"':
                i += 1
            param = text[start:i]
            if not param:
                raise DigestParseError(f"Authorization: empty value for {name!r} at offset {i}")
        if name in params:
            raise DigestParseError(f"Authorization: duplicate parameter {name!r}")
        params[name] = param
        i = _skip_lws(text, i)
        if i < n and text[i] != ",":
            raise DigestParseError(
                f"Authorization: expected ',' after {name!r} at offset {i}, got {text[i]!r}"
            )
    return _credentials(params)


def _skip_lws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _LWS:
        i += 1
    return i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read the quoted-string opening at ``text[i]``; return its unescaped value and end."""
    out: list[str] = []
    start = i
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            # RFC 3261 §25.1 quoted-pair: any character but CR and LF may be escaped.
            if i + 1 >= n or text[i + 1] in "\r\n":
                break
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise DigestParseError(f"Authorization: unterminated quoted string at offset {start}")


def _credentials(params: dict[str, str]) -> DigestCredentials:
    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise DigestParseError(f"Authorization: Digest credentials lack {', '.join(missing)}")
    response = params["response"]
    if not response or not _HEX.issuperset(response):
        raise DigestParseError(f"Authorization: response {response!r} is not hex")
    nc = params.get("nc")
    # RFC 7616 §3.4: nc is exactly 8 hex digits; it is hashed verbatim.
    if nc is not None and (len(nc) != 8 or not _HEX.issuperset(nc)):
        raise DigestParseError(f"Authorization: nc {nc!r} is not 8 hex digits")
    userhash = params.get("userhash", "false").lower()
    if userhash not in ("true", "false"):
        raise DigestParseError(f"Authorization: userhash {userhash!r} is not true or false")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response,
        algorithm=params.get("algorithm", "MD5"),
        qop=params.get("qop"),
        nc=nc,
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
        userhash=userhash == "true",
    )


def format_authorization(creds: DigestCredentials) -> str:
    """Serialize ``creds`` as an ``Authorization`` value; :func:`parse_authorization` inverts it.

    ``algorithm``, ``qop`` and ``nc`` are tokens, the rest quoted strings (RFC 7616 §3.4).
    """
    parts = [
        f"username={_quote(creds.username)}",
        f"realm={_quote(creds.realm)}",
        f"nonce={_quote(creds.nonce)}",
        f"uri={_quote(creds.uri)}",
        f"response={_quote(creds.response)}",
        f"algorithm={_token_or_quote(creds.algorithm)}",
    ]
    if creds.qop is not None:
        parts.append(f"qop={_token_or_quote(creds.qop)}")
    if creds.nc is not None:
        parts.append(f"nc={creds.nc}")
    if creds.cnonce is not None:
        parts.append(f"cnonce={_quote(creds.cnonce)}")
    if creds.opaque is not None:
        parts.append(f"opaque={_quote(creds.opaque)}")
    if creds.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


def _quote(text: str) -> str:
    """A quoted-string for ``text`` (RFC 3261 §25.1), escaping ``"`` and ``\\``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token_or_quote(text: str) -> str:
    return text if text and _TOKEN_CHARS.issuperset(text) else _quote(text)
