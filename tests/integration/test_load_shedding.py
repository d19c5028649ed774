"""Overload control on a real `dce run` (issue 12 "Admission control that keeps goodput").

A switch whose core cannot keep up (here: stopped with SIGSTOP for longer than its requests
may wait, while a burst of new INVITEs queues in its socket) refuses a share of the new
INVITEs with a stateless 503, Retry-After and Reason "overload"; a call admitted before the
overload goes on (its BYE is answered, both legs end cleanly); once the burst is gone, new
calls are admitted again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, Sipp, sipp_command, start_uas
from tests.integration.sipwire import SDP_OFFER, SipMessage, SipSocket, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration

BURST = 2000  # a backlog of well over a second: the loop is saturated for several ticks
NOBODY = "18005550199"  # no campaign: an admitted INVITE of the burst is answered 404 at once


def _invite(s: SipSocket, port: int, call_id: str, called: str) -> bytes:
    return build_request("INVITE", f"sip:{called}@127.0.0.1:{port}", [
        s.via(), ("From", f"<sip:{CALLER}@127.0.0.1>;tag={call_id}"),
        ("To", f"<sip:{called}@127.0.0.1>"), ("Call-ID", call_id),
        ("CSeq", "1 INVITE"), ("Max-Forwards", "70"), ("Contact", f"<sip:{CALLER}@127.0.0.1>"),
        ("Content-Type", "application/sdp")], SDP_OFFER)


def test_a_stalled_switch_sheds_new_invites_and_keeps_the_admitted_call(
    switches: object, sipp: str, workdir: Path
) -> None:
    buyer_port = free_port()
    config = dce_process.one_buyer(buyer_port, CALLED)
    sw: Switch = switches(  # type: ignore[operator]
        config, name="shed", env={"DCE_MEDIA_MODE": "bypass", "DCE_PIKE_LIMIT": "0"})
    buyer = start_uas(workdir, "uas.xml", buyer_port, timeout_s=30)
    held = Sipp("uac-held", workdir, *sipp_command(
        "uac.xml", "uac-held", port=free_port(), remote=sw.sip_addr, timeout_s=30,
        extra=["-d", "4000"])).start()
    finals: dict[str, SipMessage] = {}
    try:
        deadline = time.monotonic() + 5
        while sw.healthz().get("live_calls") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with SipSocket(("127.0.0.1", sw.sip_port)) as s:
            os.kill(sw.pid, signal.SIGSTOP)
            try:
                for i in range(BURST):
                    s.send(_invite(s, sw.sip_port, f"burst-{i}", NOBODY))
                time.sleep(1.0)  # requests wait in the kernel: far past DCE_OVERLOAD_DELAY
            finally:
                os.kill(sw.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while len(finals) < BURST and time.monotonic() < deadline:
                msg = s.recv(1.0)
                if msg is not None and msg.status >= 200:
                    finals.setdefault(msg.header("Call-ID") or "", msg)
            # The burst is over: a new call is admitted again within a few seconds.
            time.sleep(3.0)
            s.send(_invite(s, sw.sip_port, "after-burst", NOBODY))
            after, _ = s.recv_final(5.0)
        a = held.wait(20)
        b = buyer.wait(20)
    finally:
        os.kill(sw.pid, signal.SIGCONT)
        held.kill()
        buyer.kill()
    shed = [m for m in finals.values() if m.status == 503]
    assert shed, f"no INVITE of the burst was refused: {len(finals)} finals\n{sw.tail()}"
    for m in shed:
        assert m.header("Retry-After") == "5", m
        assert 'text="overload"' in (m.header("Reason") or ""), m
    assert len(shed) < BURST, "every INVITE refused: the gate is on/off, not a share"
    assert len(finals) == BURST, f"{BURST - len(finals)} INVITEs got no final response"
    assert {m.status for m in finals.values()} <= {404, 503}
    assert a.ok, "the call admitted before the overload did not go on\n" + a.describe()
    assert b.ok, b.describe()
    assert after is not None and after.status == 404, after  # routed: not shed any more
    metrics = sw.metrics()
    assert "dce_calls_shed_total" in metrics and "dce_load_queue_delay_seconds" in metrics
