"""STIR/SHAKEN verification: the SIP Identity header and P-Asserted-Identity ``verstat``.

Implements the verifier side of RFC 8224 (SIP Identity), RFC 8225 (PASSporT) and RFC 8588
(SHAKEN extension), as ATIS-1000074 profiles them (domain.md §4.5):

    Identity: <b64url(header)>.<b64url(claims)>.<b64url(sig)>;info=<https://cert-url>;
              alg=ES256;ppt=shaken

    header: {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": "https://cert-url"}
    claims: {"attest": "A", "dest": {"tn": ["12125551234"]}, "iat": 1629357305,
             "orig": {"tn": "19205551234"}, "origid": "c1375035-..."}

Checks, in order, each failing with a reason string rather than an exception:

1. the header parses (RFC 8224 §4.1); the compact form (RFC 8224 §7.3, empty header and claims)
   would need the PASSporT rebuilt from the SIP message and is reported unsupported;
2. ``alg`` is ES256 (RFC 8588 §3 makes it mandatory) and ``ppt``, when given, is ``shaken``;
3. ``iat`` is at most ``max_age`` seconds old (RFC 8224 §6.2.1 recommends 60 s) and not ahead of
   ``now`` by more than the same allowance;
4. ``orig.tn`` is the call's caller and one of ``dest.tn`` its called number (RFC 8224 §5.2);
5. the certificate named by ``x5u``/``info`` is in the trust store and chains to a CA there,
   every certificate of the chain valid at ``now`` (ATIS-1000080 certificate management);
6. the ES256 signature (JWS, RFC 7515 §A.3: raw R||S) over ``header.claims`` holds.

Fetching ``x5u`` over HTTPS is off: the switch may fetch out of band and hand the bytes to
``TrustStore.add_certificate``; the verifier itself never does I/O.

Upstream carriers that verified already may pass the verdict in ``verstat`` on the
P-Asserted-Identity URI (3GPP TS 24.229 §7.2A.20): ``TN-Validation-Passed`` (A), ``-Passed-B``,
``-Passed-C``, ``TN-Validation-Failed``, ``No-TN-Validation``. ``evaluate`` uses a verified
Identity first, else a ``verstat`` pass.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from compliance.errors import TrustStoreError
from compliance.numbers import normalize

__all__ = [
    "DEFAULT_MAX_AGE",
    "MISSING",
    "Attestation",
    "StirResult",
    "TrustStore",
    "attestation_rank",
    "evaluate",
    "parse_verstat",
    "verify_identity",
]

logger = logging.getLogger(__name__)

Attestation = Literal["A", "B", "C", "none"]
DEFAULT_MAX_AGE: Final = 60  # seconds; RFC 8224 §6.2.1
MAX_IDENTITY: Final = 8192  # bytes; a SHAKEN Identity is well under 1 KB
_MAX_CHAIN: Final = 5
_RANK: Final[dict[str, int]] = {"none": 0, "C": 1, "B": 2, "A": 3}
_VERSTAT = re.compile(r"verstat=([A-Za-z0-9-]+)", re.IGNORECASE)
_VERSTAT_LEVEL: Final[dict[str, Attestation]] = {
    "tn-validation-passed": "A",
    "tn-validation-passed-a": "A",
    "tn-validation-passed-b": "B",
    "tn-validation-passed-c": "C",
}


def attestation_rank(level: str | None) -> int:
    """none < C < B < A, for "reject below the campaign's minimum"."""
    return _RANK.get(level or "none", 0)


class StirResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Outcome of STIR/SHAKEN for one call.

    ``attestation`` is what goes on the CDR: the verified ``attest`` claim, else a ``verstat``
    pass, else ``"none"``. ``source`` says which. ``reason`` is why the Identity header did
    not verify (``"missing"`` when there was none), None when it did.
    """

    attestation: Attestation
    source: Literal["identity", "verstat", "none"]
    reason: str | None
    origid: str | None = None

    @property
    def verified(self) -> bool:
        """A level was established by a signature or an upstream verifier."""
        return self.source != "none"


def _fail(reason: str) -> StirResult:
    return StirResult(attestation="none", source="none", reason=reason)


MISSING: Final = _fail("missing")  # the result when there is no Identity header


# -- trust store -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Leaf:
    cert: x509.Certificate
    key: ec.EllipticCurvePublicKey | None
    intermediates: tuple[x509.Certificate, ...]
    # Chain result, computed on first use: None unknown, else (ok, reason, not_before, not_after)
    chain: tuple[bool, str | None, datetime, datetime] | None = None


