"""api/config.py over real HTTP: export the whole config, apply a file with a diff.

The ``api`` fixture stores two trunks (t2 with digest credentials), two campaigns and two
buyers (b1, b2, each with endpoint e1 and profile p1 at 10.50, and an API key).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from api.routes import API_PREFIX
from exchange.models import ExchangeConfig
from store.exchange import hash_api_key
from tests.api.conftest import KEY_B1, Api, seed_config

URL = f"{API_PREFIX}/config"


def file_body(**changes: Any) -> dict[str, Any]:
    """The fixture's config as a config file would hold it (keys and passwords included)."""
    body: dict[str, Any] = msgspec.to_builtins(seed_config())
    for path, value in changes.items():
        node = body
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return body


def paths(diff: dict[str, Any]) -> list[tuple[str, str]]:
    def path(c: dict[str, Any]) -> str:
        own = f"{c['kind']}s/{c['id']}"
        return own if c["buyer_id"] is None else f"buyers/{c['buyer_id']}/{own}"

    return [(c["action"], path(c)) for c in diff["changes"]]


async def test_export_has_the_files_shape_and_no_secrets(api: Api) -> None:
    r = await api.call("GET", URL)
    assert r.status == 200
    cfg = msgspec.convert(r.body, ExchangeConfig)  # the config file's shape exactly
    assert [t.id for t in cfg.trunks] == ["t1", "t2"]
    assert cfg.trunks[1].username is None and cfg.trunks[1].password is None
    assert all(b.api_key is None for b in cfg.buyers)
    assert cfg.buyers[0].profiles[0].bid == Decimal("10.50")
    raw = msgspec.json.encode(r.body).decode()
    assert KEY_B1 not in raw and hash_api_key(KEY_B1) not in raw
    assert '"password"' not in raw
    # An export applies back as no change at all: the secrets it lacks are kept.
    back = await api.call("PUT", URL, json=r.body)
    assert back.status == 200, back.body
    assert back.body["changes"] == [] and back.body["applied"] is False


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_a_buyer_key_may_not(api: Api, method: str) -> None:
    r = await api.call(method, URL, who="own", json=file_body())
    assert r.status == 403


async def test_dry_run_shows_the_diff_and_changes_nothing(api: Api) -> None:
    before = await api.snapshot()
    body = file_body(**{"buyers.0.profiles.0.bid": "13.00", "trunks.0.payout_share": "65"})
    r = await api.call("PUT", f"{URL}?dry_run=true", json=body)
    assert r.status == 200, r.body
    assert r.body["applied"] is False and r.body["changed"] == 2
    assert paths(r.body) == [("change", "trunks/t1"), ("change", "buyers/b1/profiles/p1")]
    fields = [c["fields"] for c in r.body["changes"]]
    assert fields == [
        [{"field": "payout_share", "old": '"70"', "new": '"65"', "secret": False}],
        [{"field": "bid", "old": '"10.50"', "new": '"13.00"', "secret": False}],
    ]
    assert await api.snapshot() == before
    assert api.changes == []  # the switch did not reload


async def test_apply_writes_and_reloads(api: Api) -> None:
    body = file_body(**{"buyers.0.profiles.0.bid": "13.00"})
    del body["buyers"][0]["endpoints"][0]  # b1 without e1: kept, unless pruned
    body["buyers"][0]["endpoints"] = [{"id": "e9", "uri": "sip:b1@192.0.2.99"}]
    r = await api.call("PUT", URL, json=body)
    assert r.status == 200, r.body
    assert r.body["applied"] is True
    assert paths(r.body) == [
        ("change", "buyers/b1"),  # e9 now comes first: the failover order changed
        ("add", "buyers/b1/endpoints/e9"),
        ("keep", "buyers/b1/endpoints/e1"),
        ("change", "buyers/b1/profiles/p1"),
    ]
    assert len(api.changes) == 1  # reloaded once, with the new bid
    assert api.changes[0].buyers[0].profiles[0].bid == Decimal("13.00")
    got = await api.call("GET", f"{API_PREFIX}/buyers/b1")
    assert [e["id"] for e in got.body["endpoints"]] == ["e9", "e1"]
    assert got.body["profiles"][0]["bid"] == "13.00"

    pruned = await api.call("PUT", f"{URL}?prune=true", json=body)
    assert paths(pruned.body) == [("remove", "buyers/b1/endpoints/e1")]
    got = await api.call("GET", f"{API_PREFIX}/buyers/b1")
    assert [e["id"] for e in got.body["endpoints"]] == ["e9"]


