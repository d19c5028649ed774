"""Trunk admission (switch/admission.py): source matching, config checks, admit() decisions."""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from switch.admission import Admission, Admitted, Challenge, Forbidden
from switch.auth import DigestAuthenticator
from switch.guard import AuthGuard, GuardConfig

REALM = "dce.example.net"
SECRET = b"k" * 32
NOW = 500.0
URI = "sip:+18005550100@dce.example.net"


@dataclass(frozen=True)
class Trunk:
    """The fields of ``exchange.models.Trunk`` that admission reads (see the test at the end)."""

    id: str
    source_ips: list[str] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    active: bool = True


def trunk(id: str, *ips: str, **kw: Any) -> Trunk:
    return Trunk(id=id, source_ips=list(ips), **kw)


TRUNKS = [
    trunk("exact4", "192.0.2.10"),
    trunk("net8", "10.0.0.0/8"),
    trunk("net16", "10.1.0.0/16"),
    trunk("net24", "10.1.2.0/24", "172.16.0.0/12"),
    trunk("host32", "10.1.2.3/32"),
    trunk("exact6", "2001:db8::10"),
    trunk("net6", "2001:db8:1::/48"),
    trunk("net6-long", "2001:db8:1:2::/64"),
    trunk("mapped-cfg", "::ffff:198.51.100.7"),
    trunk("off", "203.0.113.5", "198.18.0.0/15", active=False),
    trunk("digest", username="alice", password="wonderland"),
    trunk("digest-off", username="bob", password="builder", active=False),
    trunk("both", "192.0.2.20", username="carol", password="xmas"),
]


@pytest.fixture(scope="module")
def admission() -> Admission[Trunk]:
    return Admission(TRUNKS)


@pytest.fixture
def auth() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET)


MATCH_CASES = [
    ("192.0.2.10", "exact4"),
    ("192.0.2.11", None),
    ("10.200.0.1", "net8"),
    ("10.1.200.1", "net16"),
    ("10.1.2.4", "net24"),
    ("10.1.2.3", "host32"),
    ("172.31.255.255", "net24"),
    ("172.32.0.0", None),
    ("2001:db8::10", "exact6"),
    ("2001:DB8:0:0::10", "exact6"),  # another spelling of the same address
    ("2001:db8:1:ffff::1", "net6"),
    ("2001:db8:1:2::99", "net6-long"),
    ("2001:db8:2::1", None),
    ("::ffff:192.0.2.10", "exact4"),  # dual-stack socket reporting an IPv4 peer
    ("::ffff:10.1.2.4", "net24"),
    ("198.51.100.7", "mapped-cfg"),
    ("fe80::1%eth0", None),
    ("203.0.113.5", None),  # inactive trunk
    ("198.18.0.1", None),  # inactive trunk's CIDR
    ("192.0.2.20", "both"),
    ("not an ip", None),
    ("", None),
]


@pytest.mark.parametrize(
    ("ip", "expected"), MATCH_CASES, ids=[c[0] or "empty" for c in MATCH_CASES]
)
def test_match_source(admission: Admission[Trunk], ip: str, expected: str | None) -> None:
    found = admission.match_source(ip)
    assert (found.id if found is not None else None) == expected


def test_match_returns_the_same_object(admission: Admission[Trunk]) -> None:
    assert admission.match_source("192.0.2.10") is TRUNKS[0]


def test_zone_id_is_ignored() -> None:
    admission = Admission([trunk("ll", "fe80::/64")])
    found = admission.match_source("fe80::1%eth0")
    assert found is not None and found.id == "ll"


def test_whole_internet_and_longest_prefix() -> None:
    admission = Admission([trunk("all", "0.0.0.0/0", "::/0"), trunk("one", "8.8.8.0/24")])
    assert [admission.match_source(ip).id for ip in ("1.1.1.1", "8.8.8.8", "::1")] == [  # type: ignore[union-attr]
        "all",
        "one",
        "all",
    ]


