"""/dashboard in headless Chromium against a real ``dce run``: the numbers on the page are the
calls this test made, for the operator and for a buyer, updated live; and /api/v1/reports
agrees.

One switch: an IP trunk (payout share 70 %), campaigns ``main`` and ``second`` (first price,
so a call's price is its buyer's bid) and ``noroute`` (nobody bids); buyer ``b1`` bids 2.50
on ``main``, ``b2`` 4.00 on ``second``, each with an API key. The test makes four calls with
SIPp: b1 takes two (one held up while the pages watch it live), b2 one, and one finds no
buyer (480). Operator: 4 calls, 3 answered and billable, revenue $9.00, payout $6.30, margin
$2.70. Buyer b1: 2 calls, spend $5.00, nothing of b2's or of the payout. After a restart the
page shows the same hour again, read from the database.

Screenshots of both pages are written under the test's tmp dir (the paths are printed: run
with ``-s`` to see them); nothing is written to the repository.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.dce_process import Switch
from tests.integration.sipp import SippResult, run_uac, start_uas
from tests.ports import free_port
from tests.webrtc.cdp import Browser, Page, chromium_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "it-admin-token"  # dce_process.Switch's DCE_ADMIN_TOKEN
B1_KEY = "it-dash-b1-" + secrets.token_hex(12)
B2_KEY = "it-dash-b2-" + secrets.token_hex(12)
MAIN, SECOND, NOROUTE = "18005550100", "18005550200", "18005550180"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"b1": free_port(), "b2": free_port()}


@pytest.fixture(scope="module")
def sw(switches: Any, ports: dict[str, int], sipp: str) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [
            dce_process.campaign("main", ["+" + MAIN], auction="first_price"),
            dce_process.campaign("second", ["+" + SECOND], auction="first_price"),
            dce_process.campaign("noroute", ["+" + NOROUTE]),
        ],
        "buyers": [
            dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{ports['b1']}"], api_key=B1_KEY,
                              profiles=[{"id": "p", "campaign_id": "main", "bid": "2.50"}]),
            dce_process.buyer("b2", [f"sip:buyer@127.0.0.1:{ports['b2']}"], api_key=B2_KEY,
                              profiles=[{"id": "p", "campaign_id": "second", "bid": "4.00"}]),
        ],
    }  # fmt: skip
    return switches(config, name="dashboard")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = chromium_available()
    if reason is not None:
        pytest.skip(reason)
    b = Browser()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def place_call(
    workdir: Path, sw: Switch, number: str, buyer_port: int | None, hold_ms: int = 300
) -> SippResult:
    """One SIPp call to ``number``; with a buyer port, answered there and held ``hold_ms``;
    without, expected to be refused with 480."""
    tag = f"{number[-3:]}-{secrets.token_hex(2)}"
    if buyer_port is None:
        caller = run_uac(workdir, "uac-expect-480.xml", sw.sip_addr, name=f"uac-{tag}",
                         service=number, timeout_s=10)  # fmt: skip
        assert caller.ok, caller.describe() + sw.tail(20)
        return caller
    uas = start_uas(workdir, "uas.xml", buyer_port, name=f"uas-{tag}", timeout_s=20)
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name=f"uac-{tag}", service=number,
                         extra=["-d", str(hold_ms)], timeout_s=20)  # fmt: skip
        buyer = uas.wait(15)
    finally:
        uas.kill()
    assert caller.ok and buyer.ok, caller.describe() + buyer.describe() + sw.tail(20)
    return caller


def api(sw: Switch, path: str, token: str) -> Any:
    req = urllib.request.Request(sw.url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


async def open_board(browser: Browser, sw: Switch, token: str) -> Page:
    # The token in the fragment: the page moves it to sessionStorage; it never reaches a log.
    page = await browser.new_page(f"{sw.url}/dashboard#token={token}")
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1440, "height": 1100, "deviceScaleFactor": 1, "mobile": False},
    )
    await page.wait_for("window.dceDashboard.status === 'live' && window.dceDashboard.last")
    assert await page.evaluate("location.hash") == ""
    return page


async def shown(page: Page) -> dict[str, str]:
    """The numbers as the page shows them: each data-metric output's text."""
    return dict(await page.evaluate(
        "[...document.querySelectorAll('[data-metric]')].map(e => [e.dataset.metric,"
        " e.textContent])"
    ))  # fmt: skip


