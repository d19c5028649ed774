"""`/healthz` tells the truth during a database outage, and no CDR is lost (issue 11).

A TCP proxy (PgProxy) sits between `dce run` and PostgreSQL. Calls run before, during and after
the proxy is cut: `/healthz` must say 503 with a JSON body naming the database and the CDRs
waiting while the link is down, `/metrics` must show them waiting on disk, and once the link
is back `/healthz` is 200 again and every call has exactly one row.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import fetch
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, run_uac, start_uas
from tests.integration.test_cdr_durability import proxied_database
from tests.ports import free_port

pytestmark = pytest.mark.integration


def wait_health(sw: Switch, status: int, timeout: float,
                until: Any = lambda doc: True) -> dict[str, Any]:  # fmt: skip
    """Poll /healthz until it answers ``status`` and ``until(doc)``; returns the JSON."""
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:
        seen = sw.health()
        if seen[0] == status and until(seen[1]):
            return seen[1]
        time.sleep(0.1)
    raise AssertionError(f"/healthz not {status} after {timeout}s: last {seen}\n{sw.tail(20)}")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m is not None, f"no {name} in /metrics"
    return float(m.group(1))


def calls(sw: Switch, buyer_port: int, workdir: Path, name: str, n: int) -> str:
    """``n`` answered calls (SIPp on both sides); returns their Call-ID prefix."""
    buyer = start_uas(workdir, "uas.xml", buyer_port, name=f"uas-{name}",
                      calls=n, timeout_s=30)  # fmt: skip
    result = run_uac(workdir, "uac.xml", sw.sip_addr, name=f"uac-{name}", calls=n,
                     extra=["-r", "10", "-d", "100"], timeout_s=30)  # fmt: skip
    served = buyer.wait(20)
    assert result.ok, result.describe()
    assert served.ok, served.describe()
    return result.call_id.rsplit("-", 1)[0]


def test_healthz_503_during_a_database_cut_then_200_and_no_cdr_lost(
    switches: Any, server_url: str | None, sipp: str, workdir: Path
) -> None:
    with proxied_database(server_url) as (proxy, switch_url, direct_url):
        buyer_port = free_port()
        config = dce_process.one_buyer(buyer_port, CALLED)
        sw = switches(config, name="health", database_url=switch_url)
        status, doc = sw.health()
        assert status == 200 and doc["status"] == "ok", doc
        assert doc["cdr"] == {"database_ok": True, "spooled": 0, "in_memory": 0,
                              "rejected": 0, "lost": 0}  # fmt: skip
        before = calls(sw, buyer_port, workdir, "before", 3)
        wait_health(sw, 200, 5.0, until=lambda d: d["cdr"]["in_memory"] == 0)

        proxy.cut()
        down = wait_health(sw, 503, 10.0)
        assert down["status"] == "unavailable"
        assert any(p.startswith("database unreachable") for p in down["problems"]), down
        during = calls(sw, buyer_port, workdir, "during", 5)
        down = wait_health(sw, 503, 10.0, until=lambda d: d["cdr"]["spooled"] >= 5)
        assert any(re.match(r"\d+ CDRs waiting for the database", p) for p in down["problems"])
        assert down["cdr"]["database_ok"] is False
        text = sw.metrics()
        assert metric(text, 'dce_cdr_waiting{place="disk"}') >= 5
        assert metric(text, "dce_cdr_database_up") == 0

        proxy.restore()
        # 200 as soon as the database answers; the spool is replayed just after.
        up = wait_health(
            sw, 200, 20.0, until=lambda d: d["cdr"]["spooled"] == 0 and d["cdr"]["in_memory"] == 0
        )
        assert up["status"] == "ok" and "problems" not in up
        assert up["cdr"]["spooled"] == 0 and up["cdr"]["in_memory"] == 0
        text = sw.metrics()
        assert metric(text, "dce_cdr_database_up") == 1
        assert metric(text, 'dce_cdr_waiting{place="disk"}') == 0
        assert metric(text, "dce_cdr_commit_delay_seconds_count") == 8
        assert metric(text, "dce_cdr_lost_total") == 0
        sw.wait_idle()
        rows = {
            prefix: fetch(direct_url, "SELECT count(*) AS n, count(DISTINCT call_id) AS u "
                                      "FROM cdrs WHERE a_call_id LIKE $1", prefix + "-%")[0]
            for prefix in (before, during)
        }  # fmt: skip
        assert sw.stop() == 0, sw.tail()
    assert {p: (r["n"], r["u"]) for p, r in rows.items()} == {before: (3, 3), during: (5, 5)}