async def test_prune_removes_what_the_file_does_not_name(api: Api) -> None:
    body = file_body()
    body["buyers"] = body["buyers"][:1]
    body["trunks"] = body["trunks"][:1]
    kept = await api.call("PUT", f"{URL}?dry_run=true", json=body)
    assert paths(kept.body) == [("keep", "trunks/t2"), ("keep", "buyers/b2")]
    assert kept.body["kept"] == 2 and kept.body["removed"] == 0
    r = await api.call("PUT", f"{URL}?prune=true", json=body)
    assert paths(r.body) == [("remove", "trunks/t2"), ("remove", "buyers/b2")]
    assert (await api.call("GET", f"{API_PREFIX}/buyers/b2")).status == 404
    assert (await api.call("GET", f"{API_PREFIX}/trunks/t2")).status == 404


async def test_secrets_in_a_diff_are_masked(api: Api) -> None:
    new_key = "bk_rotated_" + "z" * 24
    body = file_body(**{"buyers.0.api_key": new_key, "trunks.1.password": "new-password-123"})
    r = await api.call("PUT", URL, json=body)
    assert r.status == 200, r.body
    raw = msgspec.json.encode(r.body).decode()
    assert new_key not in raw and "new-password-123" not in raw
    assert [c["fields"] for c in r.body["changes"]] == [
        [{"field": "password", "old": "***", "new": "***", "secret": True}],
        [{"field": "api_key", "old": "***", "new": "***", "secret": True}],
    ]
    # The new key works, the old one no longer does.
    assert (await api.call("GET", f"{API_PREFIX}/buyers/b1", who="own")).status == 401
    mine = await api.call(
        "GET", f"{API_PREFIX}/buyers/b1", who="none",
        headers={"Authorization": f"Bearer {new_key}"},
    )  # fmt: skip
    assert mine.status == 200


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"buyers.0.endpoints.0.uri": "http://not-sip"}, 422, "buyers[0].endpoints[0].uri"),
        ({"buyers.1.profiles.0.campaign_id": "nope"}, 422, "buyers[1].profiles[0].campaign_id"),
        ({"trunks.0.source_ips": ["not-an-ip"]}, 422, "trunks[0].source_ips[0]"),
        ({"campaigns.1.id": "c1"}, 422, "campaigns[1].id"),
        ({"buyers.1.api_key": KEY_B1}, 422, "buyers[1].api_key"),
        ({"campaigns.0.reserve": "1000000"}, 422, "campaigns[0].reserve"),
    ],
    ids=["uri", "unknown-campaign", "cidr", "duplicate-id", "shared-key", "money-max"],
)
async def test_a_bad_file_changes_nothing(
    api: Api, change: dict[str, Any], status: int, field: str
) -> None:
    before = await api.snapshot()
    r = await api.call("PUT", URL, json=file_body(**change))
    assert r.status == status, r.body
    assert r.body["detail"]["field"] == field, r.body
    assert await api.snapshot() == before
    assert api.changes == []


async def test_a_conflict_with_a_kept_object_is_409_naming_it(api: Api) -> None:
    body = file_body()
    # Only c2 in the file (c1 is kept), now also selecting c1's number.
    body["campaigns"] = [{**body["campaigns"][1], "numbers": ["+18005550200", "+18005550100"]}]
    before = await api.snapshot()
    r = await api.call("PUT", URL, json=body)
    assert r.status == 409, r.body
    assert r.body["detail"]["field"].startswith("campaigns/c1"), r.body
    assert await api.snapshot() == before


async def test_a_key_of_a_kept_buyer_is_409(api: Api) -> None:
    body = file_body(**{"buyers.0.api_key": None})
    body["buyers"] = [{**body["buyers"][0], "id": "b7"}]
    body["buyers"][0]["api_key"] = KEY_B1  # b1's key, b1 not in the file (kept)
    before = await api.snapshot()
    r = await api.call("PUT", URL, json=body)
    assert r.status == 409, r.body
    assert r.body["detail"] == "buyer 'b7': its API key is already buyer 'b1''s"
    raw = msgspec.json.encode(r.body).decode()
    assert KEY_B1 not in raw and hash_api_key(KEY_B1) not in raw
    assert await api.snapshot() == before


@pytest.mark.parametrize(
    ("query", "field"), [("dry_run=maybe", "dry_run"), ("force=true", "force")]
)
async def test_bad_query_parameters(api: Api, query: str, field: str) -> None:
    r = await api.call("PUT", f"{URL}?{query}", json=file_body())
    assert r.status == 422 and r.body["detail"]["field"] == field


async def test_body_must_be_a_config(api: Api) -> None:
    r = await api.call("PUT", URL, json={"trunks": [], "sip_listen": "127.0.0.1:5060"})
    assert r.status == 422 and r.body["detail"]["field"] == "sip_listen"
    r = await api.call("PUT", URL, data=b"{", content_type="application/json")
    assert r.status == 400
