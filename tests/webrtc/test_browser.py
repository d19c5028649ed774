"""Real browsers: headless Debian Chromium with fake audio, on the /phone page and with JsSIP.

Each test runs the mini switch (real SwitchCore + WsHub + open_webrtc) and a buyer: SIPp
echoing RTP (``sipp_scenarios/uas.xml -rtp_echo``: its exit code says it got the BYE), or the
Python buyer when the test needs to look at the packets (DTMF) or hang up from the buyer side.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from switch.record import HangupSide, Outcome
from tests.integration.sipp import SCENARIOS
from tests.ports import free_port
from tests.webrtc.cdp import Browser, Page, connected
from tests.webrtc.harness import Buyer, MiniSwitch, wait_for

pytestmark = pytest.mark.slow

NUMBER = "+15550100000"


@pytest.fixture
async def switch(buyer: Buyer) -> AsyncIterator[MiniSwitch]:
    sw = MiniSwitch([buyer.uri])
    await sw.start()
    yield sw
    await sw.stop()


async def phone(browser: Browser, switch: MiniSwitch, query: str = "") -> Page:
    page = await browser.new_page(f"{switch.base_url}/phone{query}")
    await page.wait_for("window.dcePhone !== undefined")
    return page


async def test_phone_page_calls_a_sipp_buyer_that_echoes(
    browser: Browser, buyer: Buyer, tmp_path: Path
) -> None:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    sip_port, media_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sipp,
        "-sf",
        str(SCENARIOS / "uas.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        str(sip_port),
        "-mp",
        str(media_port),
        "-rtp_echo",
        "-m",
        "1",
        "-timeout",
        "40",
        "-nostdin",
        "-cid_str",
        "webrtc-phone-%u-%p@%s",
        "-trace_err",
        "-error_file",
        str(tmp_path / "sipp-err.log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    sw = MiniSwitch([f"sip:buyer@127.0.0.1:{sip_port}"])
    await sw.start()
    try:
        page = await phone(browser, sw)
        # The page: a dial pad, a level meter and the state, all the switch's own files.
        assert await page.evaluate("document.querySelectorAll('#keypad button').length") == 12
        await page.evaluate(f"window.dcePhone.call('{NUMBER}')")
        await connected(page)
        # Audio went out to SIPp and came back: the buyer received RTP and echoed it.
        stats = await page.wait_for(
            "window.dcePhone.stats().then(s => s.inbound && s.inbound.packetsReceived > 50"
            " && s.outbound.packetsSent > 50 ? s : null)",
            15,
        )
        assert stats["codec"] == "audio/PCMU"
        assert stats["inbound"]["packetsLost"] == 0
        await page.wait_for("Number(document.getElementById('line').dataset.peak || 0) > 0", 10)
        await page.evaluate("window.dcePhone.hangup()")
        # SIPp's scenario ends with the BYE: exit code 0 says the buyer leg was hung up.
        rc = await asyncio.wait_for(proc.wait(), 15)
        assert rc == 0, (await proc.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
        assert await wait_for(lambda: len(sw.cdrs) == 1, 5)
        cdr = sw.cdrs[0]
        assert cdr.source == "webrtc" and cdr.outcome == Outcome.ANSWERED
        assert cdr.hangup_side == HangupSide.CALLER
        media = sw.media_stats[cdr.call_id]
        assert media["packets_a_to_b"] > 50 and media["packets_b_to_a"] > 50
        assert page.exceptions == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await sw.stop()


async def test_phone_dtmf_mute_and_buyer_hangup(
    browser: Browser, switch: MiniSwitch, buyer: Buyer
) -> None:
    page = await phone(browser, switch)
    await page.evaluate(f"window.dcePhone.call('{NUMBER}')")
    await connected(page)
    assert await wait_for(lambda: buyer.rtp_in > 25, 10)
    # Keypad digits go as RFC 4733 events in the media stream and reach the buyer as such.
    for digit in "4#":
        assert await page.evaluate(f"window.dcePhone.dtmf('{digit}')") == "rfc4733"
        await asyncio.sleep(0.4)
    assert await wait_for(lambda: buyer.events == [4, 11], 5), buyer.events
    assert await page.evaluate("window.dcePhone.mute()") is True
    assert (
        await page.evaluate("document.getElementById('mute').getAttribute('aria-pressed')")
        == "true"
    )
    assert await page.evaluate("window.dcePhone.mute()") is False
    # The buyer hangs up: the page hears the BYE.
    buyer.hangup(buyer.calls[0])
    await page.wait_for("window.dcePhone.state === 'ended'", 5)
    assert await wait_for(lambda: len(switch.cdrs) == 1, 5)
    assert switch.cdrs[0].hangup_side == HangupSide.BUYER
    assert await wait_for(lambda: switch.ports.free == switch.ports.capacity, 3)


async def test_closing_the_tab_mid_call_ends_the_buyer_leg(
    browser: Browser, switch: MiniSwitch, buyer: Buyer
) -> None:
    page = await phone(browser, switch)
    await page.evaluate(f"window.dcePhone.call('{NUMBER}')")
    await connected(page)
    assert await wait_for(lambda: buyer.rtp_in > 10, 10)
    await page.close()  # no BYE: the socket goes away with the tab
    assert await wait_for(lambda: bool(buyer.calls) and buyer.calls[0].bye, 5)
    assert await wait_for(lambda: len(switch.cdrs) == 1, 3)
    assert switch.cdrs[0].source == "webrtc"


async def test_phone_with_unknown_token_is_refused(browser: Browser, buyer: Buyer) -> None:
    sw = MiniSwitch(
        [buyer.uri], token_check=lambda r: "t1" if r.query.get("token") == "ok" else None
    )
    await sw.start()
    try:
        page = await phone(browser, sw, "?token=wrong")
        await page.evaluate(f"window.dcePhone.call('{NUMBER}').catch(e => null)")
        await page.wait_for("document.getElementById('ws').textContent === 'error'", 5)
        assert sw.hub.stats.refused == 1 and buyer.calls == []
        page = await phone(browser, sw, "?token=ok")
        await page.evaluate(f"window.dcePhone.call('{NUMBER}')")
        await connected(page)
        await page.evaluate("window.dcePhone.hangup()")
        assert await wait_for(lambda: bool(buyer.calls) and buyer.calls[0].bye, 5)
    finally:
        await sw.stop()


JSSIP_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/test/jssip.js"></script></head><body><script>
const log = [];
const socket = new JsSIP.WebSocketInterface(`ws://${location.host}/sip`);
const ua = new JsSIP.UA({ sockets: [socket], uri: `sip:jssip@${location.hostname}`,
                          register: false, session_timers: false });
ua.on("connected", () => log.push("connected"));
ua.start();
window.jssip = { log, version: JsSIP.version, session: null };
window.jssip.call = (number) => {
  const s = ua.call(`sip:${number}@${location.hostname}`, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [] },
  });
  window.jssip.session = s;
  for (const ev of ["progress", "confirmed", "ended", "failed"]) {
    s.on(ev, (e) => log.push(ev + (e && e.cause ? ":" + e.cause : "")));
  }
};
window.jssip.stats = async () => {
  const out = {};
  (await window.jssip.session.connection.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") out.received = s.packetsReceived;
    if (s.type === "outbound-rtp" && s.kind === "audio") out.sent = s.packetsSent;
  });
  return out;
};
</script></body></html>"""


