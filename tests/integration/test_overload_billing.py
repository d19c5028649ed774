"""No ghost billable calls after overload (issue 11, docs/cdr.md "Dispositions").

An overloaded switch answers late: callers retransmit, give up, never ACK a 200 that came too
late. Such a call must not become an `answered` CDR that lasts until some timer ran out. Here a
real `dce run` is starved of CPU the way a saturated core starves it (SIGSTOP/SIGCONT, 60 % of
the time stopped, in 600 ms stalls longer than T1) while SIPp offers 1 s calls. The CPU is what
is emulated; the SIP, the timers and the CDRs are all real. Afterwards:

* no call stays live once the timers have run out;
* no CDR lasts longer than the real hold (plus the queueing the stalls add), whatever its
  disposition; a call its caller never confirmed lasts 0;
* every call the caller completed has its `answered` CDR, and no Call-ID has two.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, Sipp, sipp_command, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

RATE = 100  # calls/s offered
CALLS = 500
HOLD_MS = 1000
STALL_S, RUN_S = 0.6, 0.4
# A BYE and the ACK it follows can sit in different stalls: the duration may grow by about one
# stall plus the backlog behind it, never by the tens of seconds of a timer.
SLACK_MS = 4000


def _starve(pid: int, stop: threading.Event) -> None:
    """Stop the switch STALL_S out of every STALL_S + RUN_S seconds until ``stop`` is set."""
    try:
        while not stop.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(STALL_S)
            os.kill(pid, signal.SIGCONT)
            stop.wait(RUN_S)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_overload_bills_no_call_beyond_its_real_hold(
    switches: object, sipp: str, workdir: Path
) -> None:
    buyer_port = free_port()
    config = dce_process.one_buyer(buyer_port, CALLED)
    sw: Switch = switches(  # type: ignore[operator]
        config, name="ghosts", env={"DCE_MEDIA_MODE": "bypass"}
    )
    buyer = start_uas(workdir, "uas.xml", buyer_port, calls=CALLS, timeout_s=90)
    caller = Sipp("uac-ghosts", workdir, *sipp_command(
        "uac.xml", "uac-ghosts", port=free_port(), remote=sw.sip_addr, calls=CALLS,
        timeout_s=60, trace=False,
        extra=["-r", str(RATE), "-d", str(HOLD_MS), "-trace_stat", "-stf", "uac-ghosts.csv",
               "-fd", "1"])).start()
    stop = threading.Event()
    starver = threading.Thread(target=_starve, args=(sw.pid, stop), daemon=True)
    starver.start()
    try:
        time.sleep(CALLS / RATE + 2)  # the whole offered load, starved
        stop.set()
        starver.join()
        caller.wait(75)
        # Timer L / H (64·T1 = 32 s) end what the load left behind.
        deadline = time.monotonic() + 45
        while sw.healthz().get("live_calls") != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        live = sw.healthz().get("live_calls")
    finally:
        stop.set()
        caller.kill()
        buyer.kill()
    assert live == 0, f"{live} calls still live long after the load\n{sw.tail()}"
    completed = _successful(workdir / "uac-ghosts.csv")
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = fetch(
            sw.dsn,
            "SELECT a_call_id, disposition, rule, duration_ms, billable FROM cdrs "
            "WHERE called = $1", "+" + CALLED,
        )
        if len([r for r in rows if r["disposition"] == "answered"]) >= completed:
            break
        time.sleep(0.5)
    assert rows, sw.tail()
    ids = [r["a_call_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a call has two CDRs"
    answered = [r for r in rows if r["disposition"] == "answered"]
    assert len(answered) >= completed > 0, (len(answered), completed)
    too_long = [r for r in rows if int(r["duration_ms"]) > HOLD_MS + SLACK_MS]  # type: ignore[call-overload]
    assert too_long == [], f"{len(too_long)} CDRs longer than the real hold: {too_long[:5]}"
    unconfirmed = [r for r in rows if r["rule"] == "no_ack"]
    assert all(int(r["duration_ms"]) == 0 and not r["billable"] for r in unconfirmed), (  # type: ignore[call-overload]
        unconfirmed[:5]
    )


def _successful(stat_file: Path) -> int:
    """SuccessfulCall(C) from the last row of SIPp's -trace_stat CSV."""
    lines = [ln for ln in stat_file.read_text(errors="replace").splitlines() if ln.strip()]
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return int(dict(zip(names, values, strict=False))["SuccessfulCall(C)"])
