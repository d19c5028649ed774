#!/usr/bin/env python3
"""SIP call-rate benchmark: SIPp uac -> `dce run` (one core) -> SIPp uas (issue 3 "Benchmark").

Method (research/peers-bench.md): the switch runs pinned to core 1 (``taskset -c 1``), both
SIPp processes on core 0. For each offered rate R of the ladder, a fresh ``dce run`` carries
``max(3000, 10 R)`` calls with no hold (``-r R -m COUNT -d 0``) from ``sipp_scenarios/uac.xml``
to ``sipp_scenarios/uas.xml``. A step is *clean* when

* the uac exits 0 with every call successful, no failed call, no retransmission;
* the uas saw every call end (SuccessfulCall = COUNT, no failure, no retransmission) and
  exited by itself within 10 s of the uac;
* the ``cdrs`` table holds one row per call.

The ladder stops at the first step that is not clean. Per step it prints: clean?, achieved
calls/s (SIPp CallRate), p50/p99 INVITE->200 at the caller (from a packet capture of the caller
leg, microsecond timestamps; SIPp's own RTT file is ms-granular and shown beside it), CPU per
call (utime+stime of the switch process from /proc/PID/stat over the step / calls), peak CPU
and peak RSS, and "other": how busy core 1 was with anything but the switch (the external
PostgreSQL, or other people's processes: above ~10 % the figures are not the switch's own). At
the end: the best clean rate against the targets (>= 1,000 calls/s clean,
<= 600 us CPU per call) and against Kamailio (1,250) and Sippy (150) from peers-bench.md.

Database: a fresh database on --database-url (default $DCE_BENCH_DATABASE_URL, else
$DCE_TEST_DATABASE_URL) per run, dropped at the end; with neither, the embedded PostgreSQL,
whose processes are moved to core 0 so that they do not share the switch's core.

    .venv/bin/python bench/bench_sip.py                      # the whole ladder, ~2-3 min
    .venv/bin/python bench/bench_sip.py --rates 500 1000     # chosen steps
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration import dce_process  # noqa: E402
from tests.integration.db import count_cdrs, create_database, drop_database  # noqa: E402
from tests.integration.dce_process import Switch  # noqa: E402
from tests.integration.sipp import CALLED, SCENARIOS, SIPP  # noqa: E402
from tests.ports import free_port, wait_bound  # noqa: E402

LADDER = (250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000)
TARGET_CPS = 1000
TARGET_CPU_US = 600
KAMAILIO_CPS = 1250  # stateful proxy, children=1, one core (peers-bench.md)
SIPPY_CPS = 150  # Sippy B2BUA 2.5.0, one UDP thread (peers-bench.md)
SWITCH_CORE = "1"
PEER_CORE = "0"


@dataclass
class Step:
    rate: int
    calls: int
    clean: bool = False
    why: list[str] = field(default_factory=list)
    achieved_cps: float = 0.0
    p50_us: float | None = None
    p99_us: float | None = None
    sipp_p50_ms: float | None = None
    sipp_p99_ms: float | None = None
    cpu_per_call_us: float = 0.0
    cpu_avg_pct: float = 0.0
    cpu_peak_pct: float = 0.0
    rss_peak_mib: float = 0.0
    core1_other_pct: float = 0.0  # core 1 busy time not spent by the switch (other load)
    uac: dict[str, int] = field(default_factory=dict)
    uas: dict[str, int] = field(default_factory=dict)
    cdrs: int = 0
    switch_rc: int | None = None
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# SIPp statistics


def last_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV, by column name."""
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    names = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(names, values, strict=False))


def counts(stats: dict[str, str]) -> dict[str, int]:
    def n(key: str) -> int:
        try:
            return int(float(stats.get(key, "0") or 0))
        except ValueError:
            return 0

    return {"successful": n("SuccessfulCall(C)"), "failed": n("FailedCall(C)"),
            "retrans": n("Retransmissions(C)"), "created": n("TotalCallCreated"),
            "out_of_call": n("OutOfCallMsgs(C)"), "dead_call": n("DeadCallMsgs(C)")}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def sipp_rtt(directory: Path) -> list[float]:
    """RTD 1 (INVITE->200) in ms from the uac's ``*_rtt.csv`` (integer ms in SIPp 3.6)."""
    out: list[float] = []
    for path in directory.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3 and parts[2].strip() == "1":
                try:
                    out.append(float(parts[1]))
                except ValueError:
                    pass
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# INVITE -> 200 from a packet capture of the caller leg

_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)")
_CSEQ_INVITE = re.compile(rb"(?im)^cseq[ \t]*:[ \t]*\d+[ \t]+INVITE\b")


