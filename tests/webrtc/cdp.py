"""Headless Debian Chromium driven over the DevTools protocol (aiohttp's WebSocket client).

No Playwright and no downloaded browser: ``/usr/bin/chromium`` from the Debian package, a
fresh ``--user-data-dir`` per browser, fake audio devices, and only the CDP calls the tests
need (open a page, evaluate JavaScript, read console errors).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # WebRTC on loopback only: the switch's candidates are 127.0.0.1, and Chromium leaves
    # loopback out of ICE gathering unless told; real addresses instead of mDNS names.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "about:blank",
]


def chromium_available() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not found (Debian package chromium; .ci/run installs it)"
    return None


class CdpError(RuntimeError):
    pass


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, browser: Browser, session_id: str, target_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id
        self.console: list[str] = []
        self.exceptions: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` (awaiting a promise) and return its JSON value."""
        result = await asyncio.wait_for(
            self.send(
                "Runtime.evaluate",
                {"expression": expression, "awaitPromise": True, "returnByValue": True},
            ),
            timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"page exception: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{expression!r} still falsy after {timeout}s; console: {self.console[-10:]}"
                    f"; exceptions: {self.exceptions[-5:]}"
                )
            await asyncio.sleep(0.1)

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'", timeout)

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", {"targetId": self.target_id})


class Browser:
    """A headless Chromium process and its browser-level CDP connection."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.profile = Path(tempfile.mkdtemp(prefix="dce-chromium-"))
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._pages: dict[str, Page] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.log = self.profile / "chromium.log"

    async def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, f"--user-data-dir={self.profile}", *FLAGS],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        port_file = self.profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None or loop.time() > deadline:
                raise CdpError(f"chromium did not start: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = loop.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CdpError(str(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            page = self._pages.get(data.get("sessionId", ""))
            if page is None:
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                args = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                page.console.append(f"{params['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                page.exceptions.append(
                    details.get("exception", {}).get("description") or details.get("text", "")
                )
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("browser connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> Any:
        assert self._ws is not None
        msg_id = next(self._ids)
        payload: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            payload["sessionId"] = session_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps(payload))
        return await asyncio.wait_for(fut, 60.0)

    async def new_page(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.goto(url)
        return page

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 5.0)
            except Exception:
                pass
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


async def connected(page: Page, timeout: float = 30) -> None:
    """Until the /phone page's call is connected; on timeout, fail with the page's events."""
    try:
        await page.wait_for("window.dcePhone.state === 'connected'", timeout)
    except TimeoutError:
        events = await page.evaluate("JSON.stringify(window.dcePhone.events)")
        raise AssertionError(f"the page never got connected: {events}") from None
