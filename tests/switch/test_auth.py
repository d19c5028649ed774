"""Digest authentication (switch/auth.py): RFC vectors, verification table, parser, nonces.

Expected responses are computed here with hashlib straight from the RFC 7616 §3.4 formulas,
not with the module's own helper, so a shared mistake cannot make both sides agree.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switch.auth import (
    AuthFailed,
    AuthFailure,
    AuthOk,
    AuthStale,
    DigestAuthenticator,
    DigestCredentials,
    DigestParseError,
    UnsupportedScheme,
    _expected_response,
    format_authorization,
    parse_authorization,
)
from switch.errors import SipParseError

REALM = "dce.example.net"
SECRET = b"0123456789abcdef0123456789abcdef"
USERS = {"trunk1": "s3cret", "alice": "Circle of Life"}
NOW = 1000.0
INVITE_URI = "sip:+18005550100@dce.example.net"

_HASHES: dict[str, Callable[[bytes], Any]] = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def client_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """What a UAC computes (RFC 7616 §3.4.1-§3.4.3, RFC 2069 when qop is absent)."""
    base = algorithm.upper().removesuffix("-SESS")
    new = _HASHES["SHA-256" if base == "SHA-256" else "MD5"]

    def h(text: str) -> str:
        return str(new(text.encode()).hexdigest())

    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def challenge_params(value: str) -> dict[str, str]:
    """The parameters of one WWW-Authenticate value, unquoted (test-local, regex based)."""
    assert value.startswith("Digest ")
    params = {}
    for name, quoted, token in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', value[7:]):
        params[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted or not token else token
    return params


@pytest.fixture
def auth() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, nonce_ttl=300.0)


def lookup(username: str) -> str | None:
    return USERS.get(username)


def creds_for(
    auth: DigestAuthenticator,
    *,
    issued: float = NOW,
    algorithm: str = "SHA-256",
    username: str = "trunk1",
    password: str = "s3cret",
    method: str = "INVITE",
    uri: str = INVITE_URI,
    qop: str | None = "auth",
    nc: str | None = "00000001",
    cnonce: str | None = "0a4f113b",
    nonce: str | None = None,
    realm: str = REALM,
) -> DigestCredentials:
    """Credentials a correct UAC would send for a nonce issued at ``issued``."""
    nonce = auth.make_nonce(issued) if nonce is None else nonce
    if qop is None:
        nc = cnonce = None
    response = client_response(
        algorithm=algorithm,
        username=username,
        realm=realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    return DigestCredentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )


# -- RFC example vectors ----------------------------------------------------------------

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_VECTORS = [
    # RFC 7616 §3.9.1: the same request answered with both algorithms.
    pytest.param("MD5", "8ca523f5e9506fed4657c9700eebdbec", id="rfc7616-md5"),
    pytest.param(
        "SHA-256",
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        id="rfc7616-sha256",
    ),
]


@pytest.mark.parametrize(("algorithm", "expected"), RFC7616_VECTORS)
def test_rfc7616_vectors_independent_formula(algorithm: str, expected: str) -> None:
    got = client_response(
        algorithm=algorithm,
        username="Mufasa",
        realm="http-auth@example.org",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        nonce=RFC7616_NONCE,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert got == expected


@pytest.mark.parametrize(("algorithm", "expected"), RFC7616_VECTORS)
def test_rfc7616_vectors_module_formula(algorithm: str, expected: str) -> None:
    creds = DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=expected,
        algorithm=algorithm,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    factory = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5
    assert _expected_response(factory, False, creds, "GET", "Circle of Life") == expected


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 §3.5 (note the capital O in this RFC's password).
    creds = DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    expected = "6629fae49393a05397450978507c4ef1"
    assert _expected_response(hashlib.md5, False, creds, "GET", "Circle Of Life") == expected


RFC7616_HEADER = """Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""""


def test_parse_rfc7616_example_header() -> None:
    creds = parse_authorization(RFC7616_HEADER)
    assert creds == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        algorithm="SHA-256",
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    )


def test_rfc7616_example_is_not_our_nonce() -> None:
    # Right digest for the RFC's nonce, but we never issued it.
    auth = DigestAuthenticator("http-auth@example.org", SECRET)
    creds = parse_authorization(RFC7616_HEADER)
    result = auth.verify(creds, "GET", lambda u: "Circle of Life", NOW)
    assert result == AuthFailed(reason=AuthFailure.NONCE_NOT_OURS)


# -- challenges ---------------------------------------------------------------------------


def test_challenge_offers_sha256_then_md5(auth: DigestAuthenticator) -> None:
    values = auth.challenge(NOW)
    params = [challenge_params(v) for v in values]
    assert [p["algorithm"] for p in params] == ["SHA-256", "MD5"]
    for p in params:
        assert p["realm"] == REALM
        assert p["qop"] == "auth"
        assert "stale" not in p
        assert auth.nonce_issued_at(p["nonce"]) == NOW
    assert params[0]["nonce"] == params[1]["nonce"]
    assert values[0] == (
        f'Digest realm="{REALM}", nonce="{params[0]["nonce"]}", qop="auth", algorithm=SHA-256'
    )


def test_challenge_stale(auth: DigestAuthenticator) -> None:
    for value in auth.challenge(NOW, stale=True):
        assert challenge_params(value)["stale"] == "true"


def test_challenge_quotes_realm() -> None:
    auth = DigestAuthenticator('odd "realm" \\ here', SECRET)
    value = auth.challenge(NOW)[0]
    assert 'realm="odd \\"realm\\" \\\\ here"' in value
    assert challenge_params(value)["realm"] == 'odd "realm" \\ here'


def test_challenge_algorithms_configurable() -> None:
    auth = DigestAuthenticator(REALM, SECRET, algorithms=("sha-256",))
    assert [challenge_params(v)["algorithm"] for v in auth.challenge(NOW)] == ["SHA-256"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"realm": ""}, "realm", id="empty-realm"),
        pytest.param({"secret": b"short"}, "at least 16", id="short-secret"),
        pytest.param({"nonce_ttl": 0.0}, "nonce_ttl", id="zero-ttl"),
        pytest.param({"algorithms": ()}, "at least one", id="no-algorithms"),
        pytest.param({"algorithms": ("SHA-1",)}, "SHA-1", id="unknown-algorithm"),
    ],
)
def test_authenticator_rejects_bad_config(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"realm": REALM, "secret": SECRET} | kwargs
    with pytest.raises(ValueError, match=message):
        DigestAuthenticator(**args)


# -- nonces -------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [0.0, 1e-9, 1234.5678, 1e9], ids=str)
def test_nonce_round_trip(auth: DigestAuthenticator, now: float) -> None:
    nonce = auth.make_nonce(now)
    assert auth.nonce_issued_at(nonce) == now
    assert len(nonce) == 32 and "=" not in nonce


def _flip(nonce: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(nonce))
    raw[index] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda a: _flip(a.make_nonce(NOW), 0), id="time-tampered"),
        pytest.param(lambda a: _flip(a.make_nonce(NOW), 20), id="mac-tampered"),
        pytest.param(
            lambda a: DigestAuthenticator(REALM, b"x" * 32).make_nonce(NOW), id="other-secret"
        ),
        pytest.param(
            lambda a: DigestAuthenticator("other.example", SECRET).make_nonce(NOW),
            id="other-realm",
        ),
        pytest.param(lambda a: a.make_nonce(NOW)[:-4], id="truncated"),
        pytest.param(lambda a: a.make_nonce(NOW) + "AAAA", id="extended"),
        pytest.param(lambda a: a.make_nonce(NOW)[:10] + "!" + a.make_nonce(NOW)[10:], id="junk"),
        pytest.param(lambda a: "", id="empty"),
        pytest.param(lambda a: "nonce-\u00e9", id="non-ascii"),
        pytest.param(lambda a: "abc", id="bad-base64"),
    ],
)
def test_forged_nonces_are_not_ours(
    auth: DigestAuthenticator, forge: Callable[[DigestAuthenticator], str]
) -> None:
    nonce = forge(auth)
    assert auth.nonce_issued_at(nonce) is None
    creds = creds_for(auth, nonce=nonce)
    assert auth.verify(creds, "INVITE", lookup, NOW) == AuthFailed(
        reason=AuthFailure.NONCE_NOT_OURS
    )


# -- verification -------------------------------------------------------------------------

OK = AuthOk(username="trunk1")


def _fail(reason: AuthFailure) -> AuthFailed:
    return AuthFailed(reason=reason)


# (creds kwargs, verify kwargs, expected)
VERIFY_CASES = [
    pytest.param({}, {}, OK, id="sha256-auth"),
    pytest.param({"algorithm": "MD5"}, {}, OK, id="md5-auth"),
    pytest.param({"algorithm": "MD5", "qop": None}, {}, OK, id="md5-rfc2069-no-qop"),
    pytest.param({"algorithm": "SHA-256-sess"}, {}, OK, id="sha256-sess"),
    pytest.param({"algorithm": "MD5-sess"}, {}, OK, id="md5-sess"),
    pytest.param({"algorithm": "sha-256"}, {}, OK, id="algorithm-any-case"),
    pytest.param({"qop": "AUTH"}, {}, OK, id="qop-any-case"),
    pytest.param({"method": "BYE"}, {"method": "BYE"}, OK, id="other-method"),
    pytest.param({}, {"request_uri": INVITE_URI}, OK, id="uri-matches"),
    pytest.param({"issued": NOW - 300.0}, {}, OK, id="age-equals-ttl"),
    pytest.param({"issued": NOW + 0.5}, {}, OK, id="slightly-future"),
    pytest.param(
        {"username": "alice", "password": "Circle of Life"},
        {},
        AuthOk(username="alice"),
        id="second-user",
    ),
    pytest.param({"issued": NOW - 300.001}, {}, AuthStale(username="trunk1"), id="expired"),
    pytest.param({"issued": NOW + 10.0}, {}, AuthStale(username="trunk1"), id="future"),
    pytest.param(
        {"issued": NOW - 301.0, "password": "nope"},
        {},
        _fail(AuthFailure.WRONG_RESPONSE),
        id="expired-wrong-digest-not-stale",
    ),
    pytest.param({"password": "nope"}, {}, _fail(AuthFailure.WRONG_RESPONSE), id="wrong-password"),
    pytest.param({"method": "REGISTER"}, {}, _fail(AuthFailure.WRONG_RESPONSE), id="wrong-method"),
    pytest.param({"username": "mallory"}, {}, _fail(AuthFailure.UNKNOWN_USER), id="unknown-user"),
    pytest.param(
        {"realm": "other.example"}, {}, _fail(AuthFailure.REALM_MISMATCH), id="realm-mismatch"
    ),
    pytest.param(
        {"algorithm": "SHA-512-256"},
        {},
        _fail(AuthFailure.UNSUPPORTED_ALGORITHM),
        id="sha512-256",
    ),
    pytest.param(
        {"algorithm": "SHA-256", "qop": None}, {}, _fail(AuthFailure.QOP_REQUIRED), id="sha-no-qop"
    ),
    pytest.param(
        {"algorithm": "MD5-sess", "qop": None},
        {},
        _fail(AuthFailure.QOP_REQUIRED),
        id="sess-no-qop",
    ),
    pytest.param({"qop": "auth-int"}, {}, _fail(AuthFailure.UNSUPPORTED_QOP), id="auth-int"),
    pytest.param({"cnonce": None}, {}, _fail(AuthFailure.MISSING_CNONCE), id="qop-without-cnonce"),
    pytest.param({"nc": None}, {}, _fail(AuthFailure.MISSING_CNONCE), id="qop-without-nc"),
    pytest.param(
        {},
        {"request_uri": "sip:+18005550199@dce.example.net"},
        _fail(AuthFailure.URI_MISMATCH),
        id="uri-mismatch",
    ),
]


@pytest.mark.parametrize(("creds_kw", "verify_kw", "expected"), VERIFY_CASES)
def test_verify(
    auth: DigestAuthenticator,
    creds_kw: dict[str, Any],
    verify_kw: dict[str, Any],
    expected: object,
) -> None:
    creds = creds_for(auth, **creds_kw)
    method = verify_kw.pop("method", "INVITE")
    assert auth.verify(creds, method, lookup, NOW, **verify_kw) == expected


def test_verify_accepts_upper_case_hex(auth: DigestAuthenticator) -> None:
    creds = creds_for(auth)
    shouty = DigestCredentials(**{**_fields(creds), "response": creds.response.upper()})
    assert auth.verify(shouty, "INVITE", lookup, NOW) == OK


def test_verify_refuses_userhash(auth: DigestAuthenticator) -> None:
    creds = DigestCredentials(**{**_fields(creds_for(auth)), "userhash": True})
    assert auth.verify(creds, "INVITE", lookup, NOW) == _fail(AuthFailure.USERHASH_UNSUPPORTED)


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess"])
def test_md5_refused_when_not_offered(algorithm: str) -> None:
    auth = DigestAuthenticator(REALM, SECRET, algorithms=("SHA-256",))
    creds = creds_for(auth, algorithm=algorithm)
    assert auth.verify(creds, "INVITE", lookup, NOW) == _fail(AuthFailure.UNSUPPORTED_ALGORITHM)


def test_full_exchange_through_header_text(auth: DigestAuthenticator) -> None:
    """Challenge -> UAC computes from the header text -> Authorization text -> verify."""
    for value in auth.challenge(NOW):
        p = challenge_params(value)
        response = client_response(
            algorithm=p["algorithm"],
            username="trunk1",
            realm=p["realm"],
            password="s3cret",
            method="INVITE",
            uri=INVITE_URI,
            nonce=p["nonce"],
            qop="auth",
            nc="00000001",
            cnonce="xyz",
        )
        header = (
            f'Digest username="trunk1", realm="{p["realm"]}", nonce="{p["nonce"]}", '
            f'uri="{INVITE_URI}", response="{response}", algorithm={p["algorithm"]}, '
            f'qop=auth, nc=00000001, cnonce="xyz"'
        )
        creds = parse_authorization(header)
        assert auth.verify(creds, "INVITE", lookup, NOW + 5) == OK
        assert auth.verify(creds, "INVITE", lookup, NOW + 301) == AuthStale(username="trunk1")


def _fields(creds: DigestCredentials) -> dict[str, Any]:
    return {name: getattr(creds, name) for name in creds.__struct_fields__}


# -- parsing ------------------------------------------------------------------------------

_BASE = 'username="u", realm="r", nonce="n", uri="sip:x@y", response="abc123"'


def _creds(**changes: Any) -> DigestCredentials:
    fields: dict[str, Any] = {
        "username": "u",
        "realm": "r",
        "nonce": "n",
        "uri": "sip:x@y",
        "response": "abc123",
    }
    return DigestCredentials(**(fields | changes))


PARSE_CASES = [
    pytest.param(f"Digest {_BASE}", _creds(), id="minimal-defaults-md5"),
    pytest.param(f"digest {_BASE}", _creds(), id="scheme-any-case"),
    pytest.param(
        'Digest USERNAME="u", Realm="r", NONCE="n", Uri="sip:x@y", RESPONSE="abc123"',
        _creds(),
        id="names-any-case",
    ),
    pytest.param(
        'Digest username = "u" ,realm="r",nonce="n" , uri ="sip:x@y",response= "abc123"',
        _creds(),
        id="whitespace-around-separators",
    ),
    pytest.param(f"  Digest   {_BASE} ,, ", _creds(), id="stray-commas-and-space"),
    pytest.param(f"Digest\r\n {_BASE}", _creds(), id="folded-after-scheme"),
    pytest.param(
        'Digest username="a, b", realm="r", nonce="n", uri="sip:x@y", response="abc123"',
        _creds(username="a, b"),
        id="comma-inside-quotes",
    ),
    pytest.param(
        r'Digest username="say \"hi\" \\o/", realm="r", nonce="n", uri="sip:x@y",'
        ' response="abc123"',
        _creds(username='say "hi" \\o/'),
        id="escapes",
    ),
    pytest.param(
        'Digest username="", realm="r", nonce="n", uri="sip:x@y", response="abc123"',
        _creds(username=""),
        id="empty-quoted",
    ),
    pytest.param(
        f"Digest {_BASE}, algorithm=SHA-256, qop=auth, nc=0000000a, cnonce=c1",
        _creds(algorithm="SHA-256", qop="auth", nc="0000000a", cnonce="c1"),
        id="unquoted-tokens",
    ),
    pytest.param(
        f'Digest {_BASE}, algorithm="MD5", qop="auth", nc="00000001"',
        _creds(algorithm="MD5", qop="auth", nc="00000001"),
        id="quoted-tokens",
    ),
    pytest.param(
        f'Digest {_BASE}, opaque="o", userhash=TRUE, foo=bar, x-y="z,z"',
        _creds(opaque="o", userhash=True),
        id="extensions-ignored",
    ),
    pytest.param(
        "Digest username=u, realm=r, nonce=n/+=, uri=sip:x@y, response=abc123",
        _creds(nonce="n/+="),
        id="everything-unquoted",
    ),
    pytest.param(
        'Digest username="J\u00fcrgen", realm="r", nonce="n", uri="sip:x@y", response="abc123"',
        _creds(username="J\u00fcrgen"),
        id="utf8-username",
    ),
]


@pytest.mark.parametrize(("value", "expected"), PARSE_CASES)
def test_parse_authorization(value: str, expected: DigestCredentials) -> None:
    assert parse_authorization(value) == expected


MALFORMED = [
    pytest.param("", "missing scheme", id="empty"),
    pytest.param("Digest", "lack username, realm, nonce, uri, response", id="no-params"),
    pytest.param(
        'Digest username="u", nonce="n", uri="sip:x@y", response="abc"', "lack realm", id="no-realm"
    ),
    pytest.param('Digest username="u', "unterminated", id="unterminated"),
    pytest.param('Digest username="u\\', "unterminated", id="trailing-backslash"),
    pytest.param("Digest username", "expected '='", id="no-equals"),
    pytest.param('Digest username "u"', "expected '='", id="missing-equals"),
    pytest.param("Digest username=, realm=r", "empty value", id="empty-token"),
    pytest.param('Digest username="u" "v"', "expected ','", id="junk-after-value"),
    pytest.param('Digest username="u"x', "expected ','", id="token-glued-to-quote"),
    pytest.param('Digest ="u"', "parameter name", id="no-name"),
    pytest.param('Digest,username="u"', "after scheme", id="comma-after-scheme"),
    pytest.param(f'Digest {_BASE}, username="v"', "duplicate parameter 'username'", id="dup"),
    pytest.param(
        'Digest username="u", realm="r", nonce="n", uri="sip:x@y", response="xyz"',
        "not hex",
        id="response-not-hex",
    ),
    pytest.param(f"Digest {_BASE}, nc=1", "8 hex digits", id="short-nc"),
    pytest.param(f"Digest {_BASE}, nc=0000000g", "8 hex digits", id="nc-not-hex"),
    pytest.param(f"Digest {_BASE}, userhash=maybe", "userhash", id="userhash-not-bool"),
]


@pytest.mark.parametrize(("value", "message"), MALFORMED)
def test_parse_authorization_malformed(value: str, message: str) -> None:
    with pytest.raises(DigestParseError, match=re.escape(message)) as info:
        parse_authorization(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, SipParseError)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer abc", "NTLM"], ids=["basic", "bearer", "ntlm"]
)
def test_parse_authorization_other_scheme(value: str) -> None:
    with pytest.raises(UnsupportedScheme, match="not Digest"):
        parse_authorization(value)


# -- property tests -------------------------------------------------------------------------

_quoted_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
_hex = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=64)
_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=16,
)


@st.composite
def credentials(draw: st.DrawFn) -> DigestCredentials:
    return DigestCredentials(
        username=draw(_quoted_text),
        realm=draw(_quoted_text),
        nonce=draw(_quoted_text),
        uri=draw(_quoted_text),
        response=draw(_hex),
        algorithm=draw(st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"]) | _token),
        qop=draw(st.none() | st.sampled_from(["auth", "auth-int"]) | _token),
        nc=draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)),
        cnonce=draw(st.none() | _quoted_text),
        opaque=draw(st.none() | _quoted_text),
        userhash=draw(st.booleans()),
    )


@given(credentials())
def test_format_parse_round_trip(creds: DigestCredentials) -> None:
    assert parse_authorization(format_authorization(creds)) == creds


def _test_quote(text: str) -> str:
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


@given(
    credentials(),
    st.randoms(use_true_random=False),
    st.lists(st.sampled_from(["", " ", "\t", "  ", "\r\n "]), min_size=40, max_size=40),
)
def test_parse_any_order_case_and_spacing(
    creds: DigestCredentials, rnd: Any, spaces: list[str]
) -> None:
    """Written by a test-local serializer: shuffled, random name case, random LWS."""
    items: list[tuple[str, str]] = [
        ("username", _test_quote(creds.username)),
        ("realm", _test_quote(creds.realm)),
        ("nonce", _test_quote(creds.nonce)),
        ("uri", _test_quote(creds.uri)),
        ("response", _test_quote(creds.response)),
        ("algorithm", _test_quote(creds.algorithm)),
    ]
    for name in ("qop", "nc", "cnonce", "opaque"):
        value = getattr(creds, name)
        if value is not None:
            items.append((name, _test_quote(value)))
    if creds.userhash:
        items.append(("userhash", "true"))
    rnd.shuffle(items)
    it = iter(spaces)
    parts = []
    for name, value in items:
        cased = "".join(c.upper() if rnd.random() < 0.5 else c for c in name)
        parts.append(f"{cased}{next(it)}={next(it)}{value}")
    header = "Digest " + ",".join(f"{next(it)}{p}" for p in parts)
    assert parse_authorization(header) == creds
