"""api/buyers.py over real HTTP: a buyer's API key, shown once, hashed when stored, rotated."""

from __future__ import annotations

from api.routes import API_PREFIX
from store.exchange import hash_api_key
from tests.api.conftest import Api

V = API_PREFIX


async def test_buyer_round_trip_key_shown_once(api: Api) -> None:
    r = await api.call(
        "POST",
        f"{V}/buyers",
        json={
            "id": "b9",
            "name": "Nine",
            "endpoints": [{"id": "e1", "uri": "sip:nine@192.0.2.9"}],
            "profiles": [{"id": "p1", "campaign_id": "c2", "bid": "2.5"}],
        },
    )
    assert r.status == 201, r.body
    key = r.body["api_key"]
    assert key.startswith("dce_") and len(key) > 32
    rows = await api.rows("SELECT api_key_hash FROM buyers WHERE id = 'b9'")
    assert rows == [{"api_key_hash": hash_api_key(key)}]  # only the hash is stored

    got = await api.call("GET", f"{V}/buyers/b9")
    assert "api_key" not in got.body
    assert [e["id"] for e in got.body["endpoints"]] == ["e1"]
    assert got.body["profiles"][0]["bid"] == "2.5"
    listed = await api.call("GET", f"{V}/buyers")
    assert all("api_key" not in b for b in listed.body["items"])

    # The generated key works, for b9 only.
    api_tokens = {"Authorization": f"Bearer {key}"}
    mine = await api.call("GET", f"{V}/buyers/b9/profiles", who="none", headers=api_tokens)
    assert mine.status == 200
    theirs = await api.call("GET", f"{V}/buyers/b1/profiles", who="none", headers=api_tokens)
    assert theirs.status == 404

    # Rotation by PATCH: the old key stops working, the new one is never echoed.
    new_key = "rotated-key-" + "9" * 20
    r = await api.call(
        "PATCH", f"{V}/buyers/b9", who="none", headers=api_tokens, json={"api_key": new_key}
    )
    assert r.status == 200 and "api_key" not in r.body
    old = await api.call("GET", f"{V}/buyers/b9", who="none", headers=api_tokens)
    assert old.status == 401
    new = await api.call(
        "GET", f"{V}/buyers/b9", who="none", headers={"Authorization": f"Bearer {new_key}"}
    )
    assert new.status == 200 and new.body["name"] == "Nine"

    # PUT keeps endpoints and profiles (they have their own routes).
    r = await api.call("PUT", f"{V}/buyers/b9", json={"id": "b9", "name": "Nine!"})
    assert r.status == 200 and r.body["name"] == "Nine!" and len(r.body["profiles"]) == 1

    assert (await api.call("DELETE", f"{V}/buyers/b9")).status == 204
    assert await api.rows("SELECT id FROM profiles WHERE buyer_id = 'b9'") == []


async def test_given_api_key_is_returned_once_and_duplicates_refused(api: Api) -> None:
    key = "my-own-key-" + "x" * 20
    r = await api.call("POST", f"{V}/buyers", json={"id": "b8", "name": "E", "api_key": key})
    assert r.status == 201 and r.body["api_key"] == key
    r = await api.call("POST", f"{V}/buyers", json={"id": "b7", "name": "F", "api_key": key})
    assert r.status == 409
    assert await api.rows("SELECT id FROM buyers WHERE id = 'b7'") == []
