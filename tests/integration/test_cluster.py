"""Two ``dce run`` instances behind Kamailio's dispatcher (issue 15), all real processes:
Kamailio 5.6 running the shipped config/kamailio/kamailio.cfg, two switches sharing one
PostgreSQL database and one Redis, SIPp callers and buyers.

Addresses on the loopback: the switches listen on 127.0.0.1 (each its own ports and data
dir), Kamailio on 127.0.0.2 (the trusted proxy, DCE_TRUSTED_PROXIES), the admitted caller is
127.0.0.1 (the trunk's only source), a stranger 127.0.0.5, a flooder 127.0.0.6 and a digest
trunk's caller 127.0.0.7. Both switches are started with the same config file; the first
seeds the shared database.

What is checked: the shipped config is valid; calls spread over both instances; who is
admitted and banned is the caller the proxy names, never the proxy, and a forged
X-DCE-Source counts for nothing; digest passes through (the retry reaches the instance that
challenged); a buyer's concurrent cap holds exactly across both (Redis); a bid changed and a
DNC number added through instance A apply on instance B within 1 s (PostgreSQL); and when B
dies, the next calls all complete through A. The last test kills B, so it runs last.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import count_cdrs, create_database, drop_database, fetch, wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.kamailio import CONFIG, KAMAILIO, Kamailio
from tests.integration.sipp import CALLED, CALLER, SippResult, run_uac, sip_headers, start_uas
from tests.integration.sipwire import SDP_OFFER, DigestUac, SipSocket, build_request
from tests.ports import free_port

pytestmark = pytest.mark.integration

PROXY_IP = "127.0.0.2"
STRANGER_IP = "127.0.0.5"
FLOODER_IP = "127.0.0.6"
DIGEST_IP = "127.0.0.7"  # a digest trunk's caller: no trunk admits its address
CAPPED = "18005550177"  # campaign whose only buyer has a concurrent cap of 10
DNC_NUMBER = "18005550170"  # campaign checking DNC list "internal"
CAP = 10
PIKE_LIMIT = 60  # messages per 2 s window per source on the switches

# A caller that takes either outcome: answered (then holds -d ms and hangs up) or refused
# (480, 403 or 503, ACKed in the INVITE's transaction). Judged by the CDRs, not by SIPp.
UAC_EITHER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="caller: answered or refused">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "DCE caller" <sip:+13122600123@[local_ip]:[local_port]>;tag=[pid]-either-[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:+13122600123@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="480" optional="true" next="refused"/>
  <recv response="403" optional="true" next="refused"/>
  <recv response="503" optional="true" next="refused"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "DCE caller" <sip:+13122600123@[local_ip]:[local_port]>;tag=[pid]-either-[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause/>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "DCE caller" <sip:+13122600123@[local_ip]:[local_port]>;tag=[pid]-either-[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" next="done"/>
  <label id="refused"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "DCE caller" <sip:+13122600123@[local_ip]:[local_port]>;tag=[pid]-either-[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <label id="done"/>
</scenario>
"""


@dataclass
class Cluster:
    a: Switch
    b: Switch
    proxy: Kamailio
    dsn: str
    cap_buyer: str


