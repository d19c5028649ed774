"""Crash recovery (docs/cdr.md "Crash recovery"): kill -9 with calls up, then start again.

The new process reads the call journal the dead one left: both legs of every call that was up
get a BYE, and every call gets exactly one CDR, ``interrupted`` for those it ended.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, Sipp, sip_headers, sipp_command, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

CALLS = 20


def test_kill_9_with_calls_up_ends_them_after_restart(
    switches: object, sipp: str, workdir: Path
) -> None:
    buyer_port = free_port()
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        # A buyer without profiles takes every call at no minimum duration: an interrupted
        # call is billable (at price 0), so the test sees the money fields settled too.
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }
    sw: Switch = switches(config, name="crash")  # type: ignore[operator]
    buyer = start_uas(workdir, "uas.xml", buyer_port, calls=CALLS, timeout_s=90)
    caller = Sipp("uac-crash", workdir, *sipp_command(
        "uac-expect-bye.xml", "uac-crash", port=free_port(), remote=sw.sip_addr,
        calls=CALLS, timeout_s=90, extra=["-r", "20", "-l", str(CALLS)])).start()
    try:
        deadline = time.monotonic() + 20
        while sw.healthz().get("live_calls") != CALLS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sw.healthz().get("live_calls") == CALLS, sw.tail()
        time.sleep(1.5)  # every call ACKed, and at least one heartbeat after that
        sw.kill()
        sw.start()
        served = buyer.wait(30)
        called = caller.wait(30)
    finally:
        buyer.kill()
        caller.kill()
    assert served.ok, "the buyer did not see its calls end\n" + served.describe()
    assert called.ok, "the caller did not see its calls end\n" + called.describe()
    assert len(sip_headers(served.messages(), "BYE ")) == CALLS
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = fetch(sw.dsn, "SELECT * FROM cdrs WHERE called = $1", "+" + CALLED)
        if len(rows) >= CALLS:
            break
        time.sleep(0.2)
    assert len(rows) == CALLS, [r["disposition"] for r in rows]
    assert {r["disposition"] for r in rows} == {"interrupted"}
    assert {r["rule"] for r in rows} == {"crash_recovery"}
    for row in rows:
        # Up from the answer to the last heartbeat before the kill: about 1.5 to 3 s.
        duration = int(row["duration_ms"])  # type: ignore[call-overload]
        assert 500 <= duration <= 5000, row
        assert row["billable"] is True and row["price"] is not None, row
    # A clean stop leaves no journal: every CDR is in PostgreSQL.
    assert sw.stop() == 0
    assert sw.data_dir is not None
    assert list((sw.data_dir / "journal").glob("*.jnl")) == []
    # A third start finds nothing left to recover and writes nothing twice.
    sw.start()
    assert len(fetch(sw.dsn, "SELECT call_id FROM cdrs WHERE called = $1", "+" + CALLED)) == CALLS