def test_many_trunks() -> None:
    trunks = [trunk(f"t{i}", f"10.{i // 256}.{i % 256}.0/24") for i in range(5000)]
    trunks += [trunk(f"h{i}", f"2001:db8::{i:x}") for i in range(5000)]
    admission = Admission(trunks)
    assert admission.match_source("10.3.7.200") is trunks[3 * 256 + 7]
    assert admission.match_source("2001:db8::1f4") is trunks[5000 + 500]
    assert admission.match_source("10.20.0.1") is None


BAD_CONFIG = [
    pytest.param([trunk("t1", "10.0.0.0/33")], "trunk 't1'", id="prefix-too-long"),
    pytest.param([trunk("t2", "not-an-ip")], "trunk 't2'", id="garbage"),
    pytest.param([trunk("t3", "10.0.0.5/24")], "host bits", id="host-bits-set"),
    pytest.param([trunk("t4", "")], "trunk 't4'", id="empty"),
    pytest.param([trunk("t5", "1.2.3.4", active=False), trunk("t6", "999.1.1.1")], "t6", id="2nd"),
    pytest.param([trunk("t7", "10.0.0.0/8 ", "300.0.0.0/8", active=False)], "t7", id="inactive"),
    pytest.param([trunk("t8", username="u")], "together", id="username-no-password"),
    pytest.param([trunk("t9", password="p")], "together", id="password-no-username"),
    pytest.param([trunk("t10", username="", password="p")], "empty", id="empty-username"),
    pytest.param(
        [trunk("a", "192.0.2.1"), trunk("b", "192.0.2.1/32")],
        "trunk 'b': address 192.0.2.1 is already trunk 'a'",
        id="same-address",
    ),
    pytest.param(
        [trunk("a", "10.0.0.0/8"), trunk("b", "10.0.0.0/8")],
        "trunk 'b': network 10.0.0.0/8 is already trunk 'a'",
        id="same-network",
    ),
    pytest.param(
        [trunk("a", "2001:db8::/32"), trunk("b", "2001:0db8::/32")],
        "is already trunk 'a'",
        id="same-network-v6-spelling",
    ),
    pytest.param(
        [trunk("a", username="u", password="p"), trunk("b", username="u", password="q")],
        "trunk 'b': username 'u' is already trunk 'a'",
        id="same-username",
    ),
]


