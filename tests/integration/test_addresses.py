"""What a buyer is told to reach: a real ``dce run`` listening on the wildcard ``0.0.0.0``.

A SIPp caller calls a SIPp buyer (``uas.xml``, which traces every message) through the switch,
whose SIP socket is bound to ``0.0.0.0``. Nothing the buyer receives may carry ``0.0.0.0``:
not the Via, Contact, From or Call-ID of the INVITE, not the SDP's ``c=``/``o=``, not the ACK
or BYE. Two switches:

* no DCE_SIP_ADVERTISE, no DCE_MEDIA_IP: both are the primary interface's address (the
  source address toward a public address), which the switch prints at start;
* DCE_SIP_ADVERTISE an IPv6 address with a port (written in brackets in SIP) and
  DCE_MEDIA_IP the loopback: SIP says one, SDP the other.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, run_uac, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration


def config(buyer_port: int) -> dict[str, Any]:
    return dce_process.one_buyer(buyer_port, CALLED)


def buyer_side(workdir: Path, sw: Switch, buyer_port: int, name: str) -> str:
    """One answered call; the messages the buyer received, as its SIPp trace has them."""
    buyer = start_uas(workdir, "uas.xml", buyer_port, name=f"uas-{name}")
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name=f"uac-{name}",
                         extra=["-d", "200"])
        assert caller.ok, caller.describe()
        done = buyer.wait(10)
        assert done.ok, done.describe()
    finally:
        buyer.kill()
    block = r"message received \[\d+\] bytes :\n(.*?)(?=\n-{20,}|\Z)"
    received = [m.strip() for m in re.findall(block, done.messages(), re.S)]
    assert [b.split(" ", 1)[0] for b in received] == ["INVITE", "ACK", "BYE"], done.messages()
    return "\n".join(received)


def header(messages: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.+)$", messages, re.M | re.I)
    assert m is not None, f"no {name} in {messages}"
    return m.group(1).strip()


def bindable(address: str) -> bool:
    """An address of this host (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def test_a_wildcard_listen_advertises_the_primary_address(
    switches: Any, sipp: str, workdir: Path
) -> None:
    buyer_port, sip_port = free_port(), free_port("0.0.0.0")
    sw = switches(config(buyer_port), name="wild", sip_port=sip_port,
                  env={"DCE_SIP_LISTEN": f"0.0.0.0:{sip_port}"})
    assert sw.stdout_path is not None
    start = sw.stdout_path.read_text()
    assert f"SIP  udp 0.0.0.0:{sip_port}" in start, start
    said = re.search(rf"^SIP  advertised as (\S+):{sip_port}: the primary interface's address "
                     r"\(listening on 0\.0\.0\.0\); DCE_SIP_ADVERTISE sets it$", start, re.M)
    assert said is not None, start
    primary = said.group(1)
    assert primary not in ("0.0.0.0", "127.0.0.1") and bindable(primary), primary
    assert re.search(rf"^RTP  on {re.escape(primary)} \(SDP c=\): the primary", start, re.M), start

    seen = buyer_side(workdir, sw, buyer_port, "wild")
    assert "0.0.0.0" not in seen, seen
    assert header(seen, "Via").startswith(f"SIP/2.0/UDP {primary}:{sip_port};"), seen
    assert header(seen, "Contact") == f"<sip:dce@{primary}:{sip_port}>", seen
    assert f"@{primary}>" in header(seen, "From"), seen
    assert header(seen, "Call-ID").endswith(f"@{primary}"), seen
    assert re.search(rf"^c=IN IP4 {re.escape(primary)}$", seen, re.M), seen
    assert re.search(rf"^o=\S+ \d+ \d+ IN IP4 {re.escape(primary)}$", seen, re.M), seen
    sw.wait_idle()


def test_the_advertise_setting_wins_and_ipv6_is_bracketed(
    switches: Any, sipp: str, workdir: Path
) -> None:
    buyer_port, sip_port = free_port(), free_port("0.0.0.0")
    sw = switches(config(buyer_port), name="advertised", sip_port=sip_port,
                  env={"DCE_SIP_LISTEN": f"0.0.0.0:{sip_port}",
                       "DCE_SIP_ADVERTISE": "[2001:db8::5]:5999", "DCE_MEDIA_IP": "127.0.0.1"})
    assert sw.stdout_path is not None
    start = sw.stdout_path.read_text()
    assert "SIP  advertised as [2001:db8::5]:5999 (DCE_SIP_ADVERTISE)" in start, start

    seen = buyer_side(workdir, sw, buyer_port, "advertised")
    assert "0.0.0.0" not in seen, seen
    assert header(seen, "Via").startswith("SIP/2.0/UDP [2001:db8::5]:5999;"), seen
    assert header(seen, "Contact") == "<sip:dce@[2001:db8::5]:5999>", seen
    assert "@[2001:db8::5]>" in header(seen, "From"), seen
    assert re.search(r"^c=IN IP4 127\.0\.0\.1$", seen, re.M), seen
    sw.wait_idle()
