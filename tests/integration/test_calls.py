"""Calls through a real `dce run`, driven by SIPp on both sides (issue 3 "Tests (real peers)").

One switch for the module: an IP trunk for 127.0.0.1, a digest trunk, and

* campaign ``main`` (+18005550100): fallback buyer ``b1`` with endpoints e1 (port P1) and e2
  (port P2), tried in that order; each test puts the SIPp buyer it needs on those ports;
* campaign ``noroute`` (+18005550180) with a reserve, so the fallback buyer (price 0) is not
  eligible and nobody else bids: 480;
* campaign ``tcp`` (+18005550111): buyer ``btcp`` bids on it, endpoint over TCP (port P3).

Every test checks the call's CDR in PostgreSQL (``wait_cdr``): disposition, sip_status,
hangup_side, attempts, and that the buyer leg had its own Call-ID.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, CALLER, SippResult, run_uac, sip_headers, start_uas
from tests.integration.sipwire import (
    SDP_OFFER,
    DigestUac,
    SipSocket,
    UdpWatcher,
    build_request,
    parse_challenge,
)
from tests.ports import free_port

pytestmark = pytest.mark.integration

NOROUTE = "18005550180"
TCP_NUMBER = "18005550111"
DIGEST_USER, DIGEST_PASS = "seller1", "s3cret-Pass"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"P1": free_port(), "P2": free_port(), "P3": free_port()}


@pytest.fixture(scope="module")
def sw(switches: Any, ports: dict[str, int], sipp: str) -> Switch:
    p1, p2, p3 = ports["P1"], ports["P2"], ports["P3"]
    config = {
        "trunks": [dce_process.ip_trunk(), dce_process.digest_trunk(DIGEST_USER, DIGEST_PASS)],
        "campaigns": [
            dce_process.campaign("main", ["+" + CALLED]),
            dce_process.campaign("noroute", ["+" + NOROUTE], reserve="1.00"),
            dce_process.campaign("tcp", ["+" + TCP_NUMBER]),
        ],
        "buyers": [
            dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{p1}", f"sip:buyer@127.0.0.1:{p2}"]),
            dce_process.buyer("btcp", [f"sip:buyer@127.0.0.1:{p3};transport=tcp"],
                              profiles=[{"id": "tcp-only", "campaign_id": "tcp", "bid": "1.00"}]),
        ],
    }
    return switches(config, name="calls")


def call(workdir: Path, sw: Switch, uac: str, buyers: Sequence[tuple[str, int]] = (), *,
         uac_extra: Sequence[str] = (), uas_extra: Sequence[str] = (), service: str = CALLED,
         transport: str = "u1", uas_transport: str = "u1", local_ip: str = "127.0.0.1",
         ) -> tuple[SippResult, list[SippResult]]:
    """Start the buyers (scenario, port), run the caller, wait for the buyers; all must pass."""
    assert sw.alive(), f"dce run is not running\n{sw.tail()}"
    uases = [start_uas(workdir, scen, port, name=f"uas{i + 1}-{Path(scen).stem}",
                       transport=uas_transport, extra=uas_extra, timeout_s=12)
             for i, (scen, port) in enumerate(buyers)]
    try:
        caller = run_uac(workdir, uac, sw.sip_addr, name=f"uac-{Path(uac).stem}",
                         transport=transport, service=service, extra=uac_extra,
                         local_ip=local_ip, timeout_s=10)
        done = [u.wait(15) for u in uases]
    finally:
        for u in uases:
            u.kill()
    problems = [r.describe() for r in [caller, *done] if not r.ok]
    assert not problems, "\n\n".join(problems) + "\n\n" + sw.tail(25)
    return caller, done


def b_leg_call_id(uas: SippResult) -> str:
    invites = sip_headers(uas.messages(), "INVITE ")
    assert invites, uas.describe()
    return invites[0]["call-id"]


def check_cdr(sw: Switch, a_call_id: str, **expected: Any) -> dict[str, Any]:
    cdr = wait_cdr(sw.dsn, a_call_id)
    wrong = {k: (cdr.get(k), v) for k, v in expected.items() if cdr.get(k) != v}
    assert not wrong, f"CDR fields (got, expected): {wrong}\nfull CDR: {cdr}"
    assert cdr["b_call_id"] != a_call_id, cdr
    return cdr


# ---------------------------------------------------------------------------------------------
# answered calls


def test_answered_call_caller_hangs_up(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, (buyer,) = call(workdir, sw, "uac.xml", [("uas.xml", ports["P1"])],
                            uac_extra=["-d", "500"])
    # The caller heard 100 Trying, and the 200 carries the switch's own To tag, not the buyer's.
    to_caller = caller.messages()
    assert sip_headers(to_caller, "SIP/2.0 100"), "no 100 Trying to the caller"
    ok_a = sip_headers(to_caller, "SIP/2.0 200")[0]
    ok_b = sip_headers(buyer.messages(), "SIP/2.0 200")[0]
    assert ok_a["to"].split("tag=")[1] != ok_b["to"].split("tag=")[1]
    assert ok_a.get("content-type", "").lower() == "application/sdp"
    b_cid = b_leg_call_id(buyer)
    cdr = check_cdr(sw, caller.call_id, disposition="answered", sip_status=200,
                    hangup_side="caller", attempts=1, b_call_id=b_cid, trunk_id="it-ip",
                    called="+" + CALLED, caller=CALLER, buyer_id="b1")
    assert f":{ports['P1']}" in (cdr["endpoint"] or ""), cdr
    assert cdr["duration_ms"] >= 400, cdr
    assert cdr["answered_at"] is not None and cdr["decision_us"] is not None, cdr
    sw.wait_idle()


def test_answered_call_buyer_hangs_up(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, (buyer,) = call(workdir, sw, "uac-expect-bye.xml", [("uas-hangup.xml", ports["P1"])],
                            uas_extra=["-d", "500"])
    cdr = check_cdr(sw, caller.call_id, disposition="answered", sip_status=200,
                    hangup_side="buyer", attempts=1, b_call_id=b_leg_call_id(buyer))
    assert cdr["duration_ms"] >= 400, cdr
    sw.wait_idle()


def test_tcp_call_both_legs(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, (buyer,) = call(workdir, sw, "uac.xml", [("uas.xml", ports["P3"])],
                            uac_extra=["-d", "200"], transport="t1", uas_transport="t1",
                            service=TCP_NUMBER)
    check_cdr(sw, caller.call_id, disposition="answered", sip_status=200, hangup_side="caller",
              attempts=1, buyer_id="btcp", b_call_id=b_leg_call_id(buyer))
    sw.wait_idle()


def test_tcp_caller_udp_buyer(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, (buyer,) = call(workdir, sw, "uac.xml", [("uas.xml", ports["P1"])],
                            uac_extra=["-d", "200"], transport="t1")
    check_cdr(sw, caller.call_id, disposition="answered", sip_status=200, attempts=1,
              b_call_id=b_leg_call_id(buyer))
    sw.wait_idle()


# ---------------------------------------------------------------------------------------------
# failover and failures


def test_busy_then_next_target(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, (busy, answering) = call(
        workdir, sw, "uac.xml", [("uas-busy.xml", ports["P1"]), ("uas.xml", ports["P2"])],
        uac_extra=["-d", "200"])
    cdr = check_cdr(sw, caller.call_id, disposition="answered", sip_status=200, attempts=2,
                    hangup_side="caller", b_call_id=b_leg_call_id(answering))
    assert f":{ports['P2']}" in (cdr["endpoint"] or ""), cdr
    assert b_leg_call_id(busy) != b_leg_call_id(answering)
    sw.wait_idle()


def test_no_answer_within_ring_timeout_then_next(sw: Switch, ports: dict[str, int],
                                                 workdir: Path) -> None:
    t0 = time.monotonic()
    caller, (silent, answering) = call(
        workdir, sw, "uac.xml", [("uas-noanswer.xml", ports["P1"]), ("uas.xml", ports["P2"])],
        uac_extra=["-d", "200"])
    assert time.monotonic() - t0 >= 2.0, "answered before DCE_RING_TIMEOUT (2s) ran out"
    assert sip_headers(silent.messages(), "CANCEL "), "ring timeout did not CANCEL the buyer"
    cdr = check_cdr(sw, caller.call_id, disposition="answered", sip_status=200, attempts=2,
                    b_call_id=b_leg_call_id(answering))
    assert f":{ports['P2']}" in (cdr["endpoint"] or ""), cdr
    sw.wait_idle()


def test_cancel_before_answer(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    watcher = UdpWatcher(ports["P2"])  # the next target must not be tried after a CANCEL
    try:
        caller, (ringing,) = call(workdir, sw, "uac-cancel.xml",
                                  [("uas-noanswer.xml", ports["P1"])])
        assert not watcher.received(0.5), "the switch called the next target after CANCEL"
    finally:
        watcher.close()
    assert sip_headers(ringing.messages(), "CANCEL "), "the buyer leg was not cancelled"
    check_cdr(sw, caller.call_id, disposition="cancelled", sip_status=487, hangup_side="caller",
              attempts=1, b_call_id=b_leg_call_id(ringing))
    sw.wait_idle()


def test_no_target_answers(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    """Both endpoints ring past DCE_RING_TIMEOUT: both are cancelled, the caller gets 480."""
    caller, (one, two) = call(
        workdir, sw, "uac-expect-480.xml",
        [("uas-noanswer.xml", ports["P1"]), ("uas-noanswer.xml", ports["P2"])])
    for ringing in (one, two):
        assert sip_headers(ringing.messages(), "CANCEL "), ringing.describe()
    check_cdr(sw, caller.call_id, disposition="no_answer", sip_status=480, attempts=2)
    sw.wait_idle()


def test_every_target_busy(sw: Switch, ports: dict[str, int], workdir: Path) -> None:
    caller, _ = call(workdir, sw, "uac-expect-486.xml",
                     [("uas-busy.xml", ports["P1"]), ("uas-busy.xml", ports["P2"])])
    check_cdr(sw, caller.call_id, disposition="busy", sip_status=486, attempts=2)
    sw.wait_idle()


def test_no_eligible_buyer_480(sw: Switch, workdir: Path) -> None:
    caller, _ = call(workdir, sw, "uac-expect-480.xml", service=NOROUTE)
    (rejection,) = sip_headers(caller.messages(), "SIP/2.0 480")
    assert "reason" in rejection, f"480 without a Reason header naming the rule: {rejection}"
    cdr = check_cdr(sw, caller.call_id, disposition="no_buyer", sip_status=480, attempts=0)
    assert cdr["b_call_id"] is None, cdr
    sw.wait_idle()


# ---------------------------------------------------------------------------------------------
# digest trunk: a caller from 127.0.0.2 (not the IP trunk) must authenticate


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_digest_challenge_then_call(sw: Switch, ports: dict[str, int], workdir: Path,
                                    algorithm: str) -> None:
    buyer = start_uas(workdir, "uas.xml", ports["P1"], name=f"uas-digest-{algorithm}")
    try:
        with SipSocket(("127.0.0.1", sw.sip_port), local_ip="127.0.0.2") as s:
            uac = DigestUac(s, DIGEST_USER, DIGEST_PASS, algorithm)
            out = uac.call(hold=0.3)
        result = buyer.wait(10)
    finally:
        buyer.kill()
    assert out.challenge is not None and out.challenge.status == 401, out
    offered = [parse_challenge(v).get("algorithm", "MD5").upper()
               for v in out.challenge.all("WWW-Authenticate")]
    # RFC 8760 §2.4: one header per algorithm, the strongest first.
    assert offered[:1] == ["SHA-256"] and "MD5" in offered, offered
    assert out.final is not None and out.final.status == 200, out
    assert out.bye_response is not None and out.bye_response.status == 200, out
    assert result.ok, result.describe()
    check_cdr(sw, uac.call_id, disposition="answered", sip_status=200, trunk_id="it-digest",
              hangup_side="caller", attempts=1)
    sw.wait_idle()


def test_digest_wrong_password_403(sw: Switch, workdir: Path) -> None:
    with SipSocket(("127.0.0.1", sw.sip_port), local_ip="127.0.0.2") as s:
        uac = DigestUac(s, DIGEST_USER, "not-the-password", "SHA-256")
        out = uac.call()
    assert out.challenge is not None and out.challenge.status == 401, out
    assert out.final is not None and out.final.status == 403, out


@pytest.fixture(scope="module")
def sw_md5_first(switches: Any, ports: dict[str, int], sipp: str) -> Switch:
    """A second switch offering MD5 first (DCE_DIGEST_ALGORITHMS=MD5,SHA-256) for SIPp."""
    config = {
        "trunks": [dce_process.ip_trunk(), dce_process.digest_trunk(DIGEST_USER, DIGEST_PASS)],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{ports['P1']}"])],
    }
    return switches(config, name="calls-md5", env={"DCE_DIGEST_ALGORITHMS": "MD5,SHA-256"})


def test_digest_sipp_md5(sw_md5_first: Switch, ports: dict[str, int], workdir: Path) -> None:
    """SIPp's own digest code against the switch's challenge.

    SIPp 3.6 answers the first WWW-Authenticate it finds and aborts unless it is MD5
    ("createAuthHeader: authentication must use MD5 or AKAv1-MD5"), while by default the switch
    offers SHA-256 first (RFC 8760 §2.4). A trunk peer like that needs
    DCE_DIGEST_ALGORITHMS=MD5,SHA-256, which is what this switch runs with.
    """
    sw = sw_md5_first
    caller, (buyer,) = call(workdir, sw, "uac-digest.xml", [("uas.xml", ports["P1"])],
                            uac_extra=["-au", DIGEST_USER, "-ap", DIGEST_PASS],
                            local_ip="127.0.0.2")
    (challenge,) = sip_headers(caller.messages(), "SIP/2.0 401")
    assert "MD5" in challenge["www-authenticate"], challenge
    check_cdr(sw, caller.call_id, disposition="answered", trunk_id="it-digest", attempts=1,
              b_call_id=b_leg_call_id(buyer))
    sw.wait_idle()


# ---------------------------------------------------------------------------------------------
# requests outside a call


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_options_answered_200(sw: Switch, transport: str) -> None:
    with SipSocket(("127.0.0.1", sw.sip_port), transport=transport) as s:
        resp = s.options()
    assert resp is not None and resp.status == 200, resp


def test_options_from_unknown_source_answered(sw: Switch) -> None:
    """Keep-alives from any source get 200 (SPEC.md: OPTIONS is answered 200)."""
    with SipSocket(("127.0.0.1", sw.sip_port), local_ip="127.0.0.3") as s:
        resp = s.options()
    assert resp is not None and resp.status == 200, resp


def test_bye_for_no_dialog_481(sw: Switch) -> None:
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        s.send(build_request("BYE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
            s.via(), ("From", "<sip:a@127.0.0.1>;tag=nope1"),
            ("To", f"<sip:{CALLED}@127.0.0.1>;tag=nope2"), ("Call-ID", "it-no-such-dialog"),
            ("CSeq", "7 BYE"), ("Max-Forwards", "70")]))
        resp, _ = s.recv_final(3.0)
    assert resp is not None and resp.status == 481, resp


def test_max_forwards_zero_483(sw: Switch) -> None:
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        s.send(build_request("INVITE", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
            s.via(), ("From", f"<sip:{CALLER}@127.0.0.1>;tag=mf0"),
            ("To", f"<sip:{CALLED}@127.0.0.1>"), ("Call-ID", "it-max-forwards-0"),
            ("CSeq", "1 INVITE"), ("Max-Forwards", "0"), ("Contact", "<sip:a@127.0.0.1>"),
            ("Content-Type", "application/sdp")], SDP_OFFER))
        resp, _ = s.recv_final(3.0)
        if resp is not None and resp.status >= 300:
            s.send(build_request("ACK", f"sip:{CALLED}@127.0.0.1:{sw.sip_port}", [
                ("Via", resp.header("Via") or ""), ("From", resp.header("From") or ""),
                ("To", resp.header("To") or ""), ("Call-ID", "it-max-forwards-0"),
                ("CSeq", "1 ACK"), ("Max-Forwards", "70")]))
    assert resp is not None and resp.status == 483, resp


def test_switch_healthy_after_module(sw: Switch) -> None:
    assert sw.alive()
    assert sw.healthz()["status"] == "ok"
    sw.wait_idle()
    with SipSocket(("127.0.0.1", sw.sip_port)) as s:
        resp = s.options()
    assert resp is not None and resp.status == 200
