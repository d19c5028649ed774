"""store/cdrtext.py: the text rule of CDR values (escapes, limits, the inverse), no database."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.cdr import Cdr, Disposition
from store.cdrtext import (
    AUCTION_TEXT_LIMIT,
    COMPLIANCE_ITEM_LIMIT,
    COMPLIANCE_MAX_ITEMS,
    TEXT_LIMITS,
    clean_cdr,
    clean_text,
    restore_text,
)

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
# Any str a header can turn into: surrogateescape bytes and every other code point.
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=())),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
)


def wire(data: bytes) -> str:
    """What switch/message.py makes of header bytes."""
    return data.decode("utf-8", "surrogateescape")


def storable(value: str) -> bool:
    """Valid UTF-8 with no NUL and no C0/C1 control character: what PostgreSQL text takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(unicodedata.category(c) == "Cc" for c in value)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("a84dfe-1@192.0.2.1", "a84dfe-1@192.0.2.1"),
        ("caf\u00e9 \u2603 \ufffd", "caf\u00e9 \u2603 \ufffd"),  # valid UTF-8 is kept
        (wire(b"abc\xff\xfe"), "abc\\xff\\xfe"),
        (wire(b"\xc3"), "\\xc3"),  # a truncated UTF-8 sequence: its byte
        ("a\x00b", "a\\x00b"),
        ("\t\r\x1b[31m\x7f", "\\x09\\x0d\\x1b[31m\\x7f"),
        ("\x85\x9f", "\\u0085\\u009f"),  # C1 control characters
        ("\ud800", "\\ud800"),  # a lone surrogate that is not a byte
        ("C:\\x00", "C:\\\\x00"),  # a literal backslash is doubled: never read as an escape
    ],
    ids=["plain", "unicode", "invalid-bytes", "cut-sequence", "nul", "c0-del", "c1",
         "surrogate", "backslash"],
)  # fmt: skip
def test_escapes(raw: str, stored: str) -> None:
    assert clean_text(raw, 512) == stored
    assert restore_text(stored) == raw


def test_a_literal_escape_and_the_byte_it_spells_stay_apart() -> None:
    literal, byte = clean_text("\\xff", 64), clean_text(wire(b"\xff"), 64)
    assert literal != byte
    assert (restore_text(literal), restore_text(byte)) == ("\\xff", wire(b"\xff"))


def test_clean_text_returns_the_same_object_when_nothing_changes() -> None:
    value = "sip:buyer@192.0.2.10:5060"
    assert clean_text(value, 64) is value


def test_truncation_marker_and_limit() -> None:
    out = clean_text("x" * 10_000, 256)
    assert 250 <= len(out) <= 256  # the marker is sized for the longest count it could show
    assert out.startswith("x" * 200) and out.endswith("]")
    # The marker says how many characters of the value were dropped: head + dropped = whole.
    head, _, marker = out.rpartition("\\[truncated ")
    assert len(head) + int(marker[:-1]) == 10_000


