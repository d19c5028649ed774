"""Two real ``dce run`` instances on one PostgreSQL: a change through either one's API, or
``dce dnc import``, applies on both within a second; one made while an instance was down
applies when it starts (dce/sync.py, store/migrations/0005_shared_state.sql).

A and B share one fresh database (DCE_TEST_DATABASE_URL's server) and the erasure secret; each
has its own ports and data dir. B's admin API answers DNC lookups from B's own memory (its
gate), which is how the tests see what B holds without a call; calls (SIPp) show that B
routes by it. The last tests run ``dce dnc import`` against running and stopped switches, the
embedded database's included.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compliance.dnc import DncList, DncStore
from tests.integration import dce_process
from tests.integration.db import create_database, drop_database, wait_cdr
from tests.integration.dce_process import Switch, dce_command
from tests.integration.sipp import CALLED, CALLER, SippResult, run_uac, sip_headers, start_uas
from tests.ports import free_port

DNC_NUMBER = "18005550171"  # campaign checking DNC list "internal"
CONSENT_NUMBER = "18005550172"  # campaign requiring consent
ERASED = "+14155550123"  # erased through A; never a caller here


@pytest.fixture(scope="module")
def shared_db(server_url: str | None) -> Iterator[str]:
    if server_url is None:
        pytest.skip("needs DCE_TEST_DATABASE_URL: two instances share one external PostgreSQL")
    url = create_database(server_url, prefix="dce_it_shared")
    yield url
    drop_database(server_url, url)


@pytest.fixture(scope="module")
def buyer_ports() -> dict[str, int]:
    return {"low": free_port(), "high": free_port()}


@pytest.fixture(scope="module")
def buyers(tmp_path_factory: pytest.TempPathFactory, buyer_ports: dict[str, int],
           sipp: str) -> Iterator[None]:
    workdir = tmp_path_factory.mktemp("shared-buyers")
    uases = [start_uas(workdir, "uas.xml", port, name=f"uas-{name}", calls=1000,
                       timeout_s=600) for name, port in buyer_ports.items()]
    yield
    for uas in uases:
        uas.kill()


def config(ports: dict[str, int]) -> dict[str, Any]:
    checks = {"calling_hours": False, "fraud_threshold": 100}
    return {
        "trunks": [dce_process.ip_trunk("it-shared", ["127.0.0.1/32"])],
        "campaigns": [
            dce_process.campaign("main", ["+" + CALLED]),
            dce_process.campaign("dncc", ["+" + DNC_NUMBER],
                                 compliance={**checks, "dnc_lists": ["internal"]}),
            dce_process.campaign("consentc", ["+" + CONSENT_NUMBER],
                                 compliance={**checks, "consent_required": True}),
        ],
        "buyers": [
            dce_process.buyer("low", [f"sip:low@127.0.0.1:{ports['low']}"], profiles=[
                {"id": "low-main", "campaign_id": "main", "bid": "1.00"}]),
            dce_process.buyer("high", [f"sip:high@127.0.0.1:{ports['high']}"], profiles=[
                {"id": "high-main", "campaign_id": "main", "bid": "2.00"},
                {"id": "high-dnc", "campaign_id": "dncc", "bid": "2.00"},
                {"id": "high-consent", "campaign_id": "consentc", "bid": "2.00"}]),
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def pair(shared_db: str, switches: Any, buyer_ports: dict[str, int],
         buyers: None) -> tuple[Switch, Switch]:
    # One erasure secret for both: the suppression entries are its hashes.
    env = {"DCE_ERASURE_SECRET": secrets.token_hex(32)}
    a = switches(config(buyer_ports), name="a", env=env, database_url=shared_db)
    b = switches(config(buyer_ports), name="b", env=env, database_url=shared_db)
    return a, b


def api(sw: Switch, method: str, path: str, body: Any = None,
        content_type: str = "application/json") -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(sw.url + "/api/v1" + path, data=data, method=method, headers={
        "Authorization": "Bearer it-admin-token", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def lookup(sw: Switch, number: str) -> dict[str, Any]:
    """What ``sw``'s own gate holds about ``number`` (its DNC lists, its suppression)."""
    status, body = api(sw, "GET", "/dnc/" + number)
    assert status == 200, body
    return dict(body)


