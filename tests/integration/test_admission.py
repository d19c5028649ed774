"""Who may send calls: a source no trunk admits gets 403 (SPEC.md "SIP", issue 3).

The switch here has one IP trunk (127.0.0.1/32) and no digest trunk, so a caller on 127.0.0.2
cannot authenticate its way in and must be refused outright.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, run_uac, sip_headers, start_uas
from tests.integration.sipwire import UdpWatcher
from tests.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sw(switches: object, buyer_port: int, sipp: str) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk(sources=["127.0.0.1/32"])],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }
    return switches(config, name="admission")  # type: ignore[operator,no-any-return]


def test_unknown_source_403(sw: Switch, buyer_port: int, workdir: Path) -> None:
    watcher = UdpWatcher(buyer_port)
    try:
        caller = run_uac(workdir, "uac-expect-403.xml", sw.sip_addr, name="uac-403",
                         local_ip="127.0.0.2")
        leaked = watcher.received(0.3)
    finally:
        watcher.close()
    assert caller.ok, caller.describe()
    assert not leaked, "a refused call still reached the buyer"
    (forbidden,) = sip_headers(caller.messages(), "SIP/2.0 403")
    assert "reason" in forbidden, f"403 without a Reason header naming the rule: {forbidden}"
    assert not sip_headers(caller.messages(), "SIP/2.0 401"), "challenged without digest trunks"


def test_admitted_source_still_calls(sw: Switch, buyer_port: int, workdir: Path) -> None:
    buyer = start_uas(workdir, "uas.xml", buyer_port)
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name="uac-ok", extra=["-d", "100"])
        done = buyer.wait(15)
    finally:
        buyer.kill()
    assert caller.ok, caller.describe()
    assert done.ok, done.describe()
    cdr = wait_cdr(sw.dsn, caller.call_id)
    assert cdr["trunk_id"] == "it-ip" and cdr["disposition"] == "answered", cdr