@pytest.fixture(scope="module")
def shared(server_url: str | None) -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL) both switches use: one fresh database, the test Redis."""
    redis_url = os.environ.get("DCE_TEST_REDIS_URL")
    if server_url is None or not redis_url:
        pytest.skip("needs DCE_TEST_DATABASE_URL and DCE_TEST_REDIS_URL: two instances share "
                    "one external PostgreSQL and one Redis")
    if KAMAILIO is None:
        pytest.skip("kamailio (Debian package kamailio) is not installed")
    url = create_database(server_url, prefix="dce_it_cluster")
    yield url, redis_url
    drop_database(server_url, url)


@pytest.fixture(scope="module")
def buyer_ports() -> dict[str, int]:
    return {"low": free_port(), "high": free_port(), "cap": free_port()}


@pytest.fixture(scope="module")
def buyers(tmp_path_factory: pytest.TempPathFactory, buyer_ports: dict[str, int],
           sipp: str) -> Iterator[None]:
    """One SIPp buyer per endpoint for the whole module, answering every call it gets."""
    workdir = tmp_path_factory.mktemp("cluster-buyers")
    uases = [start_uas(workdir, "uas.xml", port, name=f"uas-{name}", calls=100_000,
                       timeout_s=900)
             for name, port in buyer_ports.items()]
    yield
    for uas in uases:
        uas.kill()


@pytest.fixture(scope="module")
def cluster(shared: tuple[str, str], switches: Any, buyer_ports: dict[str, int],
            buyers: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # ``shared`` comes first: set up before the switches, its database is dropped after
    # they stopped.
    db_url, redis_url = shared
    cap_buyer = f"cap-{secrets.token_hex(3)}"  # Redis keys are per buyer id: fresh each run
    p = buyer_ports
    config = {
        "trunks": [dce_process.ip_trunk("it-cluster", ["127.0.0.1/32"])],
        "campaigns": [
            dce_process.campaign("main", ["+" + CALLED]),
            dce_process.campaign("capped", ["+" + CAPPED]),
            dce_process.campaign("dncc", ["+" + DNC_NUMBER],
                                 compliance={"calling_hours": False, "fraud_threshold": 100,
                                             "dnc_lists": ["internal"]}),
        ],
        "buyers": [
            dce_process.buyer("low", [f"sip:low@127.0.0.1:{p['low']}"],
                              profiles=[{"id": "low-main", "campaign_id": "main",
                                         "bid": "1.00"}]),
            dce_process.buyer("high", [f"sip:high@127.0.0.1:{p['high']}"],
                              profiles=[{"id": "high-main", "campaign_id": "main",
                                         "bid": "2.00"},
                                        {"id": "high-dnc", "campaign_id": "dncc",
                                         "bid": "2.00"}]),
            dce_process.buyer(cap_buyer, [f"sip:cap@127.0.0.1:{p['cap']}"],
                              profiles=[{"id": "cap-1", "campaign_id": "capped",
                                         "bid": "1.00", "caps": {"concurrent": CAP}}]),
        ],
    }
    env = {"DCE_TRUSTED_PROXIES": PROXY_IP, "DCE_REDIS_URL": redis_url,
           "DCE_PIKE_LIMIT": str(PIKE_LIMIT),
           # Instances sharing a database hash erased numbers with one secret.
           "DCE_ERASURE_SECRET": secrets.token_hex(32)}
    a = switches(config, name="a", env=env, database_url=db_url)
    b = switches(config, name="b", env=env, database_url=db_url)
    proxy = Kamailio(tmp_path_factory.mktemp("kamailio"), [a.sip_addr, b.sip_addr],
                     host=PROXY_IP)
    proxy.start()
    try:
        proxy.wait_states({a.sip_addr: "A", b.sip_addr: "A"})
        yield Cluster(a=a, b=b, proxy=proxy, dsn=db_url, cap_buyer=cap_buyer)
    finally:
        proxy.stop()


def metric(sw: Switch, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", sw.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def like(result: SippResult) -> str:
    """A LIKE pattern for the Call-IDs of every call of one SIPp run (``<cid>-%u``)."""
    return result.call_id.rsplit("-", 1)[0] + "-%"


def ok(result: SippResult, *where: Any) -> None:
    tails = "\n".join(x.tail(15) for x in where)
    assert result.ok, result.describe() + "\n" + tails


def api(sw: Switch, method: str, path: str, body: Any = None,
        content_type: str = "application/json") -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(sw.url + "/api/v1" + path, data=data, method=method, headers={
        "Authorization": "Bearer it-admin-token", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def reason_text(headers: dict[str, str]) -> str:
    m = re.search(r'text="([^"]+)"', headers.get("reason", ""))
    return m.group(1) if m else ""


# ---------------------------------------------------------------------- the configuration


def test_the_shipped_kamailio_config_is_valid() -> None:
    if KAMAILIO is None:
        pytest.skip("kamailio (Debian package kamailio) is not installed")
    out = subprocess.run([KAMAILIO, "-c", "-f", str(CONFIG),
                          "-A", 'DCE_DS_LIST="/dev/null"'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "config file ok" in out.stdout + out.stderr, \
        out.stdout + out.stderr


# ---------------------------------------------------------------------------- spreading


def test_calls_through_kamailio_reach_both_instances(cluster: Cluster, workdir: Path) -> None:
    a, b = cluster.a, cluster.b
    before = metric(a, "dce_calls_total"), metric(b, "dce_calls_total")
    caller = run_uac(workdir, "uac.xml", cluster.proxy.addr, name="spread", calls=200,
                     extra=["-r", "40", "-l", "40", "-d", "0"], timeout_s=60)
    ok(caller, a, b, cluster.proxy)
    on_a = metric(a, "dce_calls_total") - before[0]
    on_b = metric(b, "dce_calls_total") - before[1]
    assert on_a + on_b == 200, (on_a, on_b)
    # Each instance carries at least 30% of them.
    assert on_a >= 60 and on_b >= 60, (on_a, on_b)
    # Every call was answered, ACKed and hung up through the proxy: one answered CDR each.
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = fetch(cluster.dsn, "SELECT disposition, count(*) AS n FROM cdrs "
                                  "WHERE a_call_id LIKE $1 GROUP BY 1", like(caller))
        if sum(r["n"] for r in rows) == 200:
            break
        time.sleep(0.2)
    assert {r["disposition"]: r["n"] for r in rows} == {"answered": 200}


# ----------------------------------------------------------------- identity through the proxy


def test_a_source_the_trunk_does_not_admit_is_refused_through_kamailio(
    cluster: Cluster, workdir: Path,
) -> None:
    caller = run_uac(workdir, "uac-expect-403.xml", cluster.proxy.addr, name="stranger",
                     local_ip=STRANGER_IP)
    ok(caller, cluster.a, cluster.b, cluster.proxy)
    (refusal,) = sip_headers(caller.messages(), "SIP/2.0 403")
    assert reason_text(refusal) == "unknown_source"
    assert count_cdrs(cluster.dsn, caller.call_id) == 0  # never admitted: no CDR


def test_a_forged_source_header_is_ignored(cluster: Cluster) -> None:
    """A stranger claims the trunk's address, straight to an instance and through Kamailio:
    refused both ways (the instance believes only the proxy; the proxy replaces the header)."""
    for target in [("127.0.0.1", cluster.a.sip_port),
                   (PROXY_IP, cluster.proxy.port)]:
        with SipSocket(target, local_ip=STRANGER_IP) as sock:
            uri = f"sip:{CALLED}@{target[0]}:{target[1]}"
            local = f"{sock.local[0]}:{sock.local[1]}"
            call_id = f"it-forged-{secrets.token_hex(4)}"
            branch = "z9hG4bK" + secrets.token_hex(8)
            sock.send(build_request("INVITE", uri, [
                sock.via(branch), ("From", f"<sip:{CALLER}@{local}>;tag=f1"),
                ("To", f"<{uri}>"), ("Call-ID", call_id), ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:{CALLER}@{local}>"), ("Max-Forwards", "70"),
                ("X-DCE-Source", "127.0.0.1:5060;transport=udp"),
                ("Content-Type", "application/sdp")], SDP_OFFER))
            final, _ = sock.recv_final(5.0)
            assert final is not None and final.status == 403, (target, final)
            assert 'text="unknown_source"' in (final.header("Reason") or "")
            sock.send(build_request("ACK", uri, [
                sock.via(branch), ("From", f"<sip:{CALLER}@{local}>;tag=f1"),
                ("To", final.header("To") or ""), ("Call-ID", call_id), ("CSeq", "1 ACK"),
                ("Max-Forwards", "70")]))
            assert count_cdrs(cluster.dsn, call_id) == 0


def test_digest_passes_through_kamailio_and_its_retry_reaches_the_challenger(
    cluster: Cluster, workdir: Path,
) -> None:
    """A digest trunk's calls through Kamailio: each INVITE is challenged by one instance and
    its retry with credentials (same Call-ID) is admitted by the same one, whose nonce it is;
    then ACK and BYE follow the Record-Route. Were the retry sent to the other instance (round
    robin), it would get a new challenge instead."""
    a, b = cluster.a, cluster.b
    status, body = api(a, "POST", "/trunks", {"id": "it-cluster-digest", "name": "digest",
                                              "username": "seller9", "password": "Pass-9-word"})
    assert status == 201, body
    try:
        time.sleep(1.0)  # B applies the new trunk within a second
        before = metric(a, "dce_calls_total"), metric(b, "dce_calls_total")
        for _ in range(8):
            with SipSocket((PROXY_IP, cluster.proxy.port), local_ip=DIGEST_IP) as sock:
                _digest_call(DigestUac(sock, "seller9", "Pass-9-word", "SHA-256"))
        on_a = metric(a, "dce_calls_total") - before[0]
        on_b = metric(b, "dce_calls_total") - before[1]
        assert on_a + on_b == 8, (on_a, on_b)
    finally:
        api(a, "DELETE", "/trunks/it-cluster-digest")
        time.sleep(1.0)


def _digest_call(uac: DigestUac) -> None:
    sock = uac.sock
    b1 = "z9hG4bK" + secrets.token_hex(8)
    sock.send(uac._invite(1, None, b1))
    challenge, seen = sock.recv_final(5.0)
    assert challenge is not None and challenge.status == 401, seen
    sock.send(uac._ack(uac.uri, challenge.header("To") or "", 1, b1))
    b2 = "z9hG4bK" + secrets.token_hex(8)
    sock.send(uac._invite(2, uac.authorization(challenge), b2))
    ok_, seen = sock.recv_final(8.0)
    assert ok_ is not None and ok_.status == 200, (ok_, seen)
    # The dialog's route set is the 200's Record-Route (Kamailio); its target the Contact.
    routes = [("Route", value) for value in ok_.all("Record-Route")]
    assert routes, ok_
    contact = ok_.header("Contact") or ""
    target = contact[contact.find("<") + 1:contact.find(">")]
    to = ok_.header("To") or ""
    common = [("From", f"<sip:{CALLER}@{uac.local}>;tag={uac.from_tag}"), ("To", to),
              ("Call-ID", uac.call_id), ("Max-Forwards", "70"), *routes]
    sock.send(build_request("ACK", target, [sock.via(), *common, ("CSeq", "2 ACK")]))
    sock.send(build_request("BYE", target, [sock.via(), *common, ("CSeq", "3 BYE")]))
    bye, seen = sock.recv_final(5.0)
    while bye is not None and "BYE" not in (bye.header("CSeq") or ""):
        bye, seen = sock.recv_final(5.0)  # a retransmitted 200 for the INVITE first
    assert bye is not None and bye.status == 200, seen


def test_a_flooding_caller_behind_the_proxy_is_banned_never_the_proxy(
    cluster: Cluster, workdir: Path,
) -> None:
    a, b = cluster.a, cluster.b
    bans = "dce_pike_sources_banned_total"
    banned_before = metric(a, bans) + metric(b, bans)
    call_id = f"it-flood-{secrets.token_hex(4)}"  # one Call-ID: one instance gets them all
    answered = 0
    with SipSocket((PROXY_IP, cluster.proxy.port), local_ip=FLOODER_IP) as sock:
        local = f"{sock.local[0]}:{sock.local[1]}"
        for cseq in range(1, 2 * PIKE_LIMIT + 1):
            sock.send(build_request("OPTIONS", f"sip:{PROXY_IP}:{cluster.proxy.port}", [
                sock.via(), ("From", f"<sip:flood@{local}>;tag=fl"),
                ("To", f"<sip:{PROXY_IP}>"), ("Call-ID", call_id),
                ("CSeq", f"{cseq} OPTIONS"), ("Max-Forwards", "70")]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = sock.recv(0.5)
            if msg is not None and msg.status == 200:
                answered += 1
    # The instance answered up to the caller's limit, then banned the caller (its OPTIONS
    # went unanswered: Kamailio says 408); the proxy itself stayed trusted.
    assert answered == PIKE_LIMIT
    banned = metric(a, bans) + metric(b, bans)
    assert banned - banned_before == 1
    assert metric(a, "dce_pike_bans_active") + metric(b, "dce_pike_bans_active") >= 1
    # Kamailio's probes still get answers from both, and admitted callers still get in.
    time.sleep(2.5)
    cluster.proxy.wait_states({a.sip_addr: "A", b.sip_addr: "A"}, timeout=1)
    caller = run_uac(workdir, "uac.xml", cluster.proxy.addr, name="after-flood", calls=10,
                     extra=["-r", "20", "-l", "10", "-d", "0"], timeout_s=30)
    ok(caller, a, b, cluster.proxy)


# ------------------------------------------------------------------------- shared caps


def test_a_buyers_concurrent_cap_holds_exactly_across_both_instances(
    cluster: Cluster, workdir: Path,
) -> None:
    a, b = cluster.a, cluster.b
    scenario = workdir / "uac-either.xml"
    scenario.write_text(UAC_EITHER)
    before = metric(a, "dce_calls_total"), metric(b, "dce_calls_total")
    # 30 calls within about half a second, each held 4 s once answered: at most 10 at once.
    caller = run_uac(workdir, str(scenario), cluster.proxy.addr, name="capped", calls=30,
                     service=CAPPED, extra=["-r", "60", "-l", "30", "-d", "4000"],
                     timeout_s=40)
    ok(caller, a, b, cluster.proxy)
    assert metric(a, "dce_calls_total") > before[0] and metric(b, "dce_calls_total") > before[1]
    deadline = time.monotonic() + 10
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = fetch(cluster.dsn, "SELECT disposition, count(*) AS n FROM cdrs "
                                  "WHERE a_call_id LIKE $1 GROUP BY 1", like(caller))
        counts = {r["disposition"]: r["n"] for r in rows}
        if sum(counts.values()) == 30:
            break
        time.sleep(0.2)
    assert sum(counts.values()) == 30, counts
    assert counts.get("answered") == CAP, counts


# ---------------------------------------------------------------------- shared configuration


def call_on(sw: Switch, workdir: Path, name: str, scenario: str = "uac.xml",
            service: str = CALLED) -> SippResult:
    """One call straight to ``sw`` (the trunk admits 127.0.0.1 directly too)."""
    result = run_uac(workdir, scenario, sw.sip_addr, name=name, service=service,
                     extra=["-d", "0"], timeout_s=15)
    ok(result, sw)
    return result


def test_a_bid_changed_through_a_is_used_by_bs_next_call(
    cluster: Cluster, workdir: Path,
) -> None:
    a, b = cluster.a, cluster.b
    first = wait_cdr(cluster.dsn, call_on(b, workdir, "bid-before").call_id)
    assert first["buyer_id"] == "high", first
    status, body = api(a, "PATCH", "/buyers/low/profiles/low-main", {"bid": "3.00"},
                       content_type="application/merge-patch+json")
    assert status == 200, body
    changed = time.monotonic()
    time.sleep(max(0.0, changed + 1.0 - time.monotonic()))
    cdr = wait_cdr(cluster.dsn, call_on(b, workdir, "bid-after").call_id)
    assert (cdr["buyer_id"], str(cdr["bid"])) == ("low", "3.000000"), cdr


def test_a_number_added_to_a_dnc_list_through_a_is_refused_by_b_within_1s(
    cluster: Cluster, workdir: Path,
) -> None:
    a, b = cluster.a, cluster.b
    status, body = api(a, "POST", "/dnc?list=internal&source=it", "+13125550000\n",
                       content_type="text/plain")
    assert status == 200, body
    # B has the list (without the caller) once its calls to the campaign connect again.
    deadline = time.monotonic() + 10
    while True:
        result = run_uac(workdir, "uac.xml", b.sip_addr, name="dnc-before",
                         service=DNC_NUMBER, extra=["-d", "0"], timeout_s=10)
        if result.ok:
            break
        assert time.monotonic() < deadline, "B never loaded DNC list 'internal'\n" + \
            result.describe()
        time.sleep(0.5)
    status, body = api(a, "POST", "/dnc?list=internal&source=it&merge=true", CALLER + "\n",
                       content_type="text/plain")
    assert status == 200, body
    added = time.monotonic()
    time.sleep(max(0.0, added + 1.0 - time.monotonic()))
    refused = call_on(b, workdir, "dnc-after", "uac-expect-403.xml", service=DNC_NUMBER)
    (final,) = sip_headers(refused.messages(), "SIP/2.0 403")
    assert reason_text(final) == "dnc", final
    cdr = wait_cdr(cluster.dsn, refused.call_id)
    assert "dnc:fail" in cdr["compliance"], cdr


# ------------------------------------------------------------------------- an instance dies


def test_when_b_is_killed_the_next_50_calls_all_complete_through_a(
    cluster: Cluster, workdir: Path,
) -> None:
    a, b = cluster.a, cluster.b
    before = metric(a, "dce_calls_total")
    b.kill()  # SIGKILL: no drain, no goodbye; Kamailio learns it from its probes
    caller = run_uac(workdir, "uac.xml", cluster.proxy.addr, name="after-kill", calls=50,
                     extra=["-r", "10", "-l", "50", "-d", "0"], timeout_s=60)
    ok(caller, a, cluster.proxy)
    assert metric(a, "dce_calls_total") - before == 50
    assert _wait_count(cluster.dsn, caller, 50)
    # Kamailio took B out: new calls no longer wait for it.
    assert cluster.proxy.states()[b.sip_addr].startswith("I")


def _wait_count(dsn: str, caller: SippResult, n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_cdrs(dsn, like(caller)) == n:
            return True
        time.sleep(0.2)
    return False
