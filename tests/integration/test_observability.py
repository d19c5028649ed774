"""What an operator sees of calls through a real `dce run` (issue 14, "Logs" and "Metrics").

SIPp places an answered billable call and a call no buyer takes (480); then:

* the log has exactly one ``call ended`` line per call, carrying the CDR's values, the numbers
  masked: the caller's number appears nowhere in the log;
* ``/metrics`` has the labelled counters (trunk, campaign, buyer, disposition, rule), money in
  micro-dollars, the setup histograms, process and garbage-collector metrics;
* every metric the Grafana dashboard (docs/grafana/dce.json) queries is in that scrape, and
  every metric family of the scrape is documented in docs/operations.md;
* with DCE_LOG_FORMAT=text and DCE_LOG_NUMBERS=full, the line is text with whole numbers.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, run_uac, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOROUTE = "18005550180"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config(buyer_port: int) -> dict[str, Any]:
    return {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [
            dce_process.campaign("main", ["+" + CALLED], reserve="2.50"),
            dce_process.campaign("noroute", ["+" + NOROUTE], reserve="1.00"),
        ],
        "buyers": [dce_process.buyer(
            "b1", [f"sip:buyer@127.0.0.1:{buyer_port}"],
            profiles=[{"id": "b1-main", "campaign_id": "main", "bid": "4.00"}])],
    }


@pytest.fixture(scope="module")
def calls(switches: Any, sipp: str, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Switch, list[dict[str, Any]]]:
    """The switch and the CDRs of its two calls: answered (billable), then 480."""
    workdir = tmp_path_factory.mktemp("observability-sipp")
    port = free_port()
    sw = switches(config(port), name="observability")
    uas = start_uas(workdir, "uas.xml", port, timeout_s=12)
    try:
        answered = run_uac(workdir, "uac.xml", sw.sip_addr, extra=["-d", "500"], timeout_s=10)
        done = uas.wait(15)
    finally:
        uas.kill()
    refused = run_uac(workdir, "uac-expect-480.xml", sw.sip_addr, service=NOROUTE, timeout_s=10)
    for result in (answered, done, refused):
        assert result.ok, result.describe() + "\n" + sw.tail(25)
    cdrs = [wait_cdr(sw.dsn, answered.call_id), wait_cdr(sw.dsn, refused.call_id)]
    sw.wait_idle()
    return sw, cdrs


def scrape(sw: Switch) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(sw.metrics()) for s in fam.samples}


def usd(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.6f}"


def test_one_line_per_call_with_the_cdr_values(calls: tuple[Switch, list[dict[str, Any]]]
                                               ) -> None:
    sw, cdrs = calls
    lines = [d for d in sw.logs() if d.get("msg") == "call ended"]
    assert [d["call_id"] for d in lines] == [c["call_id"] for c in cdrs], lines
    for line, cdr in zip(lines, cdrs, strict=True):
        assert line["logger"] == "dce.calls" and line["level"] == "info"
        same = {"trunk_id": cdr["trunk_id"], "campaign_id": cdr["campaign_id"],
                "buyer_id": cdr["buyer_id"], "endpoint": cdr["endpoint"],
                "disposition": cdr["disposition"], "rule": cdr["rule"],
                "sip_status": cdr["sip_status"], "hangup_side": cdr["hangup_side"],
                "attempts": cdr["attempts"], "talk_ms": cdr["duration_ms"],
                "billable": cdr["billable"], "price": usd(cdr["price"]),
                "payout": usd(cdr["payout"]), "decision_us": cdr["decision_us"],
                "sip_call_id": cdr["a_call_id"], "caller": "***0123",
                "called": "***" + cdr["called"][-4:]}
        assert {k: line[k] for k in same} == same
        assert 0 <= line["setup_ms"] < 5000
    answered, refused = lines
    assert (answered["disposition"], answered["price"], answered["payout"]) == (
        "answered", "2.500000", "1.750000")
    assert answered["talk_ms"] >= 450
    assert (refused["disposition"], refused["sip_status"], refused["buyer_id"]) == (
        "no_buyer", 480, None)
    assert refused["rule"]
    # GDPR: the caller's number is in no line of the log, whole or national.
    log_text = "\n".join(json.dumps(d) for d in sw.logs())
    assert CALLER not in log_text and CALLER[2:] not in log_text
    # Every line a call wrote carries its call id (no call line without one).
    call_ids = {c["call_id"] for c in cdrs}
    for doc in sw.logs():
        if doc.get("logger", "").startswith(("switch.call", "dce.calls", "dce.bridge", "dce.pump")):
            assert doc.get("call_id") in call_ids, doc


def test_labelled_metrics(calls: tuple[Switch, list[dict[str, Any]]]) -> None:
    sw, cdrs = calls
    rule = cdrs[1]["rule"]
    deadline = time.monotonic() + 5
    while True:  # the CDR commit histogram follows the database by a batch
        got = scrape(sw)
        if got.get(("dce_cdr_commit_delay_seconds_count", ())) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expected = {
        ("dce_trunk_calls_total", (("disposition", "answered"), ("trunk", "it-ip"))): 1,
        ("dce_trunk_calls_total", (("disposition", "no_buyer"), ("trunk", "it-ip"))): 1,
        ("dce_trunk_answered_calls_total", (("trunk", "it-ip"),)): 1,
        ("dce_trunk_billable_calls_total", (("trunk", "it-ip"),)): 1,
        ("dce_trunk_revenue_micros_total", (("trunk", "it-ip"),)): 2_500_000,
        ("dce_trunk_payout_micros_total", (("trunk", "it-ip"),)): 1_750_000,
        ("dce_campaign_calls_total", (("campaign", "main"), ("disposition", "answered"))): 1,
        ("dce_campaign_calls_total", (("campaign", "noroute"), ("disposition", "no_buyer"))): 1,
        ("dce_campaign_revenue_micros_total", (("campaign", "main"),)): 2_500_000,
        ("dce_campaign_revenue_micros_total", (("campaign", "noroute"),)): 0,
        ("dce_buyer_calls_total", (("buyer", "b1"), ("disposition", "answered"))): 1,
        ("dce_buyer_billable_calls_total", (("buyer", "b1"),)): 1,
        ("dce_buyer_revenue_micros_total", (("buyer", "b1"),)): 2_500_000,
        ("dce_call_rules_total", (("rule", rule), ("trunk", "it-ip"))): 1,
        ("dce_trunk_live_calls", (("trunk", "it-ip"),)): 0,
        # uas.xml sends 180 then 200: one ringback, one first response; both calls decided.
        ("dce_post_dial_delay_seconds_count", ()): 1,
        ("dce_first_response_seconds_count", ()): 1,
        ("dce_decision_seconds_count", ()): 2,
        ("dce_cdr_commit_delay_seconds_count", ()): 2,
    }
    assert {k: got.get(k) for k in expected} == expected
    talk = got[("dce_trunk_talk_seconds_total", (("trunk", "it-ip"),))]
    assert 0.45 <= talk < 5
    assert got[("process_resident_memory_bytes", ())] > 10_000_000
    assert got[("process_open_fds", ())] > 0
    assert got[("process_cpu_seconds_total", ())] > 0
    assert any(name == "python_gc_collections_total" for name, _ in got)
    assert ("dce_gc_gen0_collections_total", ()) in got


def dashboard_metrics() -> set[str]:
    doc = json.loads((ROOT / "docs/grafana/dce.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    return {m for e in exprs for m in re.findall(r"\b(?:dce|process|python)_[a-z0-9_]+", e)}


def test_the_dashboard_queries_only_metrics_that_exist(calls: tuple[Switch, list[dict[str, Any]]]
                                                        ) -> None:
    sw, _ = calls
    names = {name for name, _ in scrape(sw)}
    used = dashboard_metrics()
    assert len(used) > 25
    assert sorted(used - names) == []


def test_every_metric_is_documented(calls: tuple[Switch, list[dict[str, Any]]]) -> None:
    sw, _ = calls
    families = {fam.name for fam in text_string_to_metric_families(sw.metrics())}
    text = (ROOT / "docs/operations.md").read_text() + (ROOT / "docs/cdr.md").read_text()
    documented = set(re.findall(r"`((?:dce|process|python)_[a-z0-9_]+)", text))
    # The docs name counters with their _total sample; the parser names families without it.
    missing = [f for f in families if f not in documented and f + "_total" not in documented]
    assert sorted(missing) == []


def test_text_format_and_full_numbers(switches: Any, sipp: str, workdir: Path) -> None:
    sw = switches(config(free_port()), name="textlog",
                  env={"DCE_LOG_FORMAT": "text", "DCE_LOG_NUMBERS": "full"})
    refused = run_uac(workdir, "uac-expect-480.xml", sw.sip_addr, service=NOROUTE, timeout_s=10)
    assert refused.ok, refused.describe()
    cdr = wait_cdr(sw.dsn, refused.call_id)
    assert sw.stderr_path is not None
    text = sw.stderr_path.read_text()
    (line,) = [ln for ln in text.splitlines() if " dce.calls: call ended " in ln]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO dce\.calls: call ended ",
                    line), line
    assert f"call_id={cdr['call_id']} " in line
    assert f"caller={CALLER} " in line and f"called=+{NOROUTE} " in line
    assert "disposition=no_buyer " in line and "sip_status=480 " in line
    assert not text.lstrip().startswith("{")
