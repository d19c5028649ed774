"""Buyer endpoint health through a real ``dce run``: a dead endpoint is found by OPTIONS probes,
skipped by routing (no 2 s wait on it), shown as down in the API and metrics, and comes back
once it answers again.

Buyer ``a`` bids more than buyer ``b``, so without health it would win every call. Each has one
endpoint, played by :class:`PyBuyer`: a UDP socket that either answers nothing (dead) or answers
OPTIONS and takes calls (SIPp cannot: an OPTIONS before the INVITE breaks its scenario).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, run_uac
from tests.ports import free_port

pytestmark = pytest.mark.integration

ADMIN = "it-admin-token"  # tests/integration/dce_process.py sets DCE_ADMIN_TOKEN
PROBE_ENV = {
    "DCE_PROBE_INTERVAL": "500ms",
    "DCE_PROBE_TIMEOUT": "400ms",
    "DCE_PROBE_DOWN_AFTER": "2",
    "DCE_PROBE_UP_AFTER": "2",
}


class PyBuyer:
    """A buyer endpoint on 127.0.0.1:``port``. ``alive`` False: it reads and records every
    request and answers none. ``alive`` True: 200 to OPTIONS; INVITE gets 100 then 200 with
    SDP; 200 to BYE."""

    def __init__(self, port: int, *, alive: bool) -> None:
        self.port = port
        self.alive = alive
        self.received: list[tuple[float, str]] = []  # (monotonic time, method)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"sip:buyer@127.0.0.1:{self.port}"

    def methods(self, since: float = 0.0) -> list[str]:
        return [m for t, m in list(self.received) if t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if data.startswith(b"SIP/2.0"):
                continue  # responses (to nothing we sent): ignore
            method = data.split(b" ", 1)[0].decode()
            self.received.append((time.monotonic(), method))
            if not self.alive or method == "ACK":
                continue
            if method == "INVITE":
                self.sock.sendto(self._response(data, 100, "Trying"), addr)
                self.sock.sendto(self._response(data, 200, "OK", sdp=True), addr)
            else:  # OPTIONS, BYE, anything else
                self.sock.sendto(self._response(data, 200, "OK"), addr)

    def _response(self, request: bytes, status: int, reason: str, *, sdp: bool = False) -> bytes:
        head = request.split(b"\r\n\r\n", 1)[0].decode()
        keep = [ln for ln in head.split("\r\n")[1:]
                if re.match(r"(?i)^(via|from|call-id|cseq)\s*:", ln)]
        to = next(ln for ln in head.split("\r\n") if re.match(r"(?i)^to\s*:", ln))
        if status > 100 and ";tag=" not in to:
            to += f";tag=pybuyer{self.port}"
        lines = [f"SIP/2.0 {status} {reason}", *keep, to,
                 f"Contact: <sip:buyer@127.0.0.1:{self.port}>"]
        body = b""
        if sdp:
            body = (b"v=0\r\no=buyer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                    b"t=0 0\r\nm=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def buyers() -> Iterator[tuple[PyBuyer, PyBuyer]]:
    dead = PyBuyer(free_port(), alive=False)
    live = PyBuyer(free_port(), alive=True)
    yield dead, live
    dead.close()
    live.close()


@pytest.fixture(scope="module")
def sw(switches: Any, buyers: tuple[PyBuyer, PyBuyer], sipp: str) -> Switch:
    dead, live = buyers
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [
            dce_process.buyer("a", [dead.uri],
                              profiles=[{"id": "p", "campaign_id": "main", "bid": "5.00"}]),
            dce_process.buyer("b", [live.uri],
                              profiles=[{"id": "p", "campaign_id": "main", "bid": "2.00"}]),
        ],
    }
    started: Switch = switches(config, name="health", env=PROBE_ENV)
    return started


def endpoint(sw: Switch, buyer_id: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{sw.url}/api/v1/buyers/{buyer_id}/endpoints/{buyer_id}-e1",
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def wait_state(sw: Switch, buyer_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = endpoint(sw, buyer_id)["health"]
        if health["state"] == state:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"{buyer_id}'s endpoint not {state} after {timeout}s: {health}"
                                 f"\n{sw.tail(20)}")
        time.sleep(0.1)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m is not None, f"no {name} in /metrics"
    return float(m.group(1))


def place_call(sw: Switch, workdir: Path, name: str) -> dict[str, Any]:
    """One answered call from SIPp; returns its CDR (auction record decoded)."""
    caller = run_uac(workdir, "uac.xml", sw.sip_addr, name=name, extra=["-d", "200"],
                     timeout_s=10)
    assert caller.ok, caller.describe() + "\n" + sw.tail(25)
    cdr = wait_cdr(sw.dsn, caller.call_id)
    if isinstance(cdr.get("auction"), str):
        cdr["auction"] = json.loads(cdr["auction"])
    return cdr


def test_dead_endpoint_is_skipped_then_comes_back(
    sw: Switch, buyers: tuple[PyBuyer, PyBuyer], workdir: Path
) -> None:
    dead, live = buyers
    # The probes find a dead, b live.
    down = wait_state(sw, "a", "down")
    assert down["probing"] is True and down["last_status"] is None and down["failures"] >= 2
    assert down["since"] is not None
    assert wait_state(sw, "b", "up")["last_status"] == 200
    assert set(dead.methods()) == {"OPTIONS"}
    text = sw.metrics()
    assert metric(text, 'dce_endpoints{state="down"}') == 1
    assert metric(text, 'dce_endpoints{state="up"}') == 1
    assert metric(text, "dce_probes_sent_total") >= 4
    assert metric(text, "dce_probes_failed_total") >= 2

    # A call goes straight to b: a is not tried, and cannot win the auction it cannot take.
    t0 = time.monotonic()
    cdr = place_call(sw, workdir, "uac-while-down")
    assert "INVITE" not in dead.methods(t0)
    assert cdr["disposition"] == "answered" and cdr["buyer_id"] == "b", cdr
    assert cdr["attempts"] == 1, cdr
    # No DCE_TRYING_TIMEOUT (2 s) spent on the dead endpoint before b answered.
    assert (cdr["answered_at"] - cdr["received_at"]).total_seconds() < 2.0, cdr
    auction = cdr["auction"]
    assert auction["excluded"] == {"a/p": "endpoints_down"}, auction
    assert auction["winner"]["buyer_id"] == "b" and auction["price"] == "0.000000", auction
    assert "INVITE" in live.methods(t0)

    # a answers OPTIONS again: after DCE_PROBE_UP_AFTER answers it is up, and wins again.
    dead.alive = True
    up = wait_state(sw, "a", "up")
    assert up["last_status"] == 200 and up["successes"] >= 2
    t1 = time.monotonic()
    cdr = place_call(sw, workdir, "uac-after-recovery")
    assert cdr["buyer_id"] == "a" and cdr["attempts"] == 1, cdr
    assert cdr["auction"]["excluded"] == {}, cdr["auction"]
    assert "INVITE" in dead.methods(t1)
    assert metric(sw.metrics(), 'dce_endpoints{state="down"}') == 0
    sw.wait_idle()