def within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until ``check()`` holds; fails if not within ``seconds``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < seconds, f"not within {seconds}s"
        time.sleep(0.02)
    return time.monotonic() - t0


def call(sw: Switch, workdir: Path, name: str, scenario: str = "uac.xml",
         service: str = CALLED) -> SippResult:
    result = run_uac(workdir, scenario, sw.sip_addr, name=name, service=service,
                     extra=["-d", "0"], timeout_s=15)
    assert result.ok, result.describe() + "\n" + sw.tail(15)
    return result


def reason(result: SippResult, status: str = "403") -> str:
    (final,) = sip_headers(result.messages(), f"SIP/2.0 {status}")
    return final.get("reason", "")


def test_a_bid_changed_through_a_is_used_by_bs_next_call(
    pair: tuple[Switch, Switch], workdir: Path, shared_db: str,
) -> None:
    a, b = pair
    first = wait_cdr(shared_db, call(b, workdir, "bid-before").call_id)
    assert first["buyer_id"] == "high", first
    status, body = api(a, "PATCH", "/buyers/low/profiles/low-main", {"bid": "3.00"},
                       content_type="application/merge-patch+json")
    assert status == 200, body
    time.sleep(1.0)
    cdr = wait_cdr(shared_db, call(b, workdir, "bid-after").call_id)
    assert (cdr["buyer_id"], str(cdr["bid"])) == ("low", "3.000000"), cdr
    auction = json.loads(cdr["auction"]) if isinstance(cdr["auction"], str) else cdr["auction"]
    assert auction["winner"]["bid"] == "3.000000", auction  # B's own auction saw the new bid


def test_a_dnc_number_added_through_a_is_refused_by_b_within_1s(
    pair: tuple[Switch, Switch], workdir: Path, shared_db: str,
) -> None:
    a, b = pair
    status, body = api(a, "POST", "/dnc?list=internal&source=it&max_age_days=none",
                       "+13125550000\n", content_type="text/plain")
    assert status == 200, body
    within(1.0, lambda: lookup(b, "+13125550000")["lists"] == ["internal"])
    call(b, workdir, "dnc-before", service=DNC_NUMBER)  # the caller is not on it yet
    status, body = api(a, "POST", "/dnc?list=internal&source=it&merge=true", CALLER + "\n",
                       content_type="text/plain")
    assert status == 200 and body["total"] == 2, body
    took = within(1.0, lambda: lookup(b, CALLER)["lists"] == ["internal"])
    refused = call(b, workdir, "dnc-after", "uac-expect-403.xml", service=DNC_NUMBER)
    assert 'text="dnc"' in reason(refused), (took, reason(refused))
    assert "dnc:fail" in wait_cdr(shared_db, refused.call_id)["compliance"]


def test_consent_and_erasure_through_a_reach_b(
    pair: tuple[Switch, Switch], workdir: Path,
) -> None:
    a, b = pair
    refused = call(b, workdir, "consent-before", "uac-expect-403.xml", service=CONSENT_NUMBER)
    assert 'text="consent"' in reason(refused)
    status, body = api(a, "POST", "/consent", {"caller": CALLER, "campaign_id": "consentc"})
    assert status == 201, body
    time.sleep(1.0)
    call(b, workdir, "consent-after", service=CONSENT_NUMBER)  # answered now

    status, body = api(a, "DELETE", f"/callers/{ERASED}?block_all=true")
    assert status == 200, body
    within(1.0, lambda: lookup(b, ERASED)["suppressed"] is True)


