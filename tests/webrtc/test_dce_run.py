"""WebRTC callers against a real ``dce run``: the whole process, not the mini switch.

One ``dce run`` subprocess for the module (tests/integration/dce_process.py ``Switch`` through the
integration suite's ``switches`` fixture: generated TOML config, free ports, its own data dir
and database, SIGTERM at the end must exit 0 with no traceback in the log). Its config has one
browser trunk admitted only by its ``ws_token``, one campaign and one buyer endpoint on a
fixed port where each test starts its own buyer: the Python buyer from harness.py (it counts
the RTP it echoes and sees the BYE) or SIPp ``uas.xml -rtp_echo``.

Callers: sipua (RFC 7118, ICE, DTLS-SRTP, no browser), headless Debian Chromium on the /phone
page that dce run serves, and JsSIP (npm, pinned, bundled at test time) in Chromium. Then the
bad cases: a wrong token (403 at the upgrade), a closed tab, a dropped socket and media that
dies silently under a live socket, each of which must end the buyer leg and leave a CDR.
The last test (DCE_TLS_CERT/KEY: https and wss) starts a second switch.

Each test dials its own campaign number, so its CDR is found by ``called`` (the page's and
JsSIP's Call-IDs are theirs), and reads it from the switch's database with asyncpg.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import asyncpg
import pytest
from aiohttp import web

from tests.integration import dce_process
from tests.integration.dce_process import Switch
from tests.integration.sipp import SIPP, start_uas
from tests.ports import free_port
from tests.webrtc.cdp import Browser, Page, connected
from tests.webrtc.conftest import JSSIP_VERSION
from tests.webrtc.harness import Buyer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "it-webrtc-" + secrets.token_hex(12)  # Trunk.ws_token: at least 16 characters
TRUNK = "it-webrtc"
CAMPAIGN = "web"
BUYER = "b1"
# One campaign number per test: the CDR of a test's call is the one row with its number.
SIPUA_NUMBER = "+18005550111"
PHONE_NUMBER = "+18005550112"
JSSIP_NUMBER = "+18005550113"
TAB_CLOSED_NUMBER = "+18005550114"
DROPPED_NUMBER = "+18005550115"
REFUSED_NUMBER = "+18005550116"
MEDIA_DEAD_NUMBER = "+18005550117"
NUMBERS = [
    SIPUA_NUMBER,
    PHONE_NUMBER,
    JSSIP_NUMBER,
    TAB_CLOSED_NUMBER,
    DROPPED_NUMBER,
    REFUSED_NUMBER,
    MEDIA_DEAD_NUMBER,
]


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dce(switches: Callable[..., Switch], buyer_port: int) -> Switch:
    config = {
        "trunks": [{"id": TRUNK, "name": "browsers", "ws_token": TOKEN}],
        "campaigns": [dce_process.campaign(CAMPAIGN, NUMBERS)],
        "buyers": [dce_process.buyer(BUYER, [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }
    return switches(config, name="webrtc")


@pytest.fixture
async def py_buyer(buyer_port: int, dce: Switch) -> AsyncIterator[Buyer]:
    """The Python buyer on the configured endpoint: answers, echoes RTP, counts it."""
    b = Buyer(port=buyer_port)
    await b.start()
    try:
        yield b
    finally:
        b.close()


async def idle(dce: Switch) -> None:
    """Every call of the test is over in the switch (``/healthz`` live_calls 0)."""
    await asyncio.to_thread(dce.wait_idle, 5.0)


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # sipua gathers its candidates with aioice, which skips loopback (libs.md §2).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture(autouse=True)
def no_switch_errors(dce: Switch) -> Any:
    """A test fails when the switch died or logged an error while it ran."""
    assert dce.alive(), f"dce run is not running (exit code {dce.proc and dce.proc.poll()})"
    before = len(dce.problems())
    yield
    assert dce.alive(), (
        f"dce run exited with {dce.proc and dce.proc.poll()} during the test\n{dce.tail()}"
    )
    new = dce.problems()[before:]
    assert not new, "dce run logged errors during the test:\n" + "\n".join(new)


# --------------------------------------------------------------------------------- helpers


async def cdr_of(dsn: str, called: str, timeout: float = 8.0) -> dict[str, Any]:
    """The one CDR of the call to ``called``, once the switch has written it."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT * FROM cdrs WHERE called = $1", called)
            if rows:
                assert len(rows) == 1, f"{len(rows)} CDRs for {called}: {rows}"
                return dict(rows[0])
            if time.monotonic() > deadline:
                raise AssertionError(f"no CDR for a call to {called} after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def cdr_count(dsn: str, called: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM cdrs WHERE called = $1", called))
    finally:
        await conn.close()


