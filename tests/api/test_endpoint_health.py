"""An endpoint read through the admin API shows its health, as the switch's probes see it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.app import mount_api
from api.routes import API_PREFIX
from compliance.check import Gate
from compliance.erasure import Suppression
from store.database import Store
from tests.api.conftest import ADMIN_TOKEN, Api, seed_config
from tests.conftest import FakeClock

V = API_PREFIX
SINCE = datetime(2026, 12, 3, 10, 0, 5, tzinfo=UTC)
PROBED = {
    # b1's endpoint URI (tests.api.conftest.seed_config): down after two silent probes.
    "sip:b1@192.0.2.10": {
        "state": "down", "probing": True, "since": SINCE, "last_status": None,
        "last_probe_at": SINCE, "failures": 2, "successes": 0,
    },
}  # fmt: skip


def health_of(uri: str) -> Mapping[str, Any]:
    return PROBED.get(uri, {"state": "unknown", "probing": False})


@pytest.fixture
async def probed_api(database_url: str, pg_schema: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The API as the switch mounts it, with the switch's health view of endpoint URIs."""
    store = Store(schema=pg_schema, max_size=2)
    await store.connect(database_url)
    await store.migrate()
    await store.exchange.upsert_config(seed_config())
    clock = FakeClock()
    gate = Gate(suppression=Suppression(secrets.token_bytes(32)))

    async def on_change() -> None:
        return None

    root = web.Application()
    mount_api(
        root,
        store,
        admin_token=ADMIN_TOKEN,
        on_change=on_change,
        gate=gate,
        wall=clock.wall,
        endpoint_health=health_of,
    )
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(root, host="127.0.0.1")
    )
    await client.start_server()
    try:
        yield Api(client, store, gate, clock)
    finally:
        await client.close()
        await store.close()


async def test_an_endpoint_read_shows_its_health(probed_api: Api) -> None:
    api = probed_api
    got = await api.call("GET", f"{V}/buyers/b1/endpoints/e1")
    assert got.status == 200, got.body
    assert got.body == {
        "id": "e1", "uri": "sip:b1@192.0.2.10", "max_concurrent": 0, "active": True,
        "health": {"state": "down", "probing": True, "since": "2026-12-03T10:00:05Z",
                   "last_status": None, "last_probe_at": "2026-12-03T10:00:05Z",
                   "failures": 2, "successes": 0},
    }  # fmt: skip
    listed = await api.call("GET", f"{V}/buyers/b1/endpoints")
    assert listed.body["items"] == [got.body]
    # The buyer's own key (b1's) sees its endpoint's health too.
    own = await api.call("GET", f"{V}/buyers/b1/endpoints/e1", who="own")
    assert own.status == 200 and own.body["health"]["state"] == "down"

    # A new endpoint: the switch does not probe its URI yet.
    r = await api.call(
        "POST", f"{V}/buyers/b1/endpoints", json={"id": "e2", "uri": "sip:new@192.0.2.11"}
    )
    assert r.status == 201, r.body
    assert r.body["health"] == {
        "state": "unknown", "probing": False, "since": None, "last_status": None,
        "last_probe_at": None, "failures": 0, "successes": 0,
    }  # fmt: skip


async def test_without_a_switch_endpoints_read_as_not_probed(api: Api) -> None:
    got = await api.call("GET", f"{V}/buyers/b2/endpoints/e1")
    assert got.status == 200
    assert got.body["health"]["state"] == "unknown" and got.body["health"]["probing"] is False