async def test_jssip_calls_through_the_switch(
    browser: Browser, buyer: Buyer, jssip_bundle: Path
) -> None:
    def routes(app: web.Application) -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=JSSIP_PAGE, content_type="text/html")

        async def bundle(request: web.Request) -> web.Response:
            return web.Response(body=jssip_bundle.read_bytes(), content_type="text/javascript")

        app.router.add_get("/test/jssip.html", page)
        app.router.add_get("/test/jssip.js", bundle)

    sw = MiniSwitch([buyer.uri], routes=routes)
    await sw.start()
    try:
        page = await browser.new_page(f"{sw.base_url}/test/jssip.html")
        assert await page.evaluate("window.jssip.version") == "3.13.8"
        await page.wait_for("window.jssip.log.includes('connected')", 10)
        await page.evaluate(f"window.jssip.call('{NUMBER}')")
        await page.wait_for("window.jssip.log.includes('confirmed')", 30)
        stats = await page.wait_for(
            "window.jssip.stats().then(s => s.received > 50 && s.sent > 50 ? s : null)", 15
        )
        assert stats["received"] > 50
        assert await wait_for(lambda: buyer.rtp_in > 50, 5)
        # JsSIP's RFC 2833/4733 DTMF (through RTCDTMFSender) reaches the buyer as events.
        await page.evaluate("window.jssip.session.sendDTMF('9', {transportType: 'RFC2833'})")
        assert await wait_for(lambda: buyer.events == [9], 5), buyer.events
        await page.evaluate("window.jssip.session.terminate()")
        await page.wait_for("window.jssip.log.some(e => e.startsWith('ended'))", 5)
        assert await wait_for(lambda: bool(buyer.calls) and buyer.calls[0].bye, 5)
        assert await wait_for(lambda: len(sw.cdrs) == 1, 3)
        cdr = sw.cdrs[0]
        assert cdr.source == "webrtc" and cdr.outcome == Outcome.ANSWERED
        assert page.exceptions == []
    finally:
        await sw.stop()
