"""A test STIR/SHAKEN PKI made with cryptography: a CA, signing certificates, PASSporTs."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 5, 1, 15, 0, tzinfo=UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Signer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test STI-CA") -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Signer(key, cert)


def make_leaf(
    ca: Signer,
    cn: str = "Test SP",
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    curve: ec.EllipticCurve | None = None,
) -> Signer:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=30))
        .not_valid_after(not_after or NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return Signer(key, cert)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_store(folder: Path, ca: Signer, leaves: dict[str, Signer]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(pem(ca.cert))
    for name, leaf in leaves.items():
        (folder / name).write_bytes(pem(leaf.cert))
    return folder


def passport(
    signer: Signer,
    *,
    orig: str = "12125551234",
    dest: str = "18005550100",
    attest: str = "A",
    iat: datetime = NOW,
    x5u: str = "https://certs.example.org/sp1.pem",
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    params: str = ";alg=ES256;ppt=shaken",
) -> str:
    """An Identity header value (RFC 8224 §4.1) carrying a signed SHAKEN PASSporT."""
    h = {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": x5u, **(header or {})}
    c = {
        "attest": attest,
        "dest": {"tn": [dest]},
        "iat": int(iat.timestamp()),
        "orig": {"tn": orig},
        "origid": "c1375035-8d2e-4a8b-9b1f-0f4f9a3e7a11",
        **(claims or {}),
    }
    signing_input = f"{b64url(json.dumps(h).encode())}.{b64url(json.dumps(c).encode())}"
    der = signer.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url(sig)};info=<{x5u}>{params}"