def _pcap_packets(path: Path) -> Any:
    """(timestamp seconds, UDP payload) from a libpcap file (Ethernet, SLL, SLL2 or null)."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a libpcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_len = {1: 14, 113: 16, 276: 20, 0: 4}.get(linktype)
    if link_len is None:
        raise ValueError(f"{path}: unsupported link type {linktype}")
    rec = struct.Struct(endian + "IIII")
    off = 24
    div = 1e9 if nano else 1e6
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += 16
        pkt = data[off:off + incl]
        off += incl
        ip = pkt[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        yield sec + frac / div, ip[ihl + 8:]


def invite_to_200_us(pcap: Path) -> list[float]:
    """Per call: first INVITE out of the caller -> first 200 (CSeq INVITE) back, microseconds."""
    invites: dict[bytes, float] = {}
    answered: dict[bytes, float] = {}
    for ts, payload in _pcap_packets(pcap):
        if payload.startswith(b"INVITE "):
            m = _CALL_ID.search(payload)
            if m and m.group(1) not in invites:
                invites[m.group(1)] = ts
        elif payload.startswith(b"SIP/2.0 200") and _CSEQ_INVITE.search(payload):
            m = _CALL_ID.search(payload)
            if m and m.group(1) not in answered:
                answered[m.group(1)] = ts
    return sorted((answered[c] - t) * 1e6 for c, t in invites.items() if c in answered)


# ---------------------------------------------------------------------------------------------
# one step


def _pids_of_data_dir(data_dir: Path) -> list[int]:
    pg = str((data_dir / "pg").resolve())
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "postgres" in cmd and pg in cmd:
                pids.append(int(proc.name))
    return pids


def core_busy_seconds(core: int) -> float:
    """Busy time of one CPU core (all but idle and iowait) from /proc/stat, in seconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


class Sampler(threading.Thread):
    """Samples the switch's CPU time and RSS every 0.25 s: peak 1-second CPU, peak RSS."""

    def __init__(self, sw: Switch) -> None:
        super().__init__(daemon=True)
        self.sw = sw
        self.stop_event = threading.Event()
        self.peak_cpu = 0.0
        self.peak_rss_kib = 0

    def run(self) -> None:
        window: list[tuple[float, float]] = []
        while not self.stop_event.wait(0.25):
            try:
                now, cpu, rss = time.monotonic(), self.sw.cpu_seconds(), self.sw.rss_kib()
            except (OSError, AssertionError):
                return
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            window.append((now, cpu))
            while window and now - window[0][0] > 1.0:
                t0, c0 = window[0]
                if now - t0 >= 0.99:
                    self.peak_cpu = max(self.peak_cpu, (cpu - c0) / (now - t0))
                window.pop(0)


