"""Start, overload and drain (SPEC.md "Install and run", issue 3 "Overload" and SIGTERM).

* Above DCE_MAX_CALLS live calls a new INVITE gets 503 with Retry-After.
* SIGTERM drains: a call in progress gets BYE on both legs, its CDR is flushed, exit code 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import (
    CALLED,
    CALLER,
    Sipp,
    run_uac,
    sip_headers,
    sipp_command,
    start_uas,
)
from tests.integration.sipwire import SDP_OFFER, SipSocket, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration


def _config(buyer_port: int) -> dict[str, object]:
    return dce_process.one_buyer(buyer_port, CALLED)


def test_overload_503_with_retry_after(switches: object, sipp: str, workdir: Path) -> None:
    buyer_port = free_port()
    sw: Switch = switches(_config(buyer_port), name="overload",  # type: ignore[operator]
                          env={"DCE_MAX_CALLS": "1", "DCE_RING_TIMEOUT": "5s"})
    buyer = start_uas(workdir, "uas.xml", buyer_port, timeout_s=15)
    first = Sipp("uac-first", workdir, *sipp_command(
        "uac.xml", "uac-first", port=free_port(), remote=sw.sip_addr, timeout_s=15,
        extra=["-d", "3000"])).start()
    try:
        deadline = time.monotonic() + 5
        while sw.healthz().get("live_calls") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the first call is held for 3 s: a second one must be refused meanwhile
        with SipSocket(("127.0.0.1", sw.sip_port)) as s:
            s.send(build_request("INVITE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
                s.via(), ("From", f"<sip:{CALLER}@127.0.0.1>;tag=ov1"),
                ("To", f"<sip:{CALLED}@127.0.0.1>"), ("Call-ID", "it-overload-2"),
                ("CSeq", "1 INVITE"), ("Max-Forwards", "70"),
                ("Contact", f"<sip:{CALLER}@127.0.0.1>"),
                ("Content-Type", "application/sdp")], SDP_OFFER))
            resp, _ = s.recv_final(3.0)
        a = first.wait(20)
        b = buyer.wait(15)
    finally:
        first.kill()
        buyer.kill()
    assert a.ok, a.describe()
    assert b.ok, b.describe()
    assert resp is not None and resp.status == 503, resp
    assert resp.header("Retry-After"), f"503 without Retry-After: {resp}"


def test_sigterm_drains_live_call(switches: object, sipp: str, workdir: Path) -> None:
    """A call in progress at SIGTERM gets BYE on both legs, and its CDR is written."""
    buyer_port = free_port()
    sw: Switch = switches(_config(buyer_port), name="drain")  # type: ignore[operator]
    buyer = start_uas(workdir, "uas.xml", buyer_port, timeout_s=20)
    caller = Sipp("uac-drain", workdir, *sipp_command(
        "uac-expect-bye.xml", "uac-drain", port=free_port(), remote=sw.sip_addr,
        timeout_s=20)).start()
    try:
        deadline = time.monotonic() + 5
        while sw.healthz().get("live_calls") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # answered and ACKed
        db = sw.dsn
        rc = sw.stop()
        a = caller.wait(10)
        b = buyer.wait(10)
    finally:
        caller.kill()
        buyer.kill()
    assert rc == 0, sw.tail()
    assert a.ok, "caller got no BYE on drain\n" + a.describe()
    assert b.ok, "buyer got no BYE on drain\n" + b.describe()
    assert sip_headers(b.messages(), "BYE "), b.describe()
    if sw.database_url is not None:  # the embedded database stops with the switch
        cdr = wait_cdr(db, a.call_id)
        assert cdr["disposition"] == "answered" and cdr["hangup_side"] == "system", cdr


def test_restart_with_same_config_is_idempotent(switches: object, sipp: str,
                                                workdir: Path) -> None:
    """The config file is loaded into the database at every start without duplicates."""
    buyer_port = free_port()
    sw: Switch = switches(_config(buyer_port), name="reload")  # type: ignore[operator]
    assert sw.stop() == 0
    sw.start()
    buyer = start_uas(workdir, "uas.xml", buyer_port)
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name="uac-reload", extra=["-d", "100"])
        served = buyer.wait(15)
    finally:
        buyer.kill()
    assert caller.ok, caller.describe()
    assert served.ok, served.describe()
    cdr = wait_cdr(sw.dsn, caller.call_id)
    assert cdr["attempts"] == 1, cdr
