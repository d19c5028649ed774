"""The /phone page tells a user why a call failed and when no audio leaves the browser.

One ``dce run`` started from ``config/example.toml`` itself (its buyer endpoints moved to this
test's Python buyer, which answers and echoes RTP; listen addresses and ports from the test
harness's environment, which wins over the file), in headless Chromium with fake audio:

* the README's URL (the example's ``ws_token``, its campaign number) connects;
* a wrong token says "token refused" (the page asks /phone/check: a browser cannot read a
  refused WebSocket upgrade's status);
* a number no campaign owns says "no campaign" with the SIP 404 and its Reason, and the CDR
  says ``no_campaign``; with the buyer deactivated, "no buyer takes this call";
* a silent microphone (a silent stream in place of the device) and the mute button raise the
  page's no-audio warning while the call stays up; Chromium's fake device (a beep a second)
  raises none.
"""

from __future__ import annotations

import asyncio
import tomllib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.integration.dce_process import Switch
from tests.integration.sipp import ROOT
from tests.ports import free_port
from tests.webrtc.cdp import Browser, Page, connected
from tests.webrtc.harness import Buyer, wait_for
from tests.webrtc.test_dce_run import cdr_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = ROOT / "config" / "example.toml"
ADMIN = {"Authorization": "Bearer it-admin-token"}  # DCE_ADMIN_TOKEN of tests' switches


def example() -> dict[str, Any]:
    with EXAMPLE.open("rb") as fh:
        return tomllib.load(fh)


TOKEN = next(t["ws_token"] for t in example()["trunks"] if "ws_token" in t)
NUMBER = example()["campaigns"][0]["numbers"][0]
NO_CAMPAIGN = "+18005550199"  # in no campaign and no profile of the example


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dce(switches: Callable[..., Switch], buyer_port: int) -> Switch:
    config = example()
    for buyer in config["buyers"]:
        for endpoint in buyer["endpoints"]:
            endpoint["uri"] = f"sip:buyer@127.0.0.1:{buyer_port}"
    return switches(config, name="phone")


@pytest.fixture
async def py_buyer(buyer_port: int, dce: Switch) -> AsyncIterator[Buyer]:
    b = Buyer(port=buyer_port)
    await b.start()
    try:
        yield b
    finally:
        b.close()


async def phone(browser: Browser, dce: Switch, number: str, token: str = TOKEN) -> Page:
    query = urllib.parse.urlencode({"token": token, "number": number})
    page = await browser.new_page(f"{dce.url}/phone?{query}")
    await page.wait_for("window.dcePhone !== undefined")
    return page


async def dial(page: Page) -> None:
    await page.evaluate("document.getElementById('call').click()")


async def failure(page: Page) -> dict[str, Any]:
    await page.wait_for("window.dcePhone.state === 'failed'", 15)
    shown = await page.evaluate("document.getElementById('detail').textContent")
    cause = await page.evaluate("document.getElementById('detail').dataset.cause")
    found: dict[str, Any] = await page.evaluate("window.dcePhone.failure")
    assert found["text"] == shown and found["cause"] == cause, (found, shown, cause)
    return found


async def idle(dce: Switch) -> None:
    await asyncio.to_thread(dce.wait_idle, 5.0)


async def test_the_readme_url_with_the_example_token_connects(
    browser: Browser, dce: Switch, py_buyer: Buyer
) -> None:
    page = await phone(browser, dce, NUMBER)
    await dial(page)
    await connected(page)
    assert await wait_for(lambda: py_buyer.rtp_in > 25, 10), py_buyer.rtp_in
    # The fake device beeps every second: audio flows, so no warning shows.
    await asyncio.sleep(5)
    assert await page.evaluate("window.dcePhone.warning") is None
    assert await page.evaluate("document.getElementById('warning').hidden") is True
    await page.evaluate("document.getElementById('hangup').click()")
    await page.wait_for("window.dcePhone.state === 'ended'", 5)
    cdr = await cdr_of(dce.dsn, NUMBER)
    assert cdr["trunk_id"] == "browser-trunk" and cdr["disposition"] == "answered", cdr
    assert page.exceptions == []
    await idle(dce)


async def test_a_wrong_token_says_token_refused(browser: Browser, dce: Switch) -> None:
    page = await phone(browser, dce, NUMBER, token="not-the-example-token")
    await dial(page)
    found = await failure(page)
    assert found["cause"] == "token_refused", found
    assert "token refused" in found["text"], found
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{dce.url}/phone/check?token={TOKEN}") as r:
            assert await r.json() == {"token": "accepted"}
        async with http.get(f"{dce.url}/phone/check") as r:
            assert await r.json() == {"token": "none"}


async def test_a_number_no_campaign_owns_says_so(
    browser: Browser, dce: Switch, py_buyer: Buyer
) -> None:
    page = await phone(browser, dce, NO_CAMPAIGN)
    await dial(page)
    found = await failure(page)
    assert found["status"] == 404 and found["cause"] == "no_campaign", found
    assert found["text"].startswith("no campaign owns this number (404 Not Found"), found
    assert py_buyer.calls == []
    cdr = await cdr_of(dce.dsn, NO_CAMPAIGN)
    assert cdr["disposition"] == "no_campaign" and cdr["rule"] == "no_campaign", cdr
    assert cdr["sip_status"] == 404 and cdr["compliance"] == [], cdr
    await idle(dce)


async def test_no_buyer_says_no_buyer(browser: Browser, dce: Switch, py_buyer: Buyer) -> None:
    buyer_id = example()["buyers"][0]["id"]
    url = f"{dce.url}/api/v1/buyers/{buyer_id}"
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        async with http.patch(url, json={"active": False}) as r:
            assert r.status == 200, await r.text()
        try:
            page = await phone(browser, dce, NUMBER)
            await dial(page)
            found = await failure(page)
        finally:
            async with http.patch(url, json={"active": True}) as r:
                assert r.status == 200, await r.text()
    assert found["status"] == 480 and found["cause"] == "no_eligible_buyer", found
    assert "no buyer takes this call" in found["text"], found
    assert py_buyer.calls == []
    await idle(dce)


SILENT_MIC = """
(() => {
  const ctx = new AudioContext();
  const silent = ctx.createMediaStreamDestination();  // nothing plays into it: zeros
  navigator.mediaDevices.getUserMedia = async () => silent.stream;
})()
"""


async def test_a_silent_or_muted_microphone_is_warned_about(
    browser: Browser, dce: Switch, py_buyer: Buyer
) -> None:
    page = await phone(browser, dce, NUMBER)
    await page.evaluate(SILENT_MIC)
    await dial(page)
    await connected(page)
    await page.wait_for("window.dcePhone.warning && window.dcePhone.warning.cause === 'silent'",
                        10)
    text = await page.evaluate("document.getElementById('warning').textContent")
    assert "no sound from your microphone" in text, text
    assert await page.evaluate("document.getElementById('warning').hidden") is False
    assert await page.evaluate("window.dcePhone.state") == "connected"  # only a warning
    await page.evaluate("document.getElementById('mute').click()")
    await page.wait_for("window.dcePhone.warning.cause === 'muted'", 3)
    await page.evaluate("document.getElementById('hangup').click()")
    await page.wait_for("window.dcePhone.state === 'ended'", 5)
    assert await page.evaluate("document.getElementById('warning').hidden") is True
    assert page.exceptions == []
    await idle(dce)