@pytest.mark.parametrize(("trunks", "message"), BAD_CONFIG)
def test_bad_config(trunks: list[Trunk], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Admission(trunks)


def test_duplicates_allowed_when_harmless() -> None:
    admission = Admission(
        [
            trunk("a", "192.0.2.1", "192.0.2.1", "10.0.0.0/8", username="u", password="p"),
            trunk("b", "192.0.2.1", "10.0.0.0/8", username="u", password="q", active=False),
        ]
    )
    found = admission.match_source("192.0.2.1")
    assert found is not None and found.id == "a"
    user = admission.trunk_for_user("u")
    assert user is not None and user.id == "a"


def test_digest_index(admission: Admission[Trunk]) -> None:
    assert admission.needs_digest()
    digest = admission.trunk_for_user("alice")
    assert digest is not None and digest.id == "digest"
    assert admission.trunk_for_user("bob") is None  # inactive
    assert admission.trunk_for_user("ALICE") is None  # user names are case-sensitive
    assert admission.password_for("carol") == "xmas"
    assert admission.password_for("bob") is None


@pytest.mark.parametrize(
    "trunks",
    [
        pytest.param([], id="no-trunks"),
        pytest.param([trunk("a", "192.0.2.1")], id="ip-only"),
        pytest.param([trunk("a", username="u", password="p", active=False)], id="inactive"),
    ],
)
def test_needs_digest_false(trunks: list[Trunk]) -> None:
    assert not Admission(trunks).needs_digest()


# -- admit ---------------------------------------------------------------------------------


def authorization(
    nonce: str,
    *,
    username: str = "alice",
    password: str = "wonderland",
    realm: str = REALM,
    method: str = "INVITE",
    uri: str = URI,
) -> str:
    """An Authorization value as a UAC computes it (SHA-256, qop=auth; RFC 7616 §3.4)."""

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    response = h(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c0ffee"'
    )


def _digest_ok(auth: DigestAuthenticator) -> str:
    return authorization(auth.make_nonce(NOW - 10))


ADMIT_CASES: list[Any] = [
    pytest.param("192.0.2.10", None, ("admitted", "exact4", "source"), id="source-ip"),
    pytest.param(
        "192.0.2.20", "Digest garbage", ("admitted", "both", "source"), id="source-beats-creds"
    ),
    pytest.param("198.51.100.99", None, ("challenge", False), id="no-creds-challenge"),
    pytest.param("203.0.113.5", None, ("challenge", False), id="inactive-source-challenge"),
    pytest.param("198.51.100.99", _digest_ok, ("admitted", "digest", "digest"), id="digest-ok"),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW - 301)),
        ("challenge", True),
        id="stale",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW - 301), password="wrong"),
        ("forbidden", "wrong response", "auth_failed"),
        id="stale-and-wrong",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW), password="wrong"),
        ("forbidden", "wrong response", "auth_failed"),
        id="wrong-password",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW), username="mallory"),
        ("forbidden", "unknown user", "auth_failed"),
        id="unknown-user",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW), username="bob", password="builder"),
        ("forbidden", "unknown user", "auth_failed"),
        id="inactive-trunk-user",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(DigestAuthenticator(REALM, b"z" * 32).make_nonce(NOW)),
        ("challenge", False),
        id="nonce-from-old-secret",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW), realm="elsewhere"),
        ("challenge", False),
        id="other-realm",
    ),
    pytest.param(
        "198.51.100.99", "Basic YWxpY2U6d29uZGVybGFuZA==", ("challenge", False), id="basic"
    ),
    pytest.param(
        "198.51.100.99",
        'Digest username="alice", realm=',
        ("forbidden", "malformed credentials: Authorization: empty value",
         "malformed_credentials"),
        id="malformed",
    ),
    pytest.param(
        "198.51.100.99",
        lambda a: authorization(a.make_nonce(NOW), uri="sip:+18005550199@dce.example.net"),
        ("forbidden", "uri mismatch", "uri_mismatch"),
        id="uri-mismatch",
    ),
]


@pytest.mark.parametrize(("ip", "header", "expected"), ADMIT_CASES)
def test_admit(
    admission: Admission[Trunk],
    auth: DigestAuthenticator,
    ip: str,
    header: Any,
    expected: tuple[Any, ...],
) -> None:
    value = header(auth) if callable(header) else header
    result = admission.admit(ip, value, "INVITE", NOW, auth, request_uri=URI)
    match expected:
        case ("admitted", trunk_id, via):
            assert isinstance(result, Admitted)
            assert (result.trunk.id, result.via) == (trunk_id, via)
        case ("challenge", stale):
            assert result == Challenge(headers=tuple(auth.challenge(NOW, stale=stale)), stale=stale)
            algorithms = [re.search(r"algorithm=([\w-]+)", h) for h in result.headers]
            assert [m.group(1) for m in algorithms if m] == ["SHA-256", "MD5"]
            assert all(("stale=true" in h) == stale for h in result.headers)
        case ("forbidden", reason, text):
            assert isinstance(result, Forbidden)
            assert result.reason.startswith(reason)
            # What the peer sees: the same for an unknown user and a wrong password.
            assert (result.text, result.failure) == (text, True)
        case _:
            pytest.fail(f"bad case {expected}")


@pytest.mark.parametrize(
    "header", [None, "Digest garbage"], ids=["no-creds", "creds-but-no-digest-trunks"]
)
def test_unknown_source_without_digest_trunks(
    auth: DigestAuthenticator, header: str | None
) -> None:
    admission = Admission(
        [trunk("a", "192.0.2.1"), trunk("u", username="u", password="p", active=False)]
    )
    assert admission.admit("192.0.2.2", header, "INVITE", NOW, auth) == Forbidden(
        reason="unknown source", text="unknown_source"
    )


