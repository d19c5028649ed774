"""The compliance gate in a real `dce run` (issue 5 end-to-end tests).

* a DNC-listed caller (list imported with the real `dce dnc import` CLI) gets 403 with a
  ``Reason`` naming the rule, and a CDR ``rejected_compliance`` with ``dnc:fail``;
* a caller outside the campaign's calling-hours window likewise (``calling_hours``);
* a call with a signed SHAKEN PASSporT (test CA in DCE_STIR_TRUST_DIR) carries attestation A
  into its CDR, and one with only ``verstat`` in P-Asserted-Identity carries B.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.compliance.stirkit import make_ca, make_leaf, passport, write_store
from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch, dce_command
from tests.integration.sipp import CALLED, CALLER, run_uac, sip_headers, start_uas
from tests.integration.sipwire import SipSocket, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration

DNC_NUMBER = "18005550170"  # campaign that requires the federal DNC list
HOURS_NUMBER = "18005550171"  # campaign whose calling window excludes "now" for the caller
OPEN_NUMBER = "18005550172"  # no caller-number rules: for attestation


def _closed_window() -> str:
    """A one-hour window twelve hours away from now in the caller's zone (Chicago, 312)."""
    local = datetime.now(UTC).astimezone(ZoneInfo("America/Chicago"))
    start = (local.hour + 12) % 24
    return f"{start:02d}:00-{start:02d}:59"


@pytest.fixture(scope="module")
def stir_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("stir-trust")
    ca = make_ca()
    now = datetime.now(UTC)  # a live switch checks validity against the real clock
    leaf = make_leaf(ca, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))
    # Found by the last path segment of the PASSporT's x5u (…/sp1.pem).
    write_store(folder, ca, {"sp1.pem": leaf})
    return folder, leaf


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sw(switches: Any, sipp: str, stir_dir: tuple[Path, Any], buyer_port: int,
       tmp_path_factory: pytest.TempPathFactory) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [
            dce_process.campaign("dnc", ["+" + DNC_NUMBER],
                                 compliance={"calling_hours": False, "dnc_lists": ["federal"],
                                             "fraud_threshold": 100}),
            dce_process.campaign("hours", ["+" + HOURS_NUMBER],
                                 compliance={"calling_hours": True,
                                             "hours_window": _closed_window(),
                                             "fraud_threshold": 100}),
            dce_process.campaign("open", ["+" + OPEN_NUMBER, "+" + CALLED]),
        ],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }
    switch = switches(config, start=False, env={"DCE_STIR_TRUST_DIR": str(stir_dir[0])})
    # The federal list, imported with the CLI a user would run, before the switch starts.
    numbers = tmp_path_factory.mktemp("dnc") / "federal.csv"
    numbers.write_text("phone\n" + CALLER.removeprefix("+1") + "\n(415) 555-0123\nnot-a-number\n")
    env = switch.environment()
    out = subprocess.run([*dce_command(), "dnc", "import", str(numbers), "--list", "federal",
                          "--source", "ftc-test"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    # The CSV header and the junk line are read, skipped and counted.
    assert "read 4, imported 2, rejected 2" in out.stdout
    return switch.start()


def test_dnc_listed_caller_gets_403_with_reason(sw: Switch, workdir: Path) -> None:
    uac = run_uac(workdir, "uac-expect-403.xml", sw.sip_addr, service=DNC_NUMBER)
    assert uac.ok, uac.describe()
    (resp,) = sip_headers(uac.messages(), "SIP/2.0 403")
    assert 'text="dnc"' in resp.get("reason", ""), resp
    cdr = wait_cdr(sw.dsn, uac.call_id)
    assert cdr["disposition"] == "rejected_compliance"
    assert cdr["sip_status"] == 403
    assert "dnc:fail" in cdr["compliance"]
    assert cdr["buyer_id"] is None and cdr["attempts"] == 0


def test_caller_outside_calling_hours_gets_403(sw: Switch, workdir: Path) -> None:
    uac = run_uac(workdir, "uac-expect-403.xml", sw.sip_addr, service=HOURS_NUMBER)
    assert uac.ok, uac.describe()
    (resp,) = sip_headers(uac.messages(), "SIP/2.0 403")
    assert 'text="calling_hours"' in resp.get("reason", ""), resp
    cdr = wait_cdr(sw.dsn, uac.call_id)
    assert cdr["disposition"] == "rejected_compliance"
    assert "calling_hours:fail" in cdr["compliance"]
    assert cdr["caller_state"] == "IL"


def _call_with(sw: Switch, workdir: Path, buyer_port: int, extra: list[tuple[str, str]]) -> str:
    """One answered call from a raw UDP caller carrying ``extra`` headers; returns its Call-ID."""
    uas = start_uas(workdir, "uas.xml", buyer_port)
    call_id = f"it-stir-{datetime.now(UTC).timestamp()}"
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        host, port = s.local
        common = [("From", f"<sip:{CALLER}@{host}:{port}>;tag=stir1"),
                  ("To", f"<sip:+{OPEN_NUMBER}@127.0.0.1>"), ("Call-ID", call_id)]
        sdp = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               b"m=audio 40000 RTP/AVP 0\r\n")
        s.send(build_request(
            "INVITE", f"sip:+{OPEN_NUMBER}@127.0.0.1:{sw.sip_port}",
            [("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKstir1;rport"),
             ("Max-Forwards", "70"), *common, ("CSeq", "1 INVITE"),
             ("Contact", f"<sip:caller@{host}:{port}>"), ("Content-Type", "application/sdp"),
             *extra], sdp))
        final = None
        while final is None:
            msg = s.recv(timeout=10)
            assert msg is not None, "no final response"
            if msg.status >= 200:
                final = msg
        assert final.status == 200, final.start
        to = final.header("to") or ""
        s.send(build_request("ACK", f"sip:dce@127.0.0.1:{sw.sip_port}", [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKstir2;rport"),
            ("Max-Forwards", "70"), common[0], ("To", to), common[2], ("CSeq", "1 ACK")]))
        s.send(build_request("BYE", f"sip:dce@127.0.0.1:{sw.sip_port}", [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKstir3;rport"),
            ("Max-Forwards", "70"), common[0], ("To", to), common[2], ("CSeq", "2 BYE")]))
        bye_ok = s.recv(timeout=5)
        assert bye_ok is not None and bye_ok.status == 200
    result = uas.wait(20)
    assert result.ok, result.describe()
    return call_id


def test_signed_passport_attestation_reaches_the_cdr(
    sw: Switch, workdir: Path, stir_dir: tuple[Path, Any], buyer_port: int
) -> None:
    identity = passport(stir_dir[1], orig=CALLER.removeprefix("+"), dest=OPEN_NUMBER,
                        attest="A", iat=datetime.now(UTC) - timedelta(seconds=2))
    call_id = _call_with(sw, workdir, buyer_port, [("Identity", identity)])
    cdr = wait_cdr(sw.dsn, call_id)
    assert cdr["disposition"] == "answered"
    assert cdr["attestation"] == "A"
    assert "attestation:skip" in cdr["compliance"] or "attestation:pass" in cdr["compliance"]


def test_verstat_from_upstream_carrier_reaches_the_cdr(
    sw: Switch, workdir: Path, buyer_port: int
) -> None:
    pai = f"<sip:{CALLER}@127.0.0.1;verstat=TN-Validation-Passed-B>"
    call_id = _call_with(sw, workdir, buyer_port, [("P-Asserted-Identity", pai)])
    cdr = wait_cdr(sw.dsn, call_id)
    assert cdr["disposition"] == "answered"
    assert cdr["attestation"] == "B"