class TrustStore:
    """Certificates for STIR/SHAKEN: CA certificates (the trust anchors, e.g. the STI-PA roots
    and the STI-CAs an operator accepts) and the signing certificates ``x5u`` points at.

    A signing certificate is found by the exact ``x5u`` URL it was added under, else by the last
    path segment of the URL matched against the file names of the folder (``sp1.pem``).
    """

    def __init__(self) -> None:
        self._anchors: dict[bytes, list[x509.Certificate]] = {}  # subject DER -> CA certs
        self._by_url: dict[str, _Leaf] = {}
        self._by_name: dict[str, _Leaf] = {}

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> TrustStore:
        """Load every ``*.pem``/``*.crt``/``*.cer`` file (PEM) of a folder.

        CA certificates (basicConstraints cA=true) become anchors. A file whose first
        certificate is not a CA is a signing certificate, indexed by file name, with the rest of
        the file as its intermediates. A file that does not parse is logged and skipped.

        Raises:
            TrustStoreError: the folder cannot be read.
        """
        store = cls()
        d = Path(path)
        try:
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in {".pem", ".crt", ".cer"})
        except OSError as exc:
            raise TrustStoreError(f"trust store {d}: {exc}") from exc
        for f in files:
            try:
                certs = x509.load_pem_x509_certificates(f.read_bytes())
            except (OSError, ValueError) as exc:
                logger.warning("trust store: skipping %s: %s", f.name, exc)
                continue
            store._add_certs(certs, name=f.name, url=None)
        return store

    def add_anchor(self, cert: x509.Certificate) -> None:
        """Trust a CA certificate."""
        self._anchors.setdefault(cert.subject.public_bytes(), []).append(cert)

    def add_certificate(self, url: str | None, pem: bytes, name: str | None = None) -> None:
        """Add a signing certificate (with intermediates after it), e.g. fetched from ``x5u``.

        Raises:
            ValueError: ``pem`` holds no PEM certificate.
        """
        self._add_certs(x509.load_pem_x509_certificates(pem), name=name, url=url)

    def _add_certs(
        self, certs: list[x509.Certificate], *, name: str | None, url: str | None
    ) -> None:
        if not certs:
            return
        if _is_ca(certs[0]):
            for c in certs:
                if _is_ca(c):
                    self.add_anchor(c)
            return
        pub = certs[0].public_key()
        key = pub if isinstance(pub, ec.EllipticCurvePublicKey) else None
        leaf = _Leaf(certs[0], key, tuple(certs[1:]))
        if name is not None:
            self._by_name[name] = leaf
        if url is not None:
            self._by_url[url] = leaf

    def _find(self, url: str) -> _Leaf | None:
        leaf = self._by_url.get(url)
        if leaf is None:
            segment = urlsplit(url).path.rsplit("/", 1)[-1]
            leaf = self._by_name.get(segment) if segment else None
        return leaf

    def _check_chain(self, leaf: _Leaf, now: datetime) -> str | None:
        """None if the leaf chains to an anchor and every link is valid at ``now``."""
        if leaf.chain is None:
            leaf.chain = self._build_chain(leaf)
        ok, reason, not_before, not_after = leaf.chain
        if not ok:
            return reason
        if not not_before <= now <= not_after:
            return "certificate_expired"
        return None

    def _build_chain(self, leaf: _Leaf) -> tuple[bool, str | None, datetime, datetime]:
        cert = leaf.cert
        not_before = cert.not_valid_before_utc
        not_after = cert.not_valid_after_utc
        pool: dict[bytes, list[x509.Certificate]] = {}
        for c in leaf.intermediates:
            if _is_ca(c):
                pool.setdefault(c.subject.public_bytes(), []).append(c)
        for _ in range(_MAX_CHAIN):
            issuer_der = cert.issuer.public_bytes()
            for anchor in self._anchors.get(issuer_der, ()):
                if _issued_by(cert, anchor):
                    not_before = max(not_before, anchor.not_valid_before_utc)
                    not_after = min(not_after, anchor.not_valid_after_utc)
                    return True, None, not_before, not_after
            nxt = next((c for c in pool.get(issuer_der, ()) if _issued_by(cert, c)), None)
            if nxt is None:
                return False, "untrusted_certificate", not_before, not_after
            cert = nxt
            not_before = max(not_before, cert.not_valid_before_utc)
            not_after = min(not_after, cert.not_valid_after_utc)
        return False, "untrusted_certificate", not_before, not_after


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- PASSporT --------------------------------------------------------------------------------


class _Header(msgspec.Struct):
    alg: str
    typ: str | None = None
    ppt: str | None = None
    x5u: str | None = None


class _Orig(msgspec.Struct):
    tn: str | None = None


class _Dest(msgspec.Struct):
    tn: list[str] = []


class _Claims(msgspec.Struct):
    iat: int
    orig: _Orig
    dest: _Dest
    attest: str | None = None
    origid: str | None = None