def test_admit_without_request_uri_check(
    admission: Admission[Trunk], auth: DigestAuthenticator
) -> None:
    value = authorization(auth.make_nonce(NOW), uri="sip:anything@else", method="OPTIONS")
    result = admission.admit("198.51.100.99", value, "OPTIONS", NOW, auth)
    assert isinstance(result, Admitted) and result.trunk.id == "digest"


def test_exchange_trunk_fits(auth: DigestAuthenticator) -> None:
    try:
        models = importlib.import_module("exchange.models")
    except Exception as exc:  # another slice's module mid-edit must not hide our results
        pytest.skip(f"exchange.models does not import: {exc!r}")
    ModelTrunk = models.Trunk
    by_ip = ModelTrunk(id="ip", name="By IP", source_ips=["192.0.2.0/24"])
    by_user = ModelTrunk(id="user", name="By user", username="u", password="p")
    admission = Admission([by_ip, by_user])
    assert admission.match_source("192.0.2.9") is by_ip
    assert admission.trunk_for_user("u") is by_user
    value = authorization(auth.make_nonce(NOW), username="u", password="p")
    result = admission.admit("198.51.100.1", value, "INVITE", NOW, auth)
    assert isinstance(result, Admitted)
    assert (result.trunk, result.via) == (by_user, "digest")


# -- with a guard (password guessing) ------------------------------------------------------------

GUESSER = "198.51.100.66"


def test_guard_blocked_source_refused_unchecked_even_with_the_right_password(
    admission: Admission[Trunk], auth: DigestAuthenticator
) -> None:
    guard = AuthGuard(GuardConfig(source_limit=3, window=60, block=30))
    for _ in range(3):
        guard.failed(GUESSER, "alice", NOW)
    right = _digest_ok(auth)
    for header in (None, right):  # no challenge either: the source learns nothing
        result = admission.admit(GUESSER, header, "INVITE", NOW + 1, auth, guard=guard)
        assert result == Forbidden(reason="source blocked", text="blocked")
    # Another source is not affected; an IP trunk's address is never blocked.
    ok = admission.admit("198.51.100.67", right, "INVITE", NOW + 1, auth, guard=guard)
    assert isinstance(ok, Admitted) and ok.trunk.id == "digest"
    for _ in range(3):
        guard.failed("192.0.2.10", None, NOW)
    by_ip = admission.admit("192.0.2.10", None, "INVITE", NOW + 1, auth, guard=guard)
    assert isinstance(by_ip, Admitted) and by_ip.via == "source"
    # After the block the right password gets in.
    fresh = authorization(auth.make_nonce(NOW + 31))
    later = admission.admit(GUESSER, fresh, "INVITE", NOW + 31, auth, guard=guard)
    assert isinstance(later, Admitted) and later.trunk.id == "digest"


def test_guard_blocked_user_spares_sources_it_trusts(
    admission: Admission[Trunk], auth: DigestAuthenticator
) -> None:
    guard = AuthGuard(GuardConfig(source_limit=0, user_limit=4, window=60, block=30))
    guard.succeeded("203.0.113.1", "alice", NOW - 100)  # the trunk's own SBC
    for i in range(4):  # four sources, one guess each: distributed guessing
        guard.failed(f"198.51.100.{i}", "alice", NOW)
    right = _digest_ok(auth)
    blocked = admission.admit(GUESSER, right, "INVITE", NOW, auth, guard=guard)
    assert blocked == Forbidden(reason="user blocked", text="blocked", username="alice")
    trusted = admission.admit("203.0.113.1", right, "INVITE", NOW, auth, guard=guard)
    assert isinstance(trusted, Admitted) and trusted.trunk.id == "digest"
    # Without credentials the user name is unknown: a challenge, as for anyone.
    assert isinstance(admission.admit(GUESSER, None, "INVITE", NOW, auth, guard=guard), Challenge)


def test_by_source_false_never_admits_by_address(
    admission: Admission[Trunk], auth: DigestAuthenticator
) -> None:
    result = admission.admit("192.0.2.10", None, "INVITE", NOW, auth, by_source=False)
    assert isinstance(result, Challenge)