def test_changes_made_while_b_was_down_apply_when_it_starts(
    pair: tuple[Switch, Switch], workdir: Path, shared_db: str,
) -> None:
    a, b = pair
    assert b.stop() == 0
    status, body = api(a, "PATCH", "/buyers/high/profiles/high-main", {"bid": "5.00"},
                       content_type="application/merge-patch+json")
    assert status == 200, body
    status, body = api(a, "POST", "/dnc?list=internal&source=it&merge=true", "+13125550199\n",
                       content_type="text/plain")
    assert status == 200, body
    status, body = api(a, "DELETE", "/callers/+14155550124")
    assert status == 200, body
    b.start()
    shared = b.healthz()["shared_state"]
    assert shared["versions"] == a.healthz()["shared_state"]["versions"], shared
    assert lookup(b, "+13125550199")["lists"] == ["internal"]
    assert lookup(b, "+14155550124")["suppressed"] is True
    cdr = wait_cdr(shared_db, call(b, workdir, "bid-restarted").call_id)
    assert (cdr["buyer_id"], str(cdr["bid"])) == ("high", "5.000000"), cdr


def dnc_import(sw: Switch, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*dce_command(), "dnc", "import", str(path), *args],
                          env=sw.environment(), capture_output=True, text=True, timeout=120,
                          check=False)


def test_dnc_import_reaches_both_running_instances(
    pair: tuple[Switch, Switch], tmp_path: Path,
) -> None:
    a, b = pair
    numbers = tmp_path / "litigators.csv"
    numbers.write_text("phone\n(312) 555-0142\n")
    out = dnc_import(a, numbers, "--list", "litigator", "--source", "it")
    assert out.returncode == 0, out.stderr
    assert "imported 1" in out.stdout and "stored in the database (DCE_DATABASE_URL)" in out.stdout
    for sw in (a, b):
        within(1.0, lambda sw=sw: lookup(sw, "+13125550142")["lists"] == ["litigator"])
    empty = tmp_path / "empty.csv"
    empty.write_text("phone\nnot a number\n")
    out = dnc_import(a, empty, "--list", "litigator")
    assert out.returncode == 2 and "is unchanged" in out.stderr, out.stderr
    assert lookup(b, "+13125550142")["lists"] == ["litigator"]


def test_dnc_import_with_the_embedded_database(
    switches: Any, buyer_ports: dict[str, int], tmp_path: Path,
) -> None:
    sw = switches(config(buyer_ports), name="solo", embedded=True, start=False)
    # Lists an earlier version kept as files move into the database at the first start.
    assert sw.data_dir is not None
    old = DncStore()
    old.put(DncList("federal", source="2025 copy", loaded_at=datetime.now(UTC),
                    keys=array("d", [2125550100.0])))
    old.save(sw.data_dir / "dnc")
    sw.start()
    assert lookup(sw, "+12125550100")["lists"] == ["federal"]
    assert not (sw.data_dir / "dnc").exists()
    assert (sw.data_dir / "dnc.moved-to-database" / "federal.json").exists()

    numbers = tmp_path / "federal.txt"
    numbers.write_text("2125550101\n")
    out = dnc_import(sw, numbers, "--list", "federal", "--merge")  # the switch owns the database
    assert out.returncode == 0, out.stderr
    assert f"stored through the running switch at {sw.url}" in out.stdout, out.stdout
    assert lookup(sw, "+12125550101")["lists"] == ["federal"]
    assert lookup(sw, "+12125550100")["lists"] == ["federal"]  # merged

    assert sw.stop() == 0
    numbers.write_text("2125550102\n")
    out = dnc_import(sw, numbers, "--list", "federal", "--merge")  # no switch: opens it itself
    assert out.returncode == 0, out.stderr
    assert "stored in the database" in out.stdout and "now 3 numbers" in out.stdout, out.stdout
    sw.start()
    assert lookup(sw, "+12125550102")["lists"] == ["federal"]