async def table(page: Page, table_id: str) -> list[list[str]]:
    return list(await page.evaluate(
        f"[...document.querySelectorAll('#{table_id} tbody tr')].map(tr =>"
        " [...tr.cells].map(td => td.textContent))"
    ))  # fmt: skip


async def until_calls(page: Page, n: int) -> None:
    await page.wait_for(f"window.dceDashboard.last.totals.calls === {n}", timeout=20)
    await page.wait_for(  # the DOM follows the data in the same tick
        f"document.querySelector('[data-metric=calls]').textContent === '{n}'"
    )


async def screenshot(page: Page, path: Path) -> None:
    shot = await page.send("Page.captureScreenshot",
                           {"format": "png", "captureBeyondViewport": True})  # fmt: skip
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000
    print(f"\ndashboard screenshot: {path}")


def expected_duration(sw: Switch, token: str) -> str:
    """The average connected time of the answered calls, from their CDRs, as the page shows
    it (rounded to 0.1 s as the switch rounds it)."""
    calls = api(sw, "/api/v1/calls?limit=100", token)["items"]
    answered = [c for c in calls if c["answered_at"] is not None]
    talk_ms = sum(c["duration_ms"] for c in answered)
    return f"{round(talk_ms / len(answered) / 1000, 1):.1f} s"


async def test_the_dashboard_shows_the_calls_made(
    sw: Switch, ports: dict[str, int], workdir: Path, browser: Browser, tmp_path: Path
) -> None:
    await asyncio.to_thread(place_call, workdir, sw, MAIN, ports["b1"])
    await asyncio.to_thread(place_call, workdir, sw, SECOND, ports["b2"])
    operator = await open_board(browser, sw, ADMIN)
    await until_calls(operator, 2)

    # A call held up while both pages watch: live on each, then ended, without a reload.
    held = threading.Thread(target=place_call, args=(workdir, sw, MAIN, ports["b1"], 5000))
    held.start()
    try:
        buyer = await open_board(browser, sw, B1_KEY)
        await operator.wait_for("document.querySelector('[data-metric=live_calls]')"
                                ".textContent === '1'", timeout=10)  # fmt: skip
        await buyer.wait_for("document.querySelector('[data-metric=live_calls]')"
                             ".textContent === '1'", timeout=10)  # fmt: skip
        live_rows = await table(operator, "campaigns")
        assert live_rows[0][:2] == ["main", "1"], live_rows
    finally:
        await asyncio.to_thread(held.join, 30)
    await asyncio.to_thread(place_call, workdir, sw, NOROUTE, None)
    await until_calls(operator, 4)
    await operator.wait_for("document.querySelector('[data-metric=live_calls]')"
                            ".textContent === '0'")  # fmt: skip

    duration = expected_duration(sw, ADMIN)
    numbers = await shown(operator)
    cps = numbers.pop("cps")  # arrivals per second over the last minute: checked below
    assert numbers == {
        "live_calls": "0",
        "calls": "4",
        "answered": "3",
        "answer_rate": "75.0 %",
        "avg_duration_s": duration,
        "billable": "3",
        "revenue": "$9.00",
        "payout": "$6.30",
        "margin": "$2.70",
    }
    last = await operator.evaluate("window.dceDashboard.last")
    # At most the four arrivals over the last 50 to 60 s, at least the last one.
    assert 0 < last["totals"]["cps"] <= 0.08 and cps == f"{last['totals']['cps']:.2f}"
    assert sum(last["series"]["calls"]) == 4 and sum(last["series"]["answered"]) == 3
    assert max(last["series"]["live"]) >= 1
    refused = [c for c in api(sw, "/api/v1/calls?limit=100", ADMIN)["items"]
               if c["called"] == "+" + NOROUTE]  # fmt: skip
    assert len(refused) == 1 and refused[0]["rule"], refused
    assert await table(operator, "rules") == [[refused[0]["rule"], "1"]]
    # campaign, live, calls, answered, rate, avg s, revenue, payout, margin
    campaigns = await table(operator, "campaigns")
    assert [row[:4] + row[6:] for row in campaigns] == [
        ["main", "0", "2", "2", "$5.00", "$3.50", "$1.50"],
        ["noroute", "0", "1", "0", "$0.00", "$0.00", "$0.00"],
        ["second", "0", "1", "1", "$4.00", "$2.80", "$1.20"],
    ]
    buyers = await table(operator, "buyers")
    assert [row[:4] + row[6:] for row in buyers] == [
        ["b1", "0", "2", "2", "$5.00", "$3.50", "$1.50"],
        ["b2", "0", "1", "1", "$4.00", "$2.80", "$1.20"],
        ["(none)", "0", "1", "0", "$0.00", "$0.00", "$0.00"],
    ]
    await screenshot(operator, tmp_path / "dashboard-operator.png")

    # The buyer's page: its two calls and its spend; nothing of b2's, no payout, no margin.
    await until_calls(buyer, 2)
    b1_duration = expected_duration(sw, B1_KEY)
    numbers = await shown(buyer)
    assert {k: v for k, v in numbers.items() if k != "cps"} == {
        "live_calls": "0",
        "calls": "2",
        "answered": "2",
        "answer_rate": "100.0 %",
        "avg_duration_s": b1_duration,
        "billable": "2",
        "revenue": "$5.00",
    }
    assert await buyer.evaluate("document.getElementById('revenue-label').textContent") == "Spend"
    assert await buyer.evaluate("document.querySelectorAll('.operator-only').length") == 0
    assert [row[:4] + row[6:] for row in await table(buyer, "buyers")] == [
        ["b1", "0", "2", "2", "$5.00"]]  # fmt: skip
    assert [row[:4] for row in await table(buyer, "campaigns")] == [["main", "0", "2", "2"]]
    text = await buyer.evaluate("document.getElementById('board').innerText")
    assert "b2" not in text and "second\t" not in text and "$6.30" not in text
    data = await buyer.evaluate("JSON.stringify(window.dceDashboard.last)")
    assert "payout" not in data and "margin" not in data and '"b2"' not in data
    await screenshot(buyer, tmp_path / "dashboard-buyer.png")

    # The reports say the same.
    report = api(sw, "/api/v1/reports?period=hour&by=buyer&tz=America/Chicago", ADMIN)
    totals = report["totals"]
    assert (totals["calls"], totals["answered"], totals["billable"]) == (4, 3, 3)
    assert (totals["revenue"], totals["payout"], totals["margin"]) == (
        "9.000000", "6.300000", "2.700000")  # fmt: skip
    mine = api(sw, "/api/v1/reports?by=campaign", B1_KEY)
    assert [(r["key"], r["calls"], r["revenue"], r["payout"]) for r in mine["rows"]] == [
        ("main", 2, "5.000000", None)]  # fmt: skip
    # No token ever reached the switch's log.
    logged = "\n".join(json.dumps(line) for line in sw.logs())
    assert ADMIN not in logged and B1_KEY not in logged


