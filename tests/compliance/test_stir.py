"""compliance.stir: Identity verification against a test CA, verstat, never an exception."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.errors import TrustStoreError
from compliance.stir import (
    StirResult,
    TrustStore,
    attestation_rank,
    evaluate,
    parse_verstat,
    verify_identity,
)
from tests.compliance.stirkit import (
    NOW,
    Signer,
    b64url,
    make_ca,
    make_leaf,
    passport,
    pem,
    write_store,
)

CALLER = "+12125551234"
CALLED = "+18005550100"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Signer, TrustStore]:
    ca = make_ca()
    leaf = make_leaf(ca)
    expired = make_leaf(ca, "Old SP", not_after=NOW - timedelta(days=1))
    p384 = make_leaf(ca, "P384 SP", curve=ec.SECP384R1())
    folder = write_store(
        tmp_path_factory.mktemp("trust"),
        ca,
        {"sp1.pem": leaf, "old.pem": expired, "p384.pem": p384},
    )
    (folder / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    (folder / "readme.txt").write_text("ignored")
    return ca, leaf, TrustStore.from_directory(folder)


def verify(header: str | None, trust: TrustStore, **kw: object) -> StirResult:
    args: dict[str, object] = {"caller": CALLER, "called": CALLED, "now": NOW, "trust": trust}
    args.update(kw)
    return verify_identity(header, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["A", "B", "C"])
def test_valid_passport(pki: tuple[Signer, Signer, TrustStore], level: str) -> None:
    _, leaf, trust = pki
    r = verify(passport(leaf, attest=level), trust)
    assert (r.attestation, r.source, r.reason, r.verified) == (level, "identity", None, True)
    assert r.origid == "c1375035-8d2e-4a8b-9b1f-0f4f9a3e7a11"


def test_iat_within_60_seconds_either_way(pki: tuple[Signer, Signer, TrustStore]) -> None:
    _, leaf, trust = pki
    assert verify(passport(leaf, iat=NOW - timedelta(seconds=60)), trust).verified
    assert verify(passport(leaf, iat=NOW + timedelta(seconds=30)), trust).verified


def _tamper_signature(h: str) -> str:
    token, _, params = h.partition(";")
    a, b, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    return f"{a}.{b}.{flipped};{params}"


def _tamper_claims(leaf: Signer) -> str:
    # Re-encode the claims with a different attest but keep the original signature.
    good = passport(leaf, attest="C")
    token, _, params = good.partition(";")
    a, _, sig = token.split(".")
    forged = passport(leaf, attest="A").split(";")[0].split(".")[1]
    return f"{a}.{forged}.{sig};{params}"


FAILURES = [
    ("wrong_signature", lambda leaf, ca: _tamper_signature(passport(leaf)), "bad_signature"),
    ("forged_claims", lambda leaf, ca: _tamper_claims(leaf), "bad_signature"),
    (
        "signed_by_other_key",
        lambda leaf, ca: passport(make_leaf(make_ca("Evil CA"))),
        "bad_signature",
    ),
    ("expired_iat", lambda leaf, ca: passport(leaf, iat=NOW - timedelta(seconds=61)), "stale_iat"),
    ("future_iat", lambda leaf, ca: passport(leaf, iat=NOW + timedelta(seconds=61)), "future_iat"),
    ("mismatched_orig", lambda leaf, ca: passport(leaf, orig="12125559999"), "orig_mismatch"),
    ("mismatched_dest", lambda leaf, ca: passport(leaf, dest="18005559999"), "dest_mismatch"),
    (
        "unknown_cert",
        lambda leaf, ca: passport(leaf, x5u="https://certs.example.org/other.pem"),
        "unknown_certificate",
    ),
    (
        "expired_cert",
        lambda leaf, ca: passport(leaf, x5u="https://certs.example.org/old.pem"),
        "certificate_expired",
    ),
    (
        "p384_key",
        lambda leaf, ca: passport(leaf, x5u="https://x.example/p384.pem"),
        "unsupported_key",
    ),
    ("alg_rs256", lambda leaf, ca: passport(leaf, header={"alg": "RS256"}), "unsupported_alg"),
    ("alg_param", lambda leaf, ca: passport(leaf, params=";alg=RS256"), "unsupported_alg"),
    ("ppt_div", lambda leaf, ca: passport(leaf, header={"ppt": "div"}), "unsupported_ppt"),
    ("attest_d", lambda leaf, ca: passport(leaf, attest="D"), "malformed_passport"),
    ("no_orig_tn", lambda leaf, ca: passport(leaf, claims={"orig": {}}), "orig_mismatch"),
    ("iat_string", lambda leaf, ca: passport(leaf, claims={"iat": "now"}), "malformed_passport"),
    ("two_parts", lambda leaf, ca: "abc.def;info=<x>", "malformed_header"),
    ("compact", lambda leaf, ca: "..c2ln;info=<x>", "compact_form_unsupported"),
    ("bad_base64", lambda leaf, ca: "a!b.c@d.e#f;info=<x>", "malformed_passport"),
    ("not_json", lambda leaf, ca: f"{b64url(b'[')}.{b64url(b'{}')}.AA", "malformed_passport"),
    ("empty", lambda leaf, ca: ";info=<x>", "malformed_header"),
    ("huge", lambda leaf, ca: "a" * 10_000, "malformed_header"),
    (
        "no_url",
        lambda leaf, ca: passport(leaf, x5u="", params=";alg=ES256"),
        "no_certificate_url",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_failures_have_reasons(
    pki: tuple[Signer, Signer, TrustStore], make: object, reason: str
) -> None:
    ca, leaf, trust = pki
    header = make(leaf, ca)  # type: ignore[operator]
    r = verify(header, trust)
    assert (r.attestation, r.source, r.reason) == ("none", "none", reason)


def test_leaf_from_unknown_ca_is_untrusted(
    pki: tuple[Signer, Signer, TrustStore], tmp_path: Path
) -> None:
    _, _, trust = pki
    rogue = make_leaf(make_ca("Rogue CA"))
    trust.add_certificate("https://rogue.example/cert.pem", pem(rogue.cert))
    r = verify(passport(rogue, x5u="https://rogue.example/cert.pem"), trust)
    assert r.reason == "untrusted_certificate"


def test_chain_through_an_intermediate(tmp_path: Path) -> None:
    root = make_ca("Root")
    inter_key = ec.generate_private_key(ec.SECP256R1())
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    inter_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=10))
        .not_valid_after(NOW + timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    inter = Signer(inter_key, inter_cert)
    leaf = make_leaf(inter)
    trust = TrustStore()
    trust.add_anchor(root.cert)
    url = "https://sp.example/chain.pem"
    trust.add_certificate(url, pem(leaf.cert, inter.cert))
    assert verify(passport(leaf, x5u=url), trust).verified
    # Without the intermediate the chain does not reach the root.
    trust2 = TrustStore()
    trust2.add_anchor(root.cert)
    trust2.add_certificate(url, pem(leaf.cert))
    assert verify(passport(leaf, x5u=url), trust2).reason == "untrusted_certificate"


def test_no_trust_store_means_unknown(pki: tuple[Signer, Signer, TrustStore]) -> None:
    _, leaf, _ = pki
    assert verify(passport(leaf), None).reason == "unknown_certificate"  # type: ignore[arg-type]


def test_missing_header() -> None:
    r = verify_identity(None, caller=CALLER, called=CALLED, now=NOW, trust=None)
    assert (r.attestation, r.reason, r.verified) == ("none", "missing", False)


def test_trust_store_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(TrustStoreError):
        TrustStore.from_directory(tmp_path / "nope")


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_garbage_never_raises(header: str) -> None:
    r = verify_identity(header, caller=CALLER, called=CALLED, now=NOW, trust=TrustStore())
    assert r.attestation == "none" and r.reason


VERSTAT = [
    (
        "<sip:+12125551234;verstat=TN-Validation-Passed@example.com;user=phone>",
        ("A", "TN-Validation-Passed"),
    ),
    ("<tel:+12125551234;verstat=TN-Validation-Passed-B>", ("B", "TN-Validation-Passed-B")),
    ("<sip:+12125551234;VERSTAT=tn-validation-passed-c@x>", ("C", "tn-validation-passed-c")),
    ("<sip:+12125551234;verstat=TN-Validation-Failed@x>", ("none", "TN-Validation-Failed")),
    ("<sip:+12125551234;verstat=No-TN-Validation@x>", ("none", "No-TN-Validation")),
    ("<sip:+12125551234@x>", None),
    (None, None),
]


@pytest.mark.parametrize(("pai", "want"), VERSTAT)
def test_parse_verstat(pai: str | None, want: tuple[str, str] | None) -> None:
    assert parse_verstat(pai) == want


def test_evaluate_prefers_identity_then_verstat(pki: tuple[Signer, Signer, TrustStore]) -> None:
    _, leaf, trust = pki
    pai_b = "<sip:+12125551234;verstat=TN-Validation-Passed-B@x>"
    kw = {"caller": CALLER, "called": CALLED, "now": NOW, "trust": trust}
    r = evaluate(passport(leaf, attest="A"), pai_b, **kw)  # type: ignore[arg-type]
    assert (r.attestation, r.source) == ("A", "identity")
    # Identity present but unverifiable here; the upstream carrier verified it.
    r = evaluate(passport(leaf, x5u="https://x/unknown.pem"), pai_b, **kw)  # type: ignore[arg-type]
    assert (r.attestation, r.source, r.reason) == ("B", "verstat", "unknown_certificate")
    r = evaluate(None, pai_b, **kw)  # type: ignore[arg-type]
    assert (r.attestation, r.source, r.reason) == ("B", "verstat", "missing")
    r = evaluate(None, "<sip:+1;verstat=TN-Validation-Failed@x>", **kw)  # type: ignore[arg-type]
    assert (r.attestation, r.reason) == ("none", "verstat_failed")
    r = evaluate(None, None, **kw)  # type: ignore[arg-type]
    assert (r.attestation, r.reason) == ("none", "missing")


def test_attestation_rank() -> None:
    assert [attestation_rank(x) for x in ("none", "C", "B", "A", None)] == [0, 1, 2, 3, 0]