_HEADER_DECODER = msgspec.json.Decoder(_Header)
_CLAIMS_DECODER = msgspec.json.Decoder(_Claims)
_SIG_ALG: Final = ec.ECDSA(hashes.SHA256())


def _b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _split_identity(value: str) -> tuple[str, dict[str, str]] | None:
    """``token;info=<url>;alg=ES256`` -> (token, params). RFC 8224 §4.1 grammar, leniently."""
    token, _, rest = value.strip().partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            params[k.strip().lower()] = v.strip().strip('"')
    token = token.strip()
    return (token, params) if token else None


def _tn_e164(tn: str) -> str | None:
    # RFC 8224 §8.3: canonical TNs are digits with the country code and no "+".
    digits = tn[1:] if tn.startswith("+") else tn
    return normalize("+" + digits) if digits.isdigit() else None


def verify_identity(
    identity: str | None,
    *,
    caller: str | None,
    called: str | None,
    now: datetime,
    trust: TrustStore | None,
    max_age: int = DEFAULT_MAX_AGE,
) -> StirResult:
    """Verify one Identity header value against the call's numbers (E.164). Never raises."""
    if not identity:
        return MISSING
    if len(identity) > MAX_IDENTITY:
        return _fail("malformed_header")
    split = _split_identity(identity)
    if split is None:
        return _fail("malformed_header")
    token, params = split
    parts = token.split(".")
    if len(parts) != 3:
        return _fail("malformed_header")
    h64, c64, s64 = parts
    if not h64 or not c64:
        return _fail("compact_form_unsupported")
    try:
        header = _HEADER_DECODER.decode(_b64url(h64))
        claims = _CLAIMS_DECODER.decode(_b64url(c64))
        signature = _b64url(s64)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return _fail("malformed_passport")
    alg = params.get("alg", header.alg)
    if header.alg != "ES256" or alg != "ES256":
        return _fail("unsupported_alg")
    ppt = header.ppt or params.get("ppt")
    if ppt is not None and ppt != "shaken":
        return _fail("unsupported_ppt")
    if claims.attest not in ("A", "B", "C"):
        return _fail("malformed_passport")
    age = now.timestamp() - claims.iat
    if age > max_age:
        return _fail("stale_iat")
    if age < -max_age:
        return _fail("future_iat")
    if claims.orig.tn is None or caller is None or _tn_e164(claims.orig.tn) != caller:
        return _fail("orig_mismatch")
    if called is None or not any(_tn_e164(t) == called for t in claims.dest.tn):
        return _fail("dest_mismatch")
    url = header.x5u or params.get("info", "").strip("<>")
    if not url:
        return _fail("no_certificate_url")
    leaf = trust._find(url) if trust is not None else None
    if leaf is None:
        return _fail("unknown_certificate")
    if leaf.key is None or not isinstance(leaf.key.curve, ec.SECP256R1):
        return _fail("unsupported_key")
    chain_problem = trust._check_chain(leaf, now) if trust is not None else "unknown_certificate"
    if chain_problem is not None:
        return _fail(chain_problem)
    if len(signature) != 64:
        return _fail("bad_signature")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        leaf.key.verify(der, f"{h64}.{c64}".encode("ascii"), _SIG_ALG)
    except (InvalidSignature, UnicodeEncodeError):
        return _fail("bad_signature")
    attest: Attestation = "A" if claims.attest == "A" else "B" if claims.attest == "B" else "C"
    return StirResult(attestation=attest, source="identity", reason=None, origid=claims.origid)


def parse_verstat(pai: str | None) -> tuple[Attestation, str] | None:
    """The level an upstream verifier vouched for in P-Asserted-Identity, with the raw value.

    ``TN-Validation-Failed`` and ``No-TN-Validation`` give ``("none", value)``; no ``verstat``
    gives None.
    """
    if not pai:
        return None
    m = _VERSTAT.search(pai, 0, MAX_IDENTITY)
    if m is None:
        return None
    value = m.group(1)
    return _VERSTAT_LEVEL.get(value.lower(), "none"), value


def evaluate(
    identity: str | None,
    pai: str | None,
    *,
    caller: str | None,
    called: str | None,
    now: datetime,
    trust: TrustStore | None,
    max_age: int = DEFAULT_MAX_AGE,
) -> StirResult:
    """The call's attestation: a verified Identity first, else an upstream ``verstat`` pass."""
    result = verify_identity(
        identity, caller=caller, called=called, now=now, trust=trust, max_age=max_age
    )
    if result.verified:
        return result
    vs = parse_verstat(pai)
    if vs is not None and vs[0] != "none":
        return StirResult(attestation=vs[0], source="verstat", reason=result.reason)
    if vs is not None and result is MISSING:
        return _fail("verstat_failed")
    return result
