#!/usr/bin/env python3
"""Flood benchmark: a trusted trunk's calls under a UDP flood from one unknown source, and the
CPU the switch spends per dropped packet (issue 12, "Trusted traffic first").

Method (bench/README.md, as bench_sip.py): ``dce run`` pinned to core 1; SIPp (uac, uas) and
the flood sender on core 0. The flood sender is ``bench/flood.c``, compiled here with ``cc
-O2``: it sends one INVITE (a fresh Call-ID and branch in every packet) from 127.0.0.2, which
no trunk owns, with ``sendmmsg`` at a paced rate. The trusted trunk is 127.0.0.1/32.

Phases, one switch for all of them:

1. *calm*: the trunk alone, ``--cps`` calls/s for ``--calm`` s: CPU per second of trusted traffic.
2. *flood*: the same calls for ``--seconds`` s while the sender floods at ``--flood-pps``.
   Printed: calls successful / placed (target >= 99 %), SIPp retransmissions, INVITE->200
   p50/p99 (SIPp, ms), the rate really sent, how many the switch dropped as banned
   (``dce_pike_dropped_packets``), how many the kernel dropped because the socket buffer was
   full (``/proc/net/udp``), switch CPU, and CPU per dropped packet: (flood CPU - calm CPU
   rate x seconds) / packets dropped.
3. *memory*: RSS before the flood, its peak, and ``--settle`` s after (target: back within
   20 % of before; the issue's baseline went 167 -> 312 MB and stayed).
4. *ladder* (``--ladder``): the flood alone at each rate for ``--step`` s: switch CPU %, us per
   dropped packet, kernel drops. The rate where the switch's core reaches 100 % is how far one
   Python process can go.

``--nft`` runs the whole bench in a fresh network namespace (``ip netns``), with an nftables
set ``inet dce banned4`` and its drop rule created there, and the switch started with
``DCE_PIKE_NFT_SET="inet dce banned4"``: bans then reach the kernel, which drops the flood
before the switch sees it. Nothing outside that namespace is touched; it uses the embedded
PostgreSQL (the namespace has no route to another server).

    .venv/bin/python bench/bench_flood.py                       # ~2 min
    .venv/bin/python bench/bench_flood.py --ladder 50000 100000 200000 0   # 0: flat out
    .venv/bin/python bench/bench_flood.py --nft
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sip import (  # noqa: E402
    Sampler,
    core_busy_seconds,
    counts,
    last_stats,
    percentile,
    sipp_rtt,
)

from tests.integration import dce_process  # noqa: E402
from tests.integration.db import create_database, drop_database  # noqa: E402
from tests.integration.dce_process import Switch  # noqa: E402
from tests.integration.sipp import CALLED, SCENARIOS, SIPP  # noqa: E402
from tests.ports import free_port, wait_bound  # noqa: E402

SWITCH_CORE = "1"
PEER_CORE = "0"
FLOODER = "127.0.0.2"
TARGET_SUCCESS = 0.99
TARGET_RSS_RETURN = 0.20  # RSS after the flood within 20 % of before
NFT_SET = "inet dce banned4"
NFT_RULES = """\
add table inet dce
add set inet dce banned4 { type ipv4_addr; flags timeout; }
add chain inet dce input { type filter hook input priority -10; policy accept; }
add rule inet dce input ip saddr @banned4 meta l4proto { udp, tcp } th dport %(port)d drop
"""

FLOOD_INVITE = (
    "INVITE sip:+{called}@{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {src}:5099;branch=z9hG4bKXXXXXXXXXXXXXXXX;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:+13125550199@{src}>;tag=fXXXXXXXXXXXXXXXX\r\n"
    "To: <sip:+{called}@{host}>\r\n"
    "Call-ID: XXXXXXXXXXXXXXXX@flood.invalid\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:+13125550199@{src}:5099>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
    "{sdp}"
)
FLOOD_SDP = (
    "v=0\r\no=- 1 1 IN IP4 {src}\r\ns=-\r\nc=IN IP4 {src}\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


@dataclass
class Flood:
    """One flood (with or without trusted calls) and what it cost the switch."""

    offered_pps: int
    seconds: float
    sent: int = 0
    achieved_pps: float = 0.0
    dropped_banned: int = 0
    dropped_kernel: int = 0
    bans: int = 0
    cpu_s: float = 0.0
    cpu_pct: float = 0.0
    us_per_dropped: float | None = None
    core_other_pct: float = 0.0


@dataclass
class Result:
    cps: int
    calm_cpu_per_s: float = 0.0
    calls: int = 0
    successful: int = 0
    failed: int = 0
    retrans: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    flood: Flood | None = None
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    ladder: list[Flood] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# tools


def build_sender(out: Path) -> Path:
    exe = out / "flood-sender"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(ROOT / "bench" / "flood.c")], check=True)
    return exe


def flood_message(host: str, port: int) -> bytes:
    sdp = FLOOD_SDP.format(src=FLOODER)
    return FLOOD_INVITE.format(called=CALLED, host=host, port=port, src=FLOODER,
                               length=len(sdp), sdp=sdp).encode()


def start_flood(exe: Path, message: bytes, port: int, pps: int, seconds: float,
                out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", PEER_CORE, str(exe), FLOODER, "127.0.0.1", str(port), str(pps),
         str(seconds)],
        stdin=subprocess.PIPE, stdout=(out / f"flood-{pps}.json").open("wb"),
        stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    proc.stdin.write(message)
    proc.stdin.close()
    return proc


def flood_report(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text().strip().splitlines()[-1])
        return doc
    except (OSError, ValueError, IndexError):
        return {}


_METRIC = re.compile(r'^(dce_[a-z0-9_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$', re.M)


def metric(sw: Switch, name: str, labels: str = "") -> float:
    for m in _METRIC.finditer(sw.metrics()):
        if m.group(1) == name and (m.group(2) or "") == labels:
            return float(m.group(3))
    return 0.0


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to ``port`` (buffer full)."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) > 12 and int(cols[1].split(":")[1], 16) == port:
            total += int(cols[-1])
    return total


def run_uac(sw: Switch, cps: int, seconds: float, out: Path, tag: str) -> subprocess.Popen[bytes]:
    calls = max(1, int(cps * seconds))
    sipp = SIPP or "sipp"
    cmd = ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uac.xml"), sw.sip_addr,
           "-s", CALLED, "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(cps),
           "-m", str(calls), "-d", "0", "-nostdin", "-timeout", f"{int(seconds) + 40}s",
           "-timeout_error", "-cid_str", f"flood-{tag}-%u", "-trace_stat", "-stf",
           f"uac_{tag}_stat.csv", "-fd", "1", "-trace_rtt", "-rtt_freq", "1",
           "-trace_err", "-error_file", f"uac_{tag}_err.log", "-cp", str(free_port())]
    (out / f"uac-{tag}").mkdir(exist_ok=True)
    return subprocess.Popen(cmd, cwd=out / f"uac-{tag}", stdout=(out / f"uac_{tag}.out").open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# phases


def measured_flood(sw: Switch, exe: Path, message: bytes, pps: int, seconds: float,
                   out: Path) -> Flood:
    """A flood alone (no trusted calls): what each dropped packet costs."""
    f = Flood(offered_pps=pps, seconds=seconds)
    port = sw.sip_port
    banned0 = metric(sw, "dce_pike_dropped_packets_total", 'transport="udp"')
    bans0 = metric(sw, "dce_pike_sources_banned_total")
    kern0 = kernel_drops(port)
    cpu0, core0, t0 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE)), time.monotonic()
    proc = start_flood(exe, message, port, pps, seconds, out)
    proc.wait(seconds + 30)
    time.sleep(0.3)  # the switch drains what is queued in its socket
    elapsed = time.monotonic() - t0
    f.cpu_s = sw.cpu_seconds() - cpu0
    f.core_other_pct = max(0.0, 100 * ((core_busy_seconds(int(SWITCH_CORE)) - core0) - f.cpu_s)
                           / elapsed)
    report = flood_report(out / f"flood-{pps}.json")
    f.sent, f.achieved_pps = int(report.get("sent", 0)), float(report.get("pps", 0.0))
    f.dropped_banned = int(metric(sw, "dce_pike_dropped_packets_total", 'transport="udp"')
                           - banned0)
    f.dropped_kernel = kernel_drops(port) - kern0
    f.bans = int(metric(sw, "dce_pike_sources_banned_total") - bans0)
    f.cpu_pct = 100 * f.cpu_s / max(f.seconds, 1e-9)
    if f.dropped_banned:
        f.us_per_dropped = f.cpu_s / f.dropped_banned * 1e6
    return f


def run(args: argparse.Namespace) -> Result:
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-flood-"))
    out.mkdir(parents=True, exist_ok=True)
    exe = build_sender(out)
    res = Result(cps=args.cps)
    uas_port = free_port()
    config = {
        "trunks": [dce_process.ip_trunk("trusted", ["127.0.0.1/32"])],
        "campaigns": [dce_process.campaign("bench", ["+" + CALLED])],
        "buyers": [dce_process.buyer("bench", [f"sip:buyer@127.0.0.1:{uas_port}"])],
    }
    server = None if (args.embedded or args.in_netns) else args.database_url
    db_url = create_database(server, prefix="dce_flood") if server else None
    env = {"DCE_LOG_LEVEL": "warning", "DCE_RING_TIMEOUT": "30s", "DCE_RTP_PORTS": "40000-49999",
           "DCE_MEDIA_MODE": args.media_mode}
    if args.pike_limit is not None:
        env["DCE_PIKE_LIMIT"] = str(args.pike_limit)
    if args.in_netns:
        env["DCE_PIKE_NFT_SET"] = NFT_SET
    data_dir = Path(tempfile.mkdtemp(prefix="dce-flood-var-"))
    sw = Switch(out, config, database_url=db_url, data_dir=data_dir, name="dce", env=env)
    uas = None
    total_calls = int(args.cps * (args.calm + args.seconds)) + 10
    try:
        sw.start(timeout=120, taskset=SWITCH_CORE)
        if args.in_netns:
            subprocess.run(["nft", "-f", "-"], input=(NFT_RULES % {"port": sw.sip_port}).encode(),
                           check=True)
        sipp = SIPP or "sipp"
        uas = subprocess.Popen(
            ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uas.xml"), "-i",
             "127.0.0.1", "-p", str(uas_port), "-nostdin", "-m", str(total_calls), "-timeout",
             f"{int(args.calm + args.seconds + args.settle) + 200}s", "-cp", str(free_port())],
            cwd=out, stdout=(out / "uas.out").open("wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        wait_bound(uas_port)
        message = flood_message("127.0.0.1", sw.sip_port)

        # 1. calm: the trusted trunk alone
        cpu0, t0 = sw.cpu_seconds(), time.monotonic()
        calm = run_uac(sw, args.cps, args.calm, out, "calm")
        calm.wait(args.calm + 60)
        res.calm_cpu_per_s = (sw.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        time.sleep(1.0)
        res.rss_before_mib = sw.rss_kib() / 1024

        # 2. flood and trusted calls together
        f = Flood(offered_pps=args.flood_pps, seconds=args.seconds)
        port = sw.sip_port
        kern0 = kernel_drops(port)
        cpu0, core0 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE))
        sampler = Sampler(sw)
        sampler.start()
        t0 = time.monotonic()
        flood = start_flood(exe, message, port, args.flood_pps, args.seconds, out)
        uac = run_uac(sw, args.cps, args.seconds, out, "flood")
        flood.wait(args.seconds + 30)
        f.cpu_s = sw.cpu_seconds() - cpu0
        elapsed = time.monotonic() - t0
        f.core_other_pct = max(0.0, 100 * ((core_busy_seconds(int(SWITCH_CORE)) - core0)
                                           - f.cpu_s) / elapsed)
        uac.wait(args.seconds + 60)
        sampler.stop_event.set()
        sampler.join(2)
        report = flood_report(out / f"flood-{args.flood_pps}.json")
        f.sent, f.achieved_pps = int(report.get("sent", 0)), float(report.get("pps", 0.0))
        f.dropped_banned = int(metric(sw, "dce_pike_dropped_packets_total", 'transport="udp"'))
        f.dropped_kernel = kernel_drops(port) - kern0
        f.bans = int(metric(sw, "dce_pike_sources_banned_total"))
        f.cpu_pct = 100 * f.cpu_s / args.seconds
        extra = f.cpu_s - res.calm_cpu_per_s * args.seconds
        if f.dropped_banned:
            f.us_per_dropped = max(0.0, extra) / f.dropped_banned * 1e6
        res.flood = f
        stats = counts(last_stats(out / "uac-flood" / "uac_flood_stat.csv"))
        res.calls = int(args.cps * args.seconds)
        res.successful, res.failed = stats["successful"], stats["failed"]
        res.retrans = stats["retrans"]
        rtt = sipp_rtt(out / "uac-flood")
        if rtt:
            res.p50_ms, res.p99_ms = percentile(rtt, 0.5), percentile(rtt, 0.99)
        res.rss_peak_mib = sampler.peak_rss_kib / 1024

        # 3. memory after the flood
        time.sleep(args.settle)
        res.rss_after_mib = sw.rss_kib() / 1024

        # 4. the ladder: the flood alone. Bans last DCE_PIKE_BAN (60 s): the source stays
        # banned through the ladder, so every packet is a dropped one.
        for pps in args.ladder:
            res.ladder.append(measured_flood(sw, exe, message, pps, args.step, out))
        if args.in_netns:
            listed = subprocess.run(["nft", "list", "set", *NFT_SET.split()],
                                    capture_output=True, text=True)
            res.notes.append("kernel set after the flood: "
                             + " ".join(listed.stdout.split())[:300])
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
        if sw.alive():
            try:
                sw.stop()
            except AssertionError as exc:
                res.notes.append(str(exc)[:300])
        sw.kill()
        if server and db_url:
            drop_database(server, db_url)
        shutil.rmtree(data_dir, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps(asdict(res), indent=2, default=str))
    print(f"files in {out}", flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# output


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_flood(f: Flood) -> None:
    offered = "max" if f.offered_pps == 0 else f"{f.offered_pps:,}"
    print(f"  {offered:>8} {f.achieved_pps:>10,.0f} {f.sent:>10,} {f.dropped_banned:>10,} "
          f"{f.dropped_kernel:>9,} {f.cpu_pct:>5.0f}% {fmt(f.us_per_dropped, '>7.2f')} "
          f"{f.core_other_pct:>5.0f}%", flush=True)


def report(res: Result, nft: bool) -> None:
    f = res.flood
    assert f is not None
    ok = res.successful / res.calls if res.calls else 0.0
    print()
    print(f"trusted trunk {res.cps} calls/s for {f.seconds:.0f} s under a flood from {FLOODER}"
          + (" (bans pushed to nftables)" if nft else ""))
    print(f"  flood offered {f.offered_pps:,} pps, sent {f.sent:,} "
          f"({f.achieved_pps:,.0f} pps really); dropped as banned {f.dropped_banned:,}, "
          f"by the kernel (socket buffer full) {f.dropped_kernel:,}; bans {f.bans}")
    print(f"  calls successful {res.successful}/{res.calls} = {100 * ok:.1f} %, "
          f"failed {res.failed}, retransmissions {res.retrans}; INVITE->200 p50 "
          f"{fmt(res.p50_ms, '.0f')} ms, p99 {fmt(res.p99_ms, '.0f')} ms (SIPp)   "
          f"target >= {100 * TARGET_SUCCESS:.0f} %: {'met' if ok >= TARGET_SUCCESS else 'NOT met'}")
    print(f"  switch CPU {f.cpu_pct:.0f} % of its core during the flood (calm: "
          f"{100 * res.calm_cpu_per_s:.0f} %); CPU per dropped packet "
          f"{fmt(f.us_per_dropped, '.2f')} us; core 1 other load {f.core_other_pct:.0f} %"
          + ("   [core 1 shared with other load]" if f.core_other_pct > 10 else ""))
    back = res.rss_after_mib <= res.rss_before_mib * (1 + TARGET_RSS_RETURN)
    print(f"  RSS before {res.rss_before_mib:.0f} MiB, peak {res.rss_peak_mib:.0f} MiB, "
          f"after {res.rss_after_mib:.0f} MiB   target within "
          f"{100 * TARGET_RSS_RETURN:.0f} % of before: {'met' if back else 'NOT met'}")
    if res.ladder:
        print()
        print("flood alone, source banned (how far one process goes):")
        print(f"  {'offered':>8} {'sent pps':>10} {'sent':>10} {'banned':>10} {'kernel':>9} "
              f"{'cpu':>6} {'us/pkt':>7} {'other':>6}")
        for step in res.ladder:
            print_flood(step)
        costs = [s.us_per_dropped for s in res.ladder if s.us_per_dropped and s.cpu_pct < 90]
        if costs:
            per = sorted(costs)[len(costs) // 2]
            print(f"  => about {per:.2f} us per dropped packet below saturation: one core "
                  f"drops at most ~{1e6 / per:,.0f} packets/s")
    for note in res.notes:
        print("note:", note)


# ---------------------------------------------------------------------------------------------


def in_netns(argv: list[str]) -> int:
    """Re-run this bench inside a fresh network namespace (for --nft)."""
    if not shutil.which("nft") or not shutil.which("ip"):
        print("bench_flood --nft: needs nft and ip (apt-get install nftables iproute2)",
              file=sys.stderr)
        return 2
    name = f"dce-flood-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        args = [a for a in argv if a != "--nft"]
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--in-netns", *args]
        return subprocess.run(cmd).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flood-pps", type=int, default=100_000, help="flood rate (0: flat out)")
    p.add_argument("--seconds", type=float, default=20.0, help="flood length")
    p.add_argument("--cps", type=int, default=20, help="trusted calls per second")
    p.add_argument("--calm", type=float, default=10.0, help="trusted calls alone first, s")
    p.add_argument("--settle", type=float, default=30.0, help="wait before the RSS after, s")
    p.add_argument("--ladder", type=int, nargs="*", default=[50_000, 100_000, 200_000, 0],
                   help="flood-alone rates (0: flat out)")
    p.add_argument("--step", type=float, default=5.0, help="seconds per ladder step")
    p.add_argument("--pike-limit", type=int, default=None,
                   help="DCE_PIKE_LIMIT of the switch (0: no bans, to see the flood without)")
    p.add_argument("--media-mode", default="bypass", choices=("relay", "bypass"))
    p.add_argument("--database-url", default=os.environ.get("DCE_BENCH_DATABASE_URL")
                   or os.environ.get("DCE_TEST_DATABASE_URL"))
    p.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL")
    p.add_argument("--nft", action="store_true", help="bans to nftables, in a network namespace")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help="keep files here")
    args = p.parse_args(argv)
    if args.nft:
        return in_netns(argv)
    if SIPP is None or not shutil.which("cc"):
        print("bench_flood: needs sipp and cc (apt-get install sip-tester gcc)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench_flood: needs 2 cores (switch on core 1, peers on core 0)", file=sys.stderr)
        return 2
    print(f"dce flood bench: switch on core {SWITCH_CORE}, SIPp and flood sender on core "
          f"{PEER_CORE}; trusted 127.0.0.1 at {args.cps} calls/s, flood from {FLOODER} at "
          f"{args.flood_pps or 'max'} pps for {args.seconds:.0f} s", flush=True)
    res = run(args)
    report(res, args.in_netns)
    ok = res.calls and res.successful / res.calls >= TARGET_SUCCESS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