def run_step(rate: int, args: argparse.Namespace, db_url: str | None, out: Path) -> Step:
    calls = max(args.min_calls, 10 * rate)
    step = Step(rate=rate, calls=calls)
    out.mkdir(parents=True, exist_ok=True)
    uas_port, uac_port = free_port(), free_port()
    config = {
        "trunks": [dce_process.ip_trunk("bench")],
        "campaigns": [dce_process.campaign("bench", ["+" + CALLED])],
        "buyers": [dce_process.buyer("bench", [f"sip:buyer@127.0.0.1:{uas_port}"])],
    }
    data_dir = Path(tempfile.mkdtemp(prefix=f"dce-bench-{rate}-"))
    sw = Switch(out, config, database_url=db_url, data_dir=data_dir, name="dce",
                env={"DCE_LOG_LEVEL": args.log_level, "DCE_MAX_CALLS": "100000",
                     "DCE_RING_TIMEOUT": "30s",
                     # 10,000 RTP ports (two pairs per call) rather than the tests' 200
                     "DCE_RTP_PORTS": args.rtp_ports, "DCE_MEDIA_MODE": args.media_mode})
    tmo = int(calls / rate + 30)
    sipp = SIPP or "sipp"
    pcap = out / "caller-leg.pcap"
    uas = cap = None
    try:
        sw.start(timeout=90, taskset=SWITCH_CORE)
        if db_url is None:
            for pid in _pids_of_data_dir(data_dir):
                subprocess.run(["taskset", "-pc", PEER_CORE, str(pid)], capture_output=True,
                               check=False)
        with (out / "uas.out").open("wb") as uas_out:
            uas = subprocess.Popen(
                ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uas.xml"),
                 "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin", "-m", str(calls),
                 "-timeout", f"{tmo + 30}s", "-trace_stat", "-stf", "uas_stat.csv", "-fd", "1",
                 "-trace_err", "-error_file", "uas_err.log", "-cp", str(free_port())],
                cwd=out, stdout=uas_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_bound(uas_port)
        if args.pcap and shutil.which("dumpcap"):
            cap = subprocess.Popen(
                ["taskset", "-c", PEER_CORE, "dumpcap", "-q", "-P", "-i", "lo", "-s", "1024",
                 "-f", f"udp port {uac_port}", "-w", str(pcap)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while not (pcap.exists() and pcap.stat().st_size >= 24):
                if time.monotonic() > deadline or cap.poll() is not None:
                    cap.kill()
                    cap = None
                    break
                time.sleep(0.05)
            time.sleep(0.3)
        sampler = Sampler(sw)
        cpu0 = sw.cpu_seconds()
        core0 = core_busy_seconds(int(SWITCH_CORE))
        sampler.start()
        t0 = time.monotonic()
        uac_cmd = ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uac.xml"),
                   sw.sip_addr, "-s", CALLED, "-i", "127.0.0.1", "-p", str(uac_port),
                   "-r", str(rate), "-m", str(calls), "-d", "0", "-l", "30000", "-nostdin",
                   "-timeout", f"{tmo}s", "-timeout_error", "-cid_str", f"bench-r{rate}-%u",
                   "-trace_stat", "-stf", "uac_stat.csv", "-fd", "1", "-trace_rtt",
                   "-rtt_freq", "1", "-trace_err", "-error_file", "uac_err.log",
                   "-cp", str(free_port())]
        with (out / "uac.out").open("wb") as uac_out:
            try:
                uac_rc = subprocess.run(uac_cmd, cwd=out, stdout=uac_out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=tmo + 15).returncode
            except subprocess.TimeoutExpired:
                uac_rc = -9
        step.elapsed_s = time.monotonic() - t0
        cpu1 = sw.cpu_seconds()
        core1 = core_busy_seconds(int(SWITCH_CORE))
        sampler.stop_event.set()
        sampler.join(2)
        try:
            uas_rc: int | None = uas.wait(10)
        except subprocess.TimeoutExpired:
            uas_rc = None
            uas.kill()
            uas.wait(5)
        if cap is not None:
            time.sleep(0.2)
            cap.send_signal(signal.SIGINT)
            try:
                cap.wait(10)
            except subprocess.TimeoutExpired:
                cap.kill()

        step.uac = counts(last_stats(out / "uac_stat.csv"))
        step.uas = counts(last_stats(out / "uas_stat.csv"))
        rate_c = last_stats(out / "uac_stat.csv").get("CallRate(C)", "0")
        try:
            step.achieved_cps = float(rate_c)
        except ValueError:
            step.achieved_cps = 0.0
        step.cpu_per_call_us = (cpu1 - cpu0) / calls * 1e6
        step.cpu_avg_pct = 100 * (cpu1 - cpu0) / max(step.elapsed_s, 1e-9)
        step.cpu_peak_pct = 100 * sampler.peak_cpu
        step.core1_other_pct = max(0.0, 100 * ((core1 - core0) - (cpu1 - cpu0))
                                   / max(step.elapsed_s, 1e-9))
        step.rss_peak_mib = sampler.peak_rss_kib / 1024
        rtt = sipp_rtt(out)
        if rtt:
            step.sipp_p50_ms, step.sipp_p99_ms = percentile(rtt, 0.5), percentile(rtt, 0.99)
        if cap is not None and pcap.exists():
            lat = invite_to_200_us(pcap)
            if lat:
                step.p50_us, step.p99_us = percentile(lat, 0.5), percentile(lat, 0.99)
            if not args.keep:
                pcap.unlink()

        # CDRs: wait for the writer (embedded: while the switch runs; external: after drain)
        like = f"bench-r{rate}-%"
        if db_url is None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                step.cdrs = count_cdrs(sw.dsn, like)
                if step.cdrs >= calls:
                    break
                time.sleep(0.25)
            step.switch_rc = sw.stop()
        else:
            step.switch_rc = sw.stop()
            step.cdrs = count_cdrs(db_url, like)

        why = step.why
        if uac_rc != 0:
            why.append(f"uac exit {uac_rc}")
        if step.uac.get("successful") != calls or step.uac.get("failed"):
            why.append(f"uac {step.uac.get('successful')}/{calls} ok, "
                       f"{step.uac.get('failed')} failed")
        if step.uac.get("retrans") or step.uas.get("retrans"):
            why.append(f"retransmissions uac {step.uac.get('retrans')} "
                       f"uas {step.uas.get('retrans')}")
        if uas_rc is None:
            why.append("uas did not exit within 10 s (did not see every call end)")
        if step.uas.get("successful") != calls or step.uas.get("failed"):
            why.append(f"uas {step.uas.get('successful')}/{calls} ended, "
                       f"{step.uas.get('failed')} failed")
        if step.cdrs != calls:
            why.append(f"{step.cdrs} CDRs for {calls} calls")
        if step.switch_rc != 0:
            why.append(f"switch exit {step.switch_rc} on SIGTERM")
        step.clean = not why
    except Exception as exc:
        step.why.append(f"{type(exc).__name__}: {exc}")
    finally:
        for proc in (uas, cap):
            if proc is not None and proc.poll() is None:
                proc.kill()
        sw.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    return step


# ---------------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_step(s: Step) -> None:
    print(f"{s.rate:>6} {'yes' if s.clean else 'NO':>5} {s.achieved_cps:>8.1f} "
          f"{fmt(s.p50_us, '>8.0f')} {fmt(s.p99_us, '>8.0f')} "
          f"{fmt(s.sipp_p50_ms, '>5.0f')}/{fmt(s.sipp_p99_ms, '<5.0f')} "
          f"{s.cpu_per_call_us:>8.0f} {s.cpu_avg_pct:>5.0f}% {s.cpu_peak_pct:>5.0f}% "
          f"{s.rss_peak_mib:>7.1f} {s.cdrs:>7} {s.core1_other_pct:>5.0f}%"
          + ("" if s.clean else "   " + "; ".join(s.why))
          + ("   [core 1 shared with other load]" if s.core1_other_pct > 10 else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=int, nargs="+", default=list(LADDER),
                   help="offered calls/s, climbed in order until a step is not clean")
    p.add_argument("--min-calls", type=int, default=3000,
                   help="calls per step: max(MIN_CALLS, 10 x rate)")
    p.add_argument("--database-url", default=os.environ.get("DCE_BENCH_DATABASE_URL")
                   or os.environ.get("DCE_TEST_DATABASE_URL"),
                   help="PostgreSQL server to create a fresh database on (default: embedded)")
    p.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL")
    p.add_argument("--no-pcap", dest="pcap", action="store_false",
                   help="no capture of the caller leg (p50/p99 then only from SIPp, in ms)")
    p.add_argument("--log-level", default="warning", help="DCE_LOG_LEVEL of the switch")
    p.add_argument("--rtp-ports", default="40000-59999", help="DCE_RTP_PORTS of the switch")
    p.add_argument("--media-mode", default="relay", choices=("relay", "bypass"),
                   help="DCE_MEDIA_MODE of the switch: relay anchors RTP (4 sockets per call), "
                        "bypass is signalling only (what Kamailio and Sippy were measured doing)")
    p.add_argument("--out", type=Path, default=None, help="keep per-step files here")
    p.add_argument("--keep", action="store_true", help="keep the packet captures")
    args = p.parse_args(argv)
    if SIPP is None:
        print("bench_sip: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench_sip: needs 2 cores (switch on core 1, SIPp on core 0)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-bench-"))
    server = None if args.embedded else args.database_url
    print(f"dce bench: switch on core {SWITCH_CORE}, SIPp uac+uas on core {PEER_CORE}; "
          f"database: {'fresh database on ' + server.split('@')[-1] if server else 'embedded'}"
          f"; files in {out}", flush=True)
    print(f"{'rate':>6} {'clean':>5} {'calls/s':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'sipp ms':>11} {'cpu/call':>8} {'cpu':>6} {'peak':>6} {'RSS MiB':>7} "
          f"{'cdrs':>7} {'other':>6}", flush=True)
    steps: list[Step] = []
    for rate in args.rates:
        # A fresh database per step, as the embedded one is: a config file seeds a database
        # only once (docs/settings.md), and each step's buyer listens on another port.
        db_url = create_database(server, prefix="dce_bench") if server else None
        try:
            step = run_step(rate, args, db_url, out / f"rate-{rate}")
        finally:
            if server and db_url:
                drop_database(server, db_url)
        steps.append(step)
        print_step(step)
        if not step.clean:
            break
    clean = [s for s in steps if s.clean]
    best = max(clean, key=lambda s: s.achieved_cps, default=None)
    print()
    if best is None:
        print("no clean step")
    else:
        cps = best.achieved_cps
        print(f"best clean: offered {best.rate} calls/s, achieved {cps:.0f} calls/s; "
              f"INVITE->200 p50 {fmt(best.p50_us, '.0f')} us, p99 {fmt(best.p99_us, '.0f')} us; "
              f"CPU {best.cpu_per_call_us:.0f} us/call; peak RSS {best.rss_peak_mib:.1f} MiB")
        print(f"target >= {TARGET_CPS} calls/s clean: "
              f"{'met' if cps >= TARGET_CPS else 'NOT met'}; "
              f"target <= {TARGET_CPU_US} us CPU/call: "
              f"{'met' if best.cpu_per_call_us <= TARGET_CPU_US else 'NOT met'}")
        print(f"vs Kamailio {KAMAILIO_CPS} calls/s: {cps / KAMAILIO_CPS:.2f}x; "
              f"vs Sippy {SIPPY_CPS} calls/s: {cps / SIPPY_CPS:.1f}x")
    (out / "summary.json").write_text(json.dumps(
        {"steps": [asdict(s) for s in steps],
         "best": asdict(best) if best else None}, indent=2, default=str))
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