async def test_a_refused_token_gets_the_sign_in_form(sw: Switch, browser: Browser) -> None:
    page = await browser.new_page(f"{sw.url}/dashboard#token=not-a-token-{secrets.token_hex(8)}")
    await page.wait_for("window.dceDashboard.status === 'denied'")
    assert await page.evaluate("document.getElementById('login').hidden") is False
    assert "refused" in await page.evaluate("document.getElementById('login-error').textContent")
    assert await page.evaluate("sessionStorage.length") == 0
    # Signing in with the right token from the form opens the board.
    await page.evaluate(f"document.getElementById('token').value = '{B2_KEY}';"
                        "document.getElementById('login-form').requestSubmit(); true")  # fmt: skip
    await page.wait_for("window.dceDashboard.status === 'live' && window.dceDashboard.last")
    assert await page.evaluate("window.dceDashboard.last.buyer_id") == "b2"


async def test_after_a_restart_the_hour_comes_from_the_database(
    sw: Switch, browser: Browser
) -> None:
    assert sw.stop() == 0
    sw.start()
    page = await open_board(browser, sw, ADMIN)
    await until_calls(page, 4)
    numbers = await shown(page)
    assert (numbers["answered"], numbers["revenue"], numbers["margin"]) == ("3", "$9.00", "$2.70")
    # An open page does not hold up a drain; the page says it lost the switch.
    t0 = time.monotonic()
    assert sw.stop() == 0
    assert time.monotonic() - t0 < 10
    await page.wait_for("window.dceDashboard.status === 'retrying'")
