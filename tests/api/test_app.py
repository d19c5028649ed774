"""api/app.py: the router's own errors in the API's shape."""

from __future__ import annotations

import pytest

from api.routes import API_PREFIX
from tests.api.conftest import Api
from tests.conftest import FakeClock

V = API_PREFIX


async def test_unknown_route_and_method(api: Api) -> None:
    r = await api.call("GET", f"{V}/nothing")
    assert r.status == 404 and r.body["error"] == "not found"
    r = await api.call("PATCH", f"{V}/trunks")
    assert r.status == 405 and "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]
    assert set(r.body) == {"error", "detail"}
    r = await api.call("GET", f"{V}/nothing", who="none")
    assert r.status == 401


def test_an_empty_admin_token_is_refused() -> None:
    from api.app import build_api
    from store.database import Store

    async def nothing() -> None:
        return None

    with pytest.raises(ValueError, match="admin token"):
        build_api(Store(), admin_token="", on_change=nothing, wall=FakeClock().wall)
