"""/api/v1/calls: filters, cursor pagination over 250 CDRs, the auction record and its redaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from api.calls import decode_cursor, encode_cursor
from api.routes import API_PREFIX
from store.cdr import Disposition
from tests.api.conftest import Api, auction_record, make_cdr

V = API_PREFIX
T0 = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)  # the pages cross the October/November partitions


def _cdrs() -> list[Any]:
    """250 CDRs, 4 hours apart in pairs (so every timestamp is shared by two calls): 3 of 5
    to b1, the rest to b2; every 10th is a no_buyer call with no buyer at all."""
    out = []
    for i in range(250):
        at = T0 + timedelta(hours=4 * (i // 2))
        buyer = "b1" if i % 5 < 3 else "b2"
        disposition = Disposition.ANSWERED
        if i % 10 == 9:
            buyer, disposition = "", Disposition.NO_BUYER
        out.append(
            make_cdr(
                i,
                at=at,
                buyer_id=buyer or None,
                disposition=disposition,
                campaign_id="c1" if i % 2 else "c2",
                trunk_id="t1" if i % 3 else "t2",
            )
        )
    return out


async def _walk(api: Api, query: str, who: str = "admin", limit: int = 100) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        q = f"{query}&limit={limit}" if query else f"limit={limit}"
        if cursor is not None:
            q += f"&cursor={cursor}"
        r = await api.call("GET", f"{V}/calls?{q}", who=who)
        assert r.status == 200, r.body
        assert len(r.body["items"]) <= limit
        items += r.body["items"]
        pages += 1
        cursor = r.body["next_cursor"]
        if cursor is None:
            break
        assert len(r.body["items"]) == limit  # only the last page is short
        assert pages < 100
    return items


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return item["received_at"], item["call_id"]


async def test_pagination_walks_every_cdr_once_newest_first(api: Api) -> None:
    cdrs = _cdrs()
    await api.insert_cdrs(cdrs)
    items = await _walk(api, "", limit=100)
    assert len(items) == 250
    assert len({i["call_id"] for i in items}) == 250
    keys = [(datetime.fromisoformat(i["received_at"]), i["call_id"]) for i in items]
    assert keys == sorted(keys, reverse=True)
    # Small pages give the same sequence: ties on received_at are ordered by call_id.
    assert [i["call_id"] for i in await _walk(api, "", limit=7)] == [i["call_id"] for i in items]


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("buyer_id=b1", lambda c: c.buyer_id == "b1"),
        ("disposition=no_buyer", lambda c: c.disposition == "no_buyer"),
        ("campaign_id=c1", lambda c: c.campaign_id == "c1"),
        ("trunk_id=t2", lambda c: c.trunk_id == "t2"),
        (
            "from=" + quote((T0 + timedelta(days=10)).isoformat()),
            lambda c: c.received_at >= T0 + timedelta(days=10),
        ),
        ("to=2026-11-05T00:00:00Z", lambda c: c.received_at < datetime(2026, 11, 5, tzinfo=UTC)),
        # An unescaped "+" in a query string arrives as a space; the offset still counts.
        (
            "from=2026-11-05T00:00:00+01:00&to=2026-11-09",
            lambda c: (
                datetime(2026, 11, 4, 23, tzinfo=UTC)
                <= c.received_at
                < datetime(2026, 11, 9, tzinfo=UTC)
            ),
        ),
        (
            "buyer_id=b2&disposition=answered&campaign_id=c2",
            lambda c: c.buyer_id == "b2" and c.campaign_id == "c2",
        ),
    ],
    ids=["buyer", "disposition", "campaign", "trunk", "from", "to", "from-to-offset", "combined"],
)
async def test_filters(api: Api, query: str, expect: Any) -> None:
    cdrs = _cdrs()
    await api.insert_cdrs(cdrs)
    want = sorted(((c.received_at, c.call_id) for c in cdrs if expect(c)), reverse=True)
    got = [
        (datetime.fromisoformat(i["received_at"]), i["call_id"])
        for i in await _walk(api, query, limit=40)
    ]
    assert want and got == want


async def test_buyer_key_pages_only_its_own_calls(api: Api) -> None:
    cdrs = _cdrs()
    await api.insert_cdrs(cdrs)
    mine = await _walk(api, "", who="own", limit=50)
    assert {i["buyer_id"] for i in mine} == {"b1"}
    assert len(mine) == sum(1 for c in cdrs if c.buyer_id == "b1")
    assert all(i["payout"] is None for i in mine)  # the seller's share is hidden from buyers
    # Asking for another buyer's calls gives nothing rather than an error that confirms them.
    r = await api.call("GET", f"{V}/calls?buyer_id=b2", who="own")
    assert r.status == 200 and r.body == {"items": [], "next_cursor": None}


async def test_money_is_decimal_strings(api: Api) -> None:
    await api.insert_cdrs([make_cdr(1, at=T0)])
    item = (await api.call("GET", f"{V}/calls")).body["items"][0]
    assert (item["bid"], item["price"], item["payout"]) == ("10.500000", "7.250000", "5.075000")
    assert item["received_at"] == "2026-10-31T20:00:00Z"
    assert "auction" not in item  # list items leave the auction record to /calls/{id}


async def test_call_detail_with_auction_record(api: Api) -> None:
    await api.insert_cdrs([make_cdr(1, at=T0, auction=auction_record())])
    r = await api.call("GET", f"{V}/calls/call-00001")
    assert r.status == 200
    assert r.body["auction"] == auction_record()
    assert r.body["price"] == "7.250000"

    # b1 won: it sees its own bid, the price and the winner, nothing of b2's bid.
    own = (await api.call("GET", f"{V}/calls/call-00001", who="own")).body["auction"]
    assert own["bids"] == {"b1/p1": "10.500000"}
    assert own["eligible"] == ["b1/p1"]
    assert [o["buyer_id"] for o in own["order"]] == ["b1"]
    assert own["winner"]["buyer_id"] == "b1" and own["price"] == "7.250000"
    assert "7.250000" not in str(own["bids"]) and "b2" not in str(own)
    # b2 does not see b1's call at all.
    assert (await api.call("GET", f"{V}/calls/call-00001", who="other")).status == 404
    assert (await api.call("GET", f"{V}/calls/nope")).status == 404


async def test_loser_sees_no_price(api: Api) -> None:
    # A call b1 ended up with through failover: b2 won the auction but did not answer.
    record = auction_record()
    record["winner"] = record["order"][1]
    await api.insert_cdrs([make_cdr(1, at=T0, auction=record)])
    own = (await api.call("GET", f"{V}/calls/call-00001", who="own")).body["auction"]
    assert own["winner"] is None and own["price"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=501", "limit"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("disposition=won", "disposition"),
        ("cursor=%%%", "cursor"),
        ("cursor=" + encode_cursor(T0, "x")[:-3], "cursor"),
        ("cursor=WzEsMl0", "cursor"),  # base64 of [1,2]: decodes, but is not a cursor
        ("buyer=b1", "buyer"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_bad_query(api: Api, query: str, field: str) -> None:
    r = await api.call("GET", f"{V}/calls?{query}")
    assert r.status == 422, r.body
    assert r.body["detail"]["field"] == field


def test_cursor_round_trip() -> None:
    ts = datetime(2026, 11, 23, 15, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(ts, "call/1=2")) == (ts, "call/1=2")
