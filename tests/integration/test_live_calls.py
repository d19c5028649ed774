"""Live calls through a real ``dce run``: the API and the ``dce`` commands an operator types.

One switch (ring timeout 30 s, so a ringing call stays live), a campaign, two buyers with API
keys: ``b1`` (a fallback buyer whose endpoint is a SIPp UAS on P1) and ``b2`` (no endpoint
that ever gets a call). Callers and buyers are SIPp. Every ``dce`` command runs as its own
process, as an operator would run it, with the token from DCE_ADMIN_TOKEN or from
DCE_DATA_DIR/admin_token.

* an answered call is listed (API, buyer keys, ``dce calls``), ``dce hangup`` ends it: both
  SIPp legs get their BYE and pass, the CDR says ``hangup_side`` ``operator``;
* a ringing call hung up: the caller gets 480 with Reason ``operator_hangup``, the buyer a
  CANCEL, the CDR ``cancelled`` / ``operator``;
* ``dce status``, ``dce --version``, and the errors: no switch running (exit 3), a wrong
  token, an unknown call id.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dce import __version__
from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch, dce_command
from tests.integration.sipp import CALLED, Sipp, sip_headers, sipp_command, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

KEY_B1 = "bk_live_b1_" + "1" * 24
KEY_B2 = "bk_live_b2_" + "2" * 24


@pytest.fixture(scope="module")
def p1() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sw(switches: Any, p1: int, sipp: str) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [
            dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{p1}"], api_key=KEY_B1),
            dce_process.buyer("b2", [], api_key=KEY_B2,
                              profiles=[{"id": "none", "numbers": ["+18005550999"],
                                         "bid": "1.00"}]),
        ],
    }
    return switches(config, name="live", env={"DCE_RING_TIMEOUT": "30s"})


def dce(sw: Switch | None, *args: str, env: dict[str, str] | None = None,
        http_port: int | None = None) -> subprocess.CompletedProcess[str]:
    """One ``dce`` command as an operator runs it: the switch's HTTP address and token in its
    environment (or ``env`` instead)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DCE_")}
    if sw is not None:
        base.update({"DCE_HTTP_LISTEN": f"{sw.host}:{sw.http_port}",
                     "DCE_ADMIN_TOKEN": "it-admin-token"})
    if http_port is not None:
        base["DCE_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
    base.update(env or {})
    return subprocess.run([*dce_command(), *args], env=base, capture_output=True, text=True,
                          timeout=60)


def api(sw: Switch, path: str, key: str = "it-admin-token", method: str = "GET") -> Any:
    req = urllib.request.Request(f"{sw.url}/api/v1{path}", method=method,
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def live(sw: Switch, state: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one live call, once it is in ``state``."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = api(sw, "/calls/live")["items"]
        if len(items) == 1 and items[0]["state"] == state:
            return items[0]
        time.sleep(0.1)
    raise AssertionError(f"no single live call in state {state}: {items}")


def caller(workdir: Path, scenario: str, sw: Switch, name: str) -> Sipp:
    cmd, cid = sipp_command(scenario, name, port=free_port(), remote=sw.sip_addr,
                            timeout_s=25)
    return Sipp(name, workdir, cmd, cid).start()


def test_an_answered_call_is_listed_and_hung_up_by_the_operator(
    sw: Switch, p1: int, workdir: Path
) -> None:
    buyer = start_uas(workdir, "uas.xml", p1, name="uas-live", timeout_s=25)
    uac = caller(workdir, "uac-expect-bye.xml", sw, "uac-live")
    try:
        call = live(sw, "answered")
        assert call["buyer_id"] == "b1" and call["campaign_id"] == "main", call
        assert call["trunk_id"] == "it-ip" and call["called"] == "+" + CALLED, call
        assert call["a_call_id"] == uac.call_id, call
        assert call["endpoint"] == f"sip:buyer@127.0.0.1:{p1}", call
        # Buyers see only their own live calls.
        assert [c["call_id"] for c in api(sw, "/calls/live", KEY_B1)["items"]] == [
            call["call_id"]]
        assert api(sw, "/calls/live", KEY_B2)["items"] == []

        status = dce(sw, "status")
        assert status.returncode == 0, status.stderr
        facts = dict(line.split(":", 1) for line in status.stdout.splitlines())
        facts = {k: v.strip() for k, v in facts.items()}
        assert facts["switch"] == f"{sw.url} (ok)", status.stdout
        assert facts["live calls"] == "1" and facts["version"] == __version__, status.stdout

        listed = dce(sw, "calls")
        assert listed.returncode == 0, listed.stderr
        header, row, total = listed.stdout.splitlines()
        assert header.split()[:4] == ["CALL", "ID", "STATE", "AGE"], header
        assert row.split()[:2] == [call["call_id"], "answered"], row
        for value in ("it-ip", "+13122600123", "main", "b1"):
            assert value in row.split(), (value, row)
        assert total == "1 live call", total
        as_json = dce(sw, "calls", "--json", "--buyer", "b1")
        assert [c["call_id"] for c in json.loads(as_json.stdout)] == [call["call_id"]]
        assert json.loads(dce(sw, "calls", "--json", "--buyer", "b2").stdout) == []

        # The token from the data dir, as on the switch's own machine without DCE_ADMIN_TOKEN.
        data_dir = workdir / "cli-data"
        data_dir.mkdir(exist_ok=True)
        (data_dir / "admin_token").write_text("it-admin-token\n")
        hung = dce(None, "hangup", call["call_id"], http_port=sw.http_port,
                   env={"DCE_DATA_DIR": str(data_dir)})
        assert hung.returncode == 0, hung.stderr
        assert hung.stdout.startswith(f"hung up {call['call_id']} (answered, talked "), hung.stdout
        assert "buyer b1" in hung.stdout and "hangup_side operator" in hung.stdout, hung.stdout
        # Both legs got a BYE (each scenario waits for one) and passed.
        caller_done, buyer_done = uac.wait(20), buyer.wait(20)
        assert caller_done.ok, caller_done.describe()
        assert buyer_done.ok, buyer_done.describe()
    finally:
        uac.kill()
        buyer.kill()
    cdr = wait_cdr(sw.dsn, uac.call_id)
    assert cdr["disposition"] == "answered" and cdr["hangup_side"] == "operator", cdr
    assert cdr["buyer_id"] == "b1" and cdr["sip_status"] == 200, cdr
    sw.wait_idle()
    assert dce(sw, "calls").stdout == "no live calls\n"


def test_a_ringing_call_hung_up_tells_the_caller_why(sw: Switch, p1: int, workdir: Path) -> None:
    buyer = start_uas(workdir, "uas-noanswer.xml", p1, name="uas-ringing", timeout_s=25)
    uac = caller(workdir, "uac-expect-480.xml", sw, "uac-ringing")
    try:
        call = live(sw, "ringing")
        assert call["answered_at"] is None and call["duration_ms"] == 0, call
        hung = dce(sw, "hangup", call["call_id"])
        assert hung.returncode == 0, hung.stderr
        assert "(ringing, buyer b1)" in hung.stdout, hung.stdout
        caller_done, buyer_done = uac.wait(20), buyer.wait(20)
        assert caller_done.ok, caller_done.describe()
        assert buyer_done.ok, buyer_done.describe()  # it got the CANCEL
    finally:
        uac.kill()
        buyer.kill()
    (final,) = sip_headers(caller_done.messages(), "SIP/2.0 480")
    assert 'text="operator_hangup"' in final.get("reason", ""), final
    cdr = wait_cdr(sw.dsn, uac.call_id)
    assert cdr["disposition"] == "cancelled" and cdr["hangup_side"] == "operator", cdr
    assert cdr["rule"] == "operator_hangup" and cdr["sip_status"] == 480, cdr
    sw.wait_idle()


def test_errors_an_operator_can_read(sw: Switch) -> None:
    version = dce(None, "--version")
    assert version.returncode == 0 and version.stdout == f"dce {__version__}\n"

    unknown = dce(sw, "hangup", "no-such-call")
    assert unknown.returncode == 1
    assert unknown.stderr == "dce: not found: no live call 'no-such-call'\n", unknown.stderr

    wrong = dce(sw, "calls", env={"DCE_ADMIN_TOKEN": "not-the-token-0000000000"})
    assert wrong.returncode == 1
    assert wrong.stderr == f"dce: the switch at {sw.url} refused the admin token\n"

    nobody = free_port()
    for command in (["status"], ["calls"], ["hangup", "x"]):
        down = dce(None, *command, http_port=nobody)
        assert down.returncode == 3, (command, down)
        assert down.stderr.startswith(
            f"dce: no switch answers at http://127.0.0.1:{nobody}: is `dce run` running?"
        ), down.stderr
