"""Per-trunk limits through a real ``dce run`` (issue 12): 503 + Retry-After + Reason beyond
``max_concurrent`` and ``max_cps``, the CDR's rule, /metrics, and limits changed by the API.

Callers are raw UDP sockets; the buyer is a socket that never answers (and is never probed),
so admitted calls stay live for about 2 s, until the switch gives up on the buyer (480).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER
from tests.integration.sipwire import SDP_OFFER, SipMessage, SipSocket, UdpWatcher, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration

CONC, CPS = "it-conc", "it-cps"


@pytest.fixture(scope="module")
def buyer() -> Iterator[UdpWatcher]:
    watcher = UdpWatcher(free_port())  # answers nothing: calls ring until the ring timeout
    yield watcher
    watcher.close()


@pytest.fixture(scope="module")
def sw(switches: Any, buyer: UdpWatcher) -> Switch:
    port = buyer.sock.getsockname()[1]
    config = {
        "trunks": [
            {**dce_process.ip_trunk(CONC, ["127.0.0.1/32"]), "max_concurrent": 2},
            {**dce_process.ip_trunk(CPS, ["127.0.0.2/32"]), "max_cps": 1, "cps_burst": 2},
        ],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{port}"])],
    }
    # No OPTIONS probes: the silent buyer would be marked down and calls refused at once.
    env = {"DCE_PROBE_INTERVAL": "0"}
    return switches(config, name="limits", env=env)  # type: ignore[no-any-return]


class Caller:
    """INVITEs from one raw UDP socket; reads answers per Call-ID and ACKs finals."""

    def __init__(self, sw: Switch, local_ip: str) -> None:
        self.sock = SipSocket(("127.0.0.1", sw.sip_port), local_ip=local_ip)
        self.local = f"{self.sock.local[0]}:{self.sock.local[1]}"
        self.uri = f"sip:{CALLED}@127.0.0.1:{sw.sip_port}"
        self.branches: dict[str, str] = {}
        self.got: dict[str, list[SipMessage]] = {}

    def invite(self, tag: str) -> str:
        call_id = f"it-limit-{tag}-{secrets.token_hex(4)}"
        branch = "z9hG4bK" + secrets.token_hex(8)
        self.branches[call_id] = branch
        self.sock.send(build_request("INVITE", self.uri, [
            self.sock.via(branch), ("From", f"<sip:{CALLER}@{self.local}>;tag={tag}"),
            ("To", f"<{self.uri}>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:{CALLER}@{self.local}>"), ("Max-Forwards", "70"),
            ("Content-Type", "application/sdp")], SDP_OFFER))
        return call_id

    def read(self, wait: float) -> None:
        """Read for ``wait`` seconds, ACKing every final response."""
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            msg = self.sock.recv(left)
            if msg is None:
                break
            call_id = msg.header("Call-ID") or ""
            self.got.setdefault(call_id, []).append(msg)
            if msg.status >= 300 and call_id in self.branches:
                self.sock.send(build_request("ACK", self.uri, [
                    self.sock.via(self.branches[call_id]),
                    ("From", msg.header("From") or ""), ("To", msg.header("To") or ""),
                    ("Call-ID", call_id), ("CSeq", "1 ACK"), ("Max-Forwards", "70")]))

    def final(self, call_id: str) -> SipMessage | None:
        return next((m for m in self.got.get(call_id, []) if m.status >= 200), None)

    def trying(self, call_id: str) -> bool:
        return any(m.status == 100 for m in self.got.get(call_id, []))

    def close(self) -> None:
        self.sock.close()


def refused_by(caller: Caller, call_id: str) -> str | None:
    """The rule of a limit's 503 (checking its Retry-After), or None when not refused."""
    final = caller.final(call_id)
    if final is None or final.status != 503:
        return None
    assert final.header("Retry-After") == "5", final
    m = re.search(r'text="([^"]+)"', final.header("Reason") or "")
    assert m is not None, f"503 without a Reason: {final}"
    return m.group(1)


def limited(sw: Switch, trunk: str, rule: str) -> float:
    pattern = rf'^dce_trunk_limited_total\{{rule="{rule}",trunk="{trunk}"\}} (\S+)$'
    m = re.search(pattern, sw.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def api(sw: Switch, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        sw.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer it-admin-token", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_concurrent_calls_beyond_the_limit_get_503_and_a_cdr(sw: Switch) -> None:
    caller = Caller(sw, "127.0.0.1")
    try:
        a, b = caller.invite("a"), caller.invite("b")
        caller.read(0.5)
        assert caller.trying(a) and caller.trying(b) and not caller.final(a)
        c = caller.invite("c")
        caller.read(0.5)
        assert refused_by(caller, c) == "trunk_concurrent"
        # The refused call ended too (with its CDR); that freed no slot.
        c2 = caller.invite("c2")
        caller.read(0.5)
        assert refused_by(caller, c2) == "trunk_concurrent"
        caller.read(3.0)  # the silent buyer: a and b end with 480 after about 2 s
        assert [caller.final(x).status for x in (a, b)] == [480, 480]  # type: ignore[union-attr]
        sw.wait_idle()
        d = caller.invite("d")
        caller.read(0.5)
        assert caller.trying(d) and refused_by(caller, d) is None
        caller.read(3.0)
    finally:
        caller.close()
    cdr = wait_cdr(sw.dsn, c)
    assert (cdr["disposition"], cdr["rule"], cdr["sip_status"], cdr["trunk_id"]) == (
        "overload", "trunk_concurrent", 503, CONC), cdr
    assert wait_cdr(sw.dsn, a)["disposition"] == "no_answer"
    assert limited(sw, CONC, "trunk_concurrent") == 2


def test_calls_per_second_beyond_the_burst_get_503(sw: Switch) -> None:
    caller = Caller(sw, "127.0.0.2")
    try:
        ids = [caller.invite(f"r{i}") for i in range(4)]
        caller.read(0.5)
        assert [refused_by(caller, x) for x in ids] == [None, None, "trunk_cps", "trunk_cps"]
        assert caller.trying(ids[0]) and caller.trying(ids[1])
        time.sleep(1.1)  # one token back at 1 call a second
        late = caller.invite("late")
        caller.read(0.5)
        assert caller.trying(late) and refused_by(caller, late) is None
        caller.read(3.0)
    finally:
        caller.close()
    rules = [wait_cdr(sw.dsn, x)["rule"] for x in ids]
    assert rules[2:] == ["trunk_cps", "trunk_cps"], rules
    assert not any((r or "").startswith("trunk_") for r in rules[:2]), rules  # buyer silent
    assert limited(sw, CPS, "trunk_cps") == 2
    sw.wait_idle()


def test_limits_set_through_the_admin_api_apply_to_the_next_call(sw: Switch) -> None:
    status, body = api(sw, "PATCH", f"/api/v1/trunks/{CONC}", {"max_concurrent": 1})
    assert status == 200 and body["max_concurrent"] == 1, body
    status, body = api(sw, "PATCH", f"/api/v1/trunks/{CONC}", {"max_concurrent": 0})
    assert status == 422 and "max_concurrent" in json.dumps(body), body
    caller = Caller(sw, "127.0.0.1")
    try:
        first, second = caller.invite("api1"), caller.invite("api2")
        caller.read(0.5)
        assert caller.trying(first) and refused_by(caller, second) == "trunk_concurrent"
        caller.read(3.0)
    finally:
        caller.close()
    status, body = api(sw, "PATCH", f"/api/v1/trunks/{CONC}", {"max_concurrent": None})
    assert status == 200 and body["max_concurrent"] is None, body
    sw.wait_idle()
