"""dce/shield.py and its part of dce/admit.py: who is trusted, stateless refusals of unknown
sources, the pike's timer, bans pushed to a real nftables set (in a network namespace), and
which connections carry a live call."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from config.settings import Settings
from dce.admit import TrunkAdmitter
from dce.shield import BanKeeper, Shield, nft_script, parse_set
from exchange.models import Buyer, Endpoint, ExchangeConfig, Trunk
from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.message import SipResponse, parse_message
from switch.peer import Peer
from switch.pike import Ban, Pike, PikeConfig

STRANGER = Peer("udp", "198.51.100.7", 5099)


def exchange(digest: bool = False) -> ExchangeConfig:
    trunks = [Trunk(id="ip", name="ip", source_ips=["192.0.2.1", "203.0.113.0/24"])]
    if digest:
        trunks.append(Trunk(id="dg", name="dg", username="alice", password="wonderland"))
    buyers = [Buyer(id="b", name="b", endpoints=[
        Endpoint(id="e1", uri="sip:buyer@198.51.100.50:5070"),
        Endpoint(id="e2", uri="sip:buyer@198.51.100.51", active=False),
    ])]
    return ExchangeConfig(trunks=trunks, buyers=buyers)


def admitter(digest: bool = False) -> TrunkAdmitter:
    return TrunkAdmitter(exchange(digest), b"s" * 32, ("SHA-256", "MD5"))


def invite(extra: str = "", method: str = "INVITE") -> bytes:
    return (
        f"{method} sip:+18005550100@dce SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5099;branch=z9hG4bK1;rport\r\n"
        "From: <sip:+12125551234@example.com>;tag=f1\r\n"
        "To: <sip:+18005550100@dce>\r\n"
        f"Call-ID: c1\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# ------------------------------------------------------------------------- trust and refusal


@pytest.mark.parametrize(
    ("host", "trusted"),
    [("192.0.2.1", True), ("203.0.113.77", True), ("198.51.100.50", True),
     ("198.51.100.51", False), ("198.51.100.7", False), ("not an address", False)],
    ids=["trunk-address", "trunk-network", "buyer-endpoint", "inactive-endpoint", "stranger",
         "garbage"],
)
def test_trunk_addresses_and_buyer_endpoints_are_trusted(host: str, trusted: bool) -> None:
    assert admitter().trusted(host) is trusted


def test_unknown_source_gets_a_stateless_403_without_digest_trunks() -> None:
    refusal = admitter().refusal(invite(), STRANGER, 1.0)
    assert refusal is not None
    status, data = refusal
    resp = parse_message(data)
    assert isinstance(resp, SipResponse)
    assert (status, resp.status) == (403, 403)
    assert resp.headers.get("reason") == 'SIP;cause=403;text="unknown_source"'


def test_unknown_source_gets_a_stateless_challenge_with_digest_trunks() -> None:
    adm = admitter(digest=True)
    refusal = adm.refusal(invite(), STRANGER, 1.0)
    assert refusal is not None
    resp = parse_message(refusal[1])
    assert isinstance(resp, SipResponse)
    assert resp.status == 401
    # One field per algorithm, best first (RFC 8760 §2.4), as the core's challenge.
    assert re.findall(rb"(?m)^WWW-Authenticate: Digest .*algorithm=([\w-]+)\r$",
                      refusal[1]) == [b"SHA-256", b"MD5"]
    # The answer to the challenge is the core's to check (digest, the guard's counts).
    assert adm.refusal(invite("Authorization: Digest username=\"alice\"\r\n"), STRANGER,
                       1.0) is None


@pytest.mark.parametrize(
    ("data", "peer"),
    [(invite(), Peer("udp", "192.0.2.1", 5060)),
     (invite(), Peer("ws", "198.51.100.7", 5099, 1_000_000_001)),
     (invite(method="OPTIONS"), STRANGER),
     (invite().replace(b"<sip:+18005550100@dce>\r\n", b"<sip:+18005550100@dce>;tag=t\r\n"),
      STRANGER)],
    ids=["trunk", "browser", "options", "in-dialog"],
)
def test_everything_else_goes_to_the_core(data: bytes, peer: Peer) -> None:
    assert admitter().refusal(data, peer, 1.0) is None


# --------------------------------------------------------------------------------- the shield


async def test_shield_from_settings_wires_the_pike_and_digest_trust() -> None:
    loop = asyncio.get_running_loop()
    adm = admitter(digest=True)
    core = SwitchCore(CoreConfig(host="127.0.0.1", port=5060, media_error=ValueError), adm,
                      rng=random.Random(1))
    shield = Shield(loop, Settings(pike_limit=7, pike_window=3.0, pike_ban=9.0,
                                   max_connections_per_source=4, tcp_max_connections=50,
                                   ws_max_connections=60, connection_idle_timeout=70.0),
                    adm, core)
    try:
        pike = shield.pike
        assert pike is not None and shield.guard.pike is pike
        assert (pike.config.limit, pike.config.window, pike.config.ban) == (7, 3.0, 9.0)
        assert (shield.tcp_limits.max_connections, shield.tcp_limits.max_per_source,
                shield.tcp_limits.idle_timeout) == (50, 4, 70.0)
        assert shield.ws_limits.max_connections == 60
        assert shield.guard.trusted("192.0.2.1")
        # A right password makes its source trusted by the pike.
        adm.proven(STRANGER.host, loop.time())
        assert pike.is_trusted(STRANGER.host, loop.time())
    finally:
        shield.close()
    off = Shield(loop, Settings(pike_limit=0), adm, core)
    assert off.pike is None and off.guard.pike is None


async def test_busy_names_the_connections_of_live_calls() -> None:
    adm = admitter()
    core = SwitchCore(CoreConfig(host="127.0.0.1", port=5060, media_error=ValueError), adm,
                      rng=random.Random(1))
    shield = Shield(asyncio.get_running_loop(), Settings(), adm, core)
    assert shield.busy() == set()
    caller = Peer("tcp", "192.0.2.1", 40000, 17)
    core.receive_datagram(invite().replace(b"UDP 198.51.100.7:5099", b"TCP 192.0.2.1:40000"),
                          caller, 1.0)
    assert core.live_calls == 1
    assert 17 in shield.busy()


# ------------------------------------------------------------------------- bans, timer, nft


def test_nft_script_sorts_bans_into_the_sets() -> None:
    bans = [Ban("198.51.100.7", 60.0, 0.0, "rate"), Ban("2001:db8::1", 0.4, 0.0, "rate"),
            Ban("::ffff:192.0.2.9", 10.0, 0.0, "auth"), Ban("garbage", 5.0, 0.0, "")]
    v4 = ("inet", "dce", "banned4")
    assert nft_script(bans, v4, ("inet", "dce", "banned6")) == (
        "add element inet dce banned4 { 198.51.100.7 timeout 60s, 192.0.2.9 timeout 10s }\n"
        "add element inet dce banned6 { 2001:db8::1 timeout 1s }\n"
    )
    assert nft_script(bans, v4, None).count("add element") == 1


def test_parse_set_wants_family_table_set() -> None:
    assert parse_set("inet dce banned4", "k") == ("inet", "dce", "banned4")
    for bad in ("dce banned4", "inet dce", "foo dce banned4"):
        with pytest.raises(ValueError, match="FAMILY TABLE SET"):
            parse_set(bad, "k")


async def test_the_keeper_lifts_a_ban_when_it_ends() -> None:
    loop = asyncio.get_running_loop()
    pike = Pike(PikeConfig(window=0.1, limit=1, ban=0.2))
    keeper = BanKeeper(loop, pike)
    try:
        assert pike.hit("198.51.100.7", loop.time())
        assert not pike.hit("198.51.100.7", loop.time())
        keeper.banned("198.51.100.7")
        assert pike.banned
        await asyncio.sleep(0.4)
        assert pike.banned == {}
        assert pike.bans_to_push() == []  # without a kernel set nothing piles up
    finally:
        keeper.close()


async def test_a_failing_nft_is_counted_and_the_ban_holds() -> None:
    loop = asyncio.get_running_loop()
    pike = Pike(PikeConfig(ban=60.0))
    keeper = BanKeeper(loop, pike, nft_set="inet dce banned4", nft=(sys.executable, "-c",
                       "import sys; sys.stderr.write('no such set'); sys.exit(1)"))
    try:
        assert keeper.ban("198.51.100.7", reason="test")
        for _ in range(200):
            if keeper.stats.errors:
                break
            await asyncio.sleep(0.01)
        assert keeper.stats.errors == 1
        assert keeper.stats.pushed == 0
        assert "198.51.100.7" in pike.banned
    finally:
        keeper.close()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with the nftables rules docs/settings.md gives."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        pytest.skip("needs root, nft and ip (apt-get install nftables iproute2)")
    name = f"dce-test-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        run = ["ip", "netns", "exec", name]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        rules = (
            "add table inet dce\n"
            "add set inet dce banned4 { type ipv4_addr; flags timeout; }\n"
            "add chain inet dce input { type filter hook input priority -10; policy accept; }\n"
            "add rule inet dce input ip saddr @banned4 meta l4proto { udp, tcp } "
            "th dport 5060 drop\n"
        )
        subprocess.run([*run, "nft", "-f", "-"], input=rules.encode(), check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


RECEIVER = """
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 5060))
rx.settimeout(0.5)
for src in sys.argv[1:]:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); tx.bind((src, 0))
    tx.sendto(b"INVITE", ("127.0.0.1", 5060))
    try:
        print(src, rx.recvfrom(100)[1][0] == src)
    except TimeoutError:
        print(src, False)
"""


async def test_bans_reach_a_real_nftables_set_and_the_kernel_drops(netns: str) -> None:
    loop = asyncio.get_running_loop()
    pike = Pike(PikeConfig(ban=30.0))
    run = ("ip", "netns", "exec", netns)
    keeper = BanKeeper(loop, pike, nft_set="inet dce banned4", nft=(*run, "nft"))
    try:
        assert keeper.ban("127.0.0.2", reason="test")
        for _ in range(300):
            if keeper.stats.pushed or keeper.stats.errors:
                break
            await asyncio.sleep(0.01)
        assert (keeper.stats.pushed, keeper.stats.errors) == (1, 0)
    finally:
        keeper.close()
    listed = subprocess.run([*run, "nft", "list", "set", "inet", "dce", "banned4"],
                            capture_output=True, text=True, check=True).stdout
    assert "127.0.0.2 timeout 30s" in listed
    # In that namespace, the banned source's datagram never reaches a socket; another does.
    seen = subprocess.run([*run, sys.executable, "-c", RECEIVER, "127.0.0.2", "127.0.0.3"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert seen == ["127.0.0.2", "False", "127.0.0.3", "True"]