def test_truncation_never_cuts_an_escape_in_half() -> None:
    value = wire(b"\xff" * 100)  # escapes to 400 characters of \xff
    for limit in range(24, 64):
        out = clean_text(value, limit)
        head, _, marker = out.rpartition("\\[truncated ")
        assert len(out) <= limit and len(head) % 4 == 0, (limit, out)
        assert restore_text(head) == wire(b"\xff" * (len(head) // 4))
        assert len(head) // 4 + int(marker[:-1]) == 100


def test_truncating_a_huge_value_costs_in_proportion_to_the_limit() -> None:
    value = wire(b"\xff" * 60_000)  # the largest a datagram can carry
    out = clean_text(value, 512)
    assert out.endswith(f"\\[truncated {60_000 - out.count(chr(92) + 'x')}]")


def test_a_truncated_value_does_not_pretend_to_restore() -> None:
    with pytest.raises(ValueError, match="truncated"):
        restore_text(clean_text("y" * 1000, 64))


@settings(max_examples=400, deadline=None)
@given(value=ANY_TEXT, limit=st.integers(24, 300))
def test_property_any_text_is_storable_within_its_limit_and_lossless(
    value: str, limit: int
) -> None:
    out = clean_text(value, limit)
    assert storable(out)
    assert len(out) <= limit
    full = clean_text(value, 10**9)
    if len(full) <= limit:
        assert out == full and restore_text(out) == value
    else:
        # The head gives back a prefix of the value; the marker counts the rest.
        head, sep, marker = out.rpartition("\\[truncated ")
        assert sep and marker.endswith("]")
        assert full.startswith(head)
        kept = restore_text(head)
        assert value.startswith(kept) and len(kept) + int(marker[:-1]) == len(value)
    # Cleaning what was cleaned (a spool line read back) changes nothing.
    assert clean_text(out, limit, escaped=True) == out


def cdr(**fields: object) -> Cdr:
    base: dict[str, object] = {
        "call_id": "0123456789abcdef01234567",
        "a_call_id": "a-1@192.0.2.1",
        "received_at": T0,
        "ended_at": T0,
        "disposition": Disposition.FAILED,
        "sip_status": 480,
    }
    base.update(fields)
    return Cdr(**base)  # type: ignore[arg-type]


def test_clean_cdr_leaves_a_clean_cdr_alone() -> None:
    c = cdr(caller="+13122600123", compliance=["dnc:pass"], auction={"rule": "none", "seq": 5})
    assert clean_cdr(c) is c


def test_clean_cdr_cleans_every_text_column_and_copies() -> None:
    bad = wire(b"x\xff\x00")
    fields = {name: bad for name in TEXT_LIMITS}
    c = cdr(**fields)
    out = clean_cdr(c)
    assert out is not c and c.a_call_id == bad  # the caller's record is not modified
    for name in TEXT_LIMITS:
        assert getattr(out, name) == "x\\xff\\x00", name


def test_clean_cdr_compliance_and_auction() -> None:
    bad = wire(b"\xfe\x00")
    auction = {
        "campaign_id": bad,
        "excluded": {bad: "state", "b/p": bad},
        "order": [{"buyer_id": bad, "bid": "1.000000", "rtb": False, "min_duration": 0}],
        "long": "z" * 2000,
        "seq": 7,
        "price": None,
    }
    c = cdr(compliance=["dnc:pass", bad, *(f"r{i}:pass" for i in range(100))], auction=auction)
    out = clean_cdr(c)
    assert out.compliance[:2] == ["dnc:pass", "\\xfe\\x00"]
    assert len(out.compliance) == COMPLIANCE_MAX_ITEMS
    assert out.compliance[-1] == f"\\[truncated {102 - (COMPLIANCE_MAX_ITEMS - 1)}]"
    assert out.auction is not None
    assert out.auction["campaign_id"] == "\\xfe\\x00"
    assert out.auction["excluded"] == {"\\xfe\\x00": "state", "b/p": "\\xfe\\x00"}
    assert out.auction["order"][0]["buyer_id"] == "\\xfe\\x00"
    assert len(out.auction["long"]) == AUCTION_TEXT_LIMIT
    assert (out.auction["seq"], out.auction["price"]) == (7, None)
    assert c.auction is auction and auction["campaign_id"] == bad  # untouched
    # The cleaned record encodes, as the spool and the COPY need.
    msgspec.json.encode(out)


def test_auction_keys_that_collide_after_truncation_are_both_kept() -> None:
    a, b = "k" * 600 + "a", "k" * 600 + "b"
    out = clean_cdr(cdr(auction={a: 1, b: 2}))
    assert out.auction is not None and sorted(out.auction.values()) == [1, 2]


def test_values_of_the_wrong_type_are_left_for_the_writer_to_reject() -> None:
    c = cdr(caller=12345, price=1.5)
    assert clean_cdr(c) is c


# Plain printable ASCII (what nearly every CDR holds: the quick check's case), near and past
# each limit, mixed with anything a header can hold.
PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
SOME_TEXT = st.one_of(PLAIN_TEXT, ANY_TEXT, st.none())


@settings(max_examples=300, deadline=None)
@given(
    texts=st.fixed_dictionaries({name: SOME_TEXT for name in TEXT_LIMITS}),
    compliance=st.lists(st.one_of(PLAIN_TEXT, ANY_TEXT), max_size=COMPLIANCE_MAX_ITEMS + 2),
    auction=st.one_of(st.none(), st.dictionaries(PLAIN_TEXT, st.one_of(PLAIN_TEXT, ANY_TEXT,
                                                                       st.integers()))),
    escaped=st.booleans(),
)
def test_property_every_value_is_stored_by_the_rule_whatever_path_decides(
    texts: dict[str, str | None], compliance: list[str], auction: dict[str, object] | None,
    escaped: bool,
) -> None:
    fields = {k: v for k, v in texts.items() if k not in ("call_id", "a_call_id") or v is not None}
    c = cdr(**fields, compliance=compliance, auction=auction)
    out = clean_cdr(c, escaped=escaped)
    for name, limit in TEXT_LIMITS.items():
        value = getattr(c, name)
        want = clean_text(value, limit, escaped=escaped) if value is not None else None
        assert getattr(out, name) == want, name
    kept = [clean_text(v, COMPLIANCE_ITEM_LIMIT, escaped=escaped) for v in compliance]
    if len(kept) > COMPLIANCE_MAX_ITEMS:
        kept = [*kept[: COMPLIANCE_MAX_ITEMS - 1],
                f"\\[truncated {len(kept) - COMPLIANCE_MAX_ITEMS + 1}]"]
    assert out.compliance == kept
    msgspec.json.encode(out)  # storable: the spool and the COPY encode it
    if out == c:
        assert out is c  # nothing changed: the same record, not a copy