def rtp_ports(dce: Switch) -> range:
    """DCE_RTP_PORTS of the running switch, from its startup line ``RTP <ip> ports lo-hi``."""
    assert dce.stdout_path is not None
    m = re.search(r"^RTP\s+127\.0\.0\.1 ports (\d+)-(\d+)", dce.stdout_path.read_text(), re.M)
    assert m is not None, dce.stdout_path.read_text()
    return range(int(m.group(1)), int(m.group(2)) + 1)


def assert_switch_candidates(sdp: str, ports: range) -> None:
    """The switch's answer: DTLS fingerprint, and ICE host candidates on DCE_MEDIA_IP only
    (127.0.0.1, which aiortc itself would skip) with ports from DCE_RTP_PORTS."""
    assert re.search(r"^a=fingerprint:sha-(256|384|512) [0-9A-F:]+\r?$", sdp, re.M), sdp
    candidates = re.findall(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ (\w+)", sdp, re.M)
    assert candidates, sdp
    for ip, port, kind in candidates:
        assert (ip, kind) == ("127.0.0.1", "host") and int(port) in ports, sdp


def assert_webrtc_cdr(cdr: dict[str, Any], hangup_side: str = "caller") -> None:
    assert cdr["source"] == "webrtc", cdr
    assert cdr["disposition"] == "answered", cdr
    assert cdr["hangup_side"] == hangup_side, cdr
    assert cdr["trunk_id"] == TRUNK and cdr["campaign_id"] == CAMPAIGN, cdr
    assert cdr["buyer_id"] == BUYER and cdr["sip_status"] == 200, cdr


sipua: Any = None
sipmessage: Any = None


def need_sipua() -> None:
    global sipua, sipmessage
    sipua = pytest.importorskip("sipua", reason="sipua not installed (.ci/run: --no-deps)")
    sipmessage = pytest.importorskip("sipmessage")


async def sipua_call(dce: Switch, number: str) -> tuple[Any, Any, list[int], asyncio.Task[None]]:
    """sipua (RFC 7118 + ICE + DTLS-SRTP) calls ``number`` through dce run; answered."""
    need_sipua()
    app = sipua.Application()
    await app.connect_websocket(f"ws://{dce.host}:{dce.http_port}/sip?token={TOKEN}")
    call = sipua.Call.create_uac(
        dialog_layer=app.dialog_layer,
        dtls=True,
        local_address=sipmessage.Address.parse("<sip:alice@127.0.0.1>"),
        remote_address=sipmessage.Address.parse(f"<sip:{number}@127.0.0.1;transport=ws>"),
    )
    frames = [0]

    async def read() -> None:
        track = call.audioTransceiver.receiver.track
        while True:
            await track.recv()
            frames[0] += 1

    try:
        await asyncio.wait_for(call.invite(), 10)
    except BaseException:
        await app.close()
        raise
    return app, call, frames, asyncio.ensure_future(read())


async def phone(browser: Browser, dce: Switch, number: str, token: str = TOKEN) -> Page:
    """The /phone page that dce run serves, with the token and number in its URL."""
    query = urllib.parse.urlencode({"token": token, "number": number})  # "+" must be %2B
    page = await browser.new_page(f"{dce.url}/phone?{query}")
    await page.wait_for("window.dcePhone !== undefined")
    return page


# --------------------------------------------------------------------------------- (1) sipua


async def test_sipua_call_has_audio_both_ways_and_a_webrtc_cdr(
    loopback: None, dce: Switch, py_buyer: Buyer
) -> None:
    app, call, frames, reader = await sipua_call(dce, SIPUA_NUMBER)
    try:
        # Audio both ways: the buyer got (and echoed) RTP, sipua decoded frames from the switch.
        ok = await wait_for(lambda: py_buyer.rtp_in >= 25 and frames[0] >= 20, 10)
        assert ok, f"buyer rtp_in={py_buyer.rtp_in}, sipua frames={frames[0]}"
        assert py_buyer.payload_types <= {0, 8, 101}, py_buyer.payload_types  # plain G.711 leg
        await asyncio.wait_for(call.hangup(), 5)
        assert await wait_for(lambda: bool(py_buyer.calls) and py_buyer.calls[0].bye, 5)
    finally:
        reader.cancel()
        await app.close()
    cdr = await cdr_of(dce.dsn, SIPUA_NUMBER)
    assert_webrtc_cdr(cdr, "caller")
    assert cdr["a_call_id"] == call.call_id, cdr
    assert cdr["packets_a_to_b"] >= 25 and cdr["packets_b_to_a"] >= 20, cdr
    await idle(dce)


# ------------------------------------------------------------------- (2) /phone in Chromium


async def test_phone_page_served_by_dce_run_calls_a_sipp_buyer(
    browser: Browser, dce: Switch, buyer_port: int, tmp_path: Path
) -> None:
    if SIPP is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    sipp = start_uas(
        tmp_path,
        "uas.xml",
        buyer_port,
        name="uas-phone",
        extra=["-mp", str(free_port()), "-rtp_echo"],
    )
    try:
        page = await phone(browser, dce, PHONE_NUMBER)
        assert await page.evaluate("document.getElementById('number').value") == PHONE_NUMBER
        await page.evaluate("document.getElementById('call').click()")
        await connected(page)
        # The browser receives audio: SIPp's echo of what the browser sent, through the switch.
        stats = await page.wait_for(
            "window.dcePhone.stats().then(s => s.inbound && s.inbound.packetsReceived > 50"
            " && s.outbound.packetsSent > 50 ? s : null)",
            15,
        )
        assert stats["codec"] in ("audio/PCMU", "audio/PCMA"), stats
        await page.evaluate("document.getElementById('hangup').click()")
        await page.wait_for("window.dcePhone.state === 'ended'", 5)
        # uas.xml ends with the BYE and its 200: exit code 0 says the buyer leg was hung up.
        done = await asyncio.to_thread(sipp.wait, 10)
        assert done.ok, done.describe()
    finally:
        sipp.kill()
    cdr = await cdr_of(dce.dsn, PHONE_NUMBER)
    assert_webrtc_cdr(cdr, "caller")
    # The switch sent RTP to the buyer and got its echo back: the buyer side received RTP.
    assert cdr["packets_a_to_b"] > 50 and cdr["packets_b_to_a"] > 50, cdr
    assert page.exceptions == []
    await idle(dce)


# ----------------------------------------------------------------------- (3) JsSIP in Chromium


JSSIP_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/jssip.js"></script></head><body><script>
const q = new URLSearchParams(location.search);
const log = [];
const socket = new JsSIP.WebSocketInterface(q.get("ws"));
const ua = new JsSIP.UA({ sockets: [socket], uri: "sip:jssip@127.0.0.1",
                          register: false, session_timers: false });
ua.on("connected", () => log.push("connected"));
ua.on("disconnected", () => log.push("disconnected"));
ua.start();
window.jssip = { log, version: JsSIP.version, session: null };
window.jssip.call = (number) => {
  const s = ua.call(`sip:${number}@127.0.0.1`, {
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
    if (s.type === "codec") out.codecs = (out.codecs || []).concat([s.mimeType]);
  });
  return out;
};
</script></body></html>"""


@pytest.fixture
async def jssip_site(jssip_bundle: Path) -> AsyncIterator[str]:
    """The JsSIP test page and bundle on their own origin (dce run serves only /phone)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=JSSIP_PAGE, content_type="text/html")

    async def bundle(request: web.Request) -> web.Response:
        return web.Response(body=jssip_bundle.read_bytes(), content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/jssip.html", page)
    app.router.add_get("/jssip.js", bundle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/jssip.html"
    finally:
        await runner.cleanup()


async def test_jssip_calls_through_dce_run(
    browser: Browser, dce: Switch, py_buyer: Buyer, jssip_site: str
) -> None:
    ws = f"ws://{dce.host}:{dce.http_port}/sip?token={TOKEN}"
    page = await browser.new_page(f"{jssip_site}?{urllib.parse.urlencode({'ws': ws})}")
    assert await page.evaluate("window.jssip.version") == JSSIP_VERSION
    await page.wait_for("window.jssip.log.includes('connected')", 10)
    await page.evaluate(f"window.jssip.call('{JSSIP_NUMBER}')")
    try:
        await page.wait_for("window.jssip.log.includes('confirmed')", 20)
    except TimeoutError:
        log = await page.evaluate("window.jssip.log")
        raise AssertionError(f"JsSIP never confirmed the call: {log}") from None
    stats = await page.wait_for(
        "window.jssip.stats().then(s => s.received > 50 && s.sent > 50 ? s : null)", 15
    )
    assert stats["received"] > 50
    assert set(stats["codecs"]) <= {"audio/PCMU", "audio/PCMA", "audio/telephone-event"}, stats
    remote_sdp = await page.evaluate("window.jssip.session.connection.remoteDescription.sdp")
    ports = rtp_ports(dce)
    assert_switch_candidates(remote_sdp, ports)
    # The buyer's leg is plain G.711 RTP from the switch's relay ports.
    assert await wait_for(lambda: py_buyer.rtp_in > 50, 5), py_buyer.rtp_in
    assert py_buyer.payload_types <= {0, 8, 101}, py_buyer.payload_types
    assert all(h == "127.0.0.1" and p in ports for h, p in py_buyer.rtp_from), py_buyer.rtp_from
    await page.evaluate("window.jssip.session.terminate()")
    await page.wait_for("window.jssip.log.some(e => e.startsWith('ended'))", 5)
    assert await wait_for(lambda: bool(py_buyer.calls) and py_buyer.calls[0].bye, 5)
    cdr = await cdr_of(dce.dsn, JSSIP_NUMBER)
    assert_webrtc_cdr(cdr, "caller")
    assert cdr["packets_a_to_b"] > 50 and cdr["packets_b_to_a"] > 50, cdr
    assert page.exceptions == []
    await idle(dce)


# ------------------------------------------------------------ (4) refused and vanished browsers


async def test_wrong_token_is_refused_at_the_upgrade(
    browser: Browser, dce: Switch, py_buyer: Buyer
) -> None:
    async with aiohttp.ClientSession() as http:
        for query in ("?token=not-the-trunk-token-at-all", f"?token={TOKEN[:-1]}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{dce.url}/sip{query}", protocols=("sip",))
            assert refused.value.status == 403, refused.value
        # The right token upgrades, with the sip subprotocol (RFC 7118 §4.1).
        async with http.ws_connect(f"{dce.url}/sip?token={TOKEN}", protocols=("sip",)) as ws:
            assert ws.protocol == "sip"
    # The page with a wrong token: its socket is refused, no call reaches the buyer.
    page = await phone(browser, dce, REFUSED_NUMBER, token="wrong-token-0123456789")
    await page.evaluate(f"window.dcePhone.call('{REFUSED_NUMBER}').catch(e => null)")
    await page.wait_for("document.getElementById('ws').textContent === 'error'", 5)
    await asyncio.sleep(0.3)
    assert py_buyer.calls == []
    assert await cdr_count(dce.dsn, REFUSED_NUMBER) == 0


async def test_tab_closed_mid_call_ends_the_buyer_leg_and_leaves_a_cdr(
    browser: Browser, dce: Switch, py_buyer: Buyer
) -> None:
    page = await phone(browser, dce, TAB_CLOSED_NUMBER)
    await page.evaluate(f"window.dcePhone.call('{TAB_CLOSED_NUMBER}')")
    await connected(page)
    assert await wait_for(lambda: py_buyer.rtp_in > 25, 10), py_buyer.rtp_in
    t0 = time.monotonic()
    await page.close()  # no BYE: the socket and the peer connection go away with the tab
    assert await wait_for(lambda: bool(py_buyer.calls) and py_buyer.calls[0].bye, 5), (
        "the buyer leg outlived the closed tab by 5 s"
    )
    elapsed = time.monotonic() - t0
    cdr = await cdr_of(dce.dsn, TAB_CLOSED_NUMBER)
    assert cdr["source"] == "webrtc" and cdr["disposition"] == "answered", cdr
    assert cdr["hangup_side"] == "caller", cdr
    assert elapsed < 5, elapsed
    await idle(dce)


async def test_dropped_socket_mid_call_ends_the_buyer_leg_and_leaves_a_cdr(
    loopback: None, dce: Switch, py_buyer: Buyer
) -> None:
    app, call, _, reader = await sipua_call(dce, DROPPED_NUMBER)
    try:
        assert await wait_for(lambda: py_buyer.rtp_in >= 10, 10), py_buyer.rtp_in
        await app.close()  # the socket goes, no BYE is sent
        assert await wait_for(lambda: bool(py_buyer.calls) and py_buyer.calls[0].bye, 5)
    finally:
        reader.cancel()
    cdr = await cdr_of(dce.dsn, DROPPED_NUMBER)
    assert cdr["source"] == "webrtc" and cdr["disposition"] == "answered", cdr
    assert cdr["hangup_side"] == "caller" and cdr["a_call_id"] == call.call_id, cdr
    await idle(dce)


class _Mute:
    """A datagram transport that sends nothing: the caller's network path is gone."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def sendto(self, data: bytes, addr: Any = None) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_browser_whose_media_dies_is_hung_up_within_seconds(
    loopback: None, dce: Switch, py_buyer: Buyer
) -> None:
    """ICE/DTLS dies silently while the socket stays: the switch notices the missing media."""
    app, call, _, reader = await sipua_call(dce, MEDIA_DEAD_NUMBER)
    requests: list[str] = []
    handle = call.handle_request

    async def seen(request: Any) -> None:
        requests.append(request.method)
        await handle(request)

    call.handle_request = seen
    try:
        assert await wait_for(lambda: py_buyer.rtp_in >= 10, 10), py_buyer.rtp_in
        for protocol in call._Call__iceTransport._connection._protocols:
            protocol.transport = _Mute(protocol.transport)  # no RTP, no STUN, no close_notify
        t0 = time.monotonic()
        assert await wait_for(lambda: bool(py_buyer.calls) and py_buyer.calls[0].bye, 10)
        elapsed = time.monotonic() - t0
        # Both legs: the browser, still on its socket, is told with a BYE too.
        assert await wait_for(lambda: requests == ["BYE"], 3), requests
    finally:
        reader.cancel()
        await app.close()
    assert elapsed < 8, f"the buyer leg outlived the dead media by {elapsed:.1f}s"
    cdr = await cdr_of(dce.dsn, MEDIA_DEAD_NUMBER)
    assert cdr["source"] == "webrtc" and cdr["disposition"] == "media_timeout", cdr
    assert cdr["hangup_side"] == "system" and cdr["a_call_id"] == call.call_id, cdr
    await idle(dce)


# ------------------------------------------------------------------------------ wss (TLS)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_settings_serve_https_and_wss(
    switches: Callable[..., Switch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC.md: DCE_TLS_CERT + DCE_TLS_KEY give HTTPS and ``wss://`` on DCE_HTTP_LISTEN
    (browsers off localhost need a secure origin for getUserMedia)."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(cafile=str(cert))
    config = {"trunks": [{"id": TRUNK, "name": "browsers", "ws_token": TOKEN}]}
    env = {"DCE_TLS_CERT": str(cert), "DCE_TLS_KEY": str(key)}
    sw = switches(config, name="webrtc-tls", env=env, start=False)
    # Switch.start() polls http://.../healthz: let it poll over HTTPS (trusting the test
    # certificate) first, so that it starts whether or not the switch serves TLS.
    plain_get = dce_process._http_get

    def get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
        if url.startswith(f"{sw.url}/"):
            secure = "https://" + url.removeprefix("http://")
            try:
                with urllib.request.urlopen(secure, timeout=timeout, context=tls) as resp:
                    return int(resp.status), bytes(resp.read())
            except OSError:
                pass
        return plain_get(url, timeout)

    monkeypatch.setattr(dce_process, "_http_get", get)
    await asyncio.to_thread(sw.start)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://{sw.host}:{sw.http_port}/healthz", ssl=tls) as resp:
                assert resp.status == 200
            url = f"wss://{sw.host}:{sw.http_port}/sip?token={TOKEN}"
            async with http.ws_connect(url, protocols=("sip",), ssl=tls) as ws:
                assert ws.protocol == "sip"
    finally:
        assert await asyncio.to_thread(sw.stop) == 0
