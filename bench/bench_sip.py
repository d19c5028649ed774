#!/usr/bin/env python3
"""SIP call-rate benchmark: SIPp uac -> `dce run` | Kamailio (one core) -> SIPp uas (issue 13).

Method (../shared/research/peers-bench.md): the system under test runs pinned to core 1
(``taskset -c 1``), both SIPp processes and this script on core 0. For each offered rate R of
the ladder, a fresh system carries ``max(3000, 10 R)`` calls with no hold (``-r R -m COUNT
-d 0``) from ``sipp_scenarios/uac.xml`` to ``sipp_scenarios/uas.xml``. The systems, each
climbing the same ladder in the same run, rate by rate:

* ``kamailio``: Kamailio 5.6 as a transaction-stateful proxy (``bench/kamailio-proxy.cfg``,
  one worker, ``t_relay`` with record-route, as peers-bench.md measured it), the reference;
* ``dce relay``: ``dce run`` anchoring the media (its default);
* ``dce bypass``: ``dce run`` passing SDP through (signalling only, like Kamailio).

A step is *clean* when

* the uac exits 0 with every call successful, no failed call, no retransmission, and
  offered at least 90 % of the rate (SIPp's CallRate: it falls behind when core 0 is busy);
* the uas saw every call end (SuccessfulCall = COUNT, no failure, no retransmission) and
  exited by itself within 10 s of the uac;
* for dce, the ``cdrs`` table holds one row per call and the switch exits 0 on SIGTERM.

A system stops climbing at its first step that is not clean. Per step it prints: clean?,
achieved calls/s (SIPp CallRate), p50/p99 INVITE->200 at the caller (from a packet capture of
the caller leg, microsecond timestamps; SIPp's own RTT file is ms-granular and shown beside
it), CPU per call (utime+stime of the system's processes from /proc over the step / calls),
average and peak 1-second CPU, peak memory (dce: RSS; Kamailio: PSS summed over its processes,
so that its shared memory counts once), the CDR count, and what the rest of the machine did
meanwhile (bench/machine.py: other processes' CPU, machine-wide in % of one core, and the
hypervisor's steal per core). A step whose other load or steal was above --max-other /
--max-steal is run again (at most --repeats times, after waiting for a quiet machine) and the
line says so. Beside each dce step: dce / Kamailio at that rate (CPU per call) and the ratio of
the best clean rates so far.

At the end, a summary: each system's best clean rate, its CPU per call there, its p99
INVITE->200 at half that rate (a step run for it when the ladder has none), the dce/Kamailio
ratios, and the targets of issue 13 (relay >= 1,250 calls/s and <= 700 us CPU per call;
bypass >= 2,000 calls/s and <= 400 us; p99 INVITE->200 <= 10 ms at half the best rate).

Database: a fresh database on --database-url (default $DCE_BENCH_DATABASE_URL, else
$DCE_TEST_DATABASE_URL) per dce step, dropped at the end; with neither, the embedded
PostgreSQL, whose processes are moved to core 0 so that they do not share the switch's core.

    .venv/bin/python bench/bench_sip.py                                 # relay + Kamailio
    .venv/bin/python bench/bench_sip.py --media relay bypass --rates 250 500
    .venv/bin/python bench/bench_sip.py --media bypass --no-kamailio --rates 1000 1500
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import (  # noqa: E402
    MAX_OTHER_PCT,
    MAX_STEAL_PCT,
    Window,
    cmdline,
    pids_matching,
    proc_cpu,
    processes,
    wait_quiet,
)

from tests.integration import dce_process  # noqa: E402
from tests.integration.db import count_cdrs, create_database, drop_database  # noqa: E402
from tests.integration.dce_process import Switch  # noqa: E402
from tests.integration.sipp import CALLED, SCENARIOS, SIPP  # noqa: E402
from tests.ports import free_port, port_bound, wait_bound  # noqa: E402

LADDER = (250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000)
# issue 13, "Honest figures": best clean calls/s, CPU per call there (us), per media mode;
# p99 INVITE->200 at half the best clean rate (us)
TARGETS = {"relay": (1250, 700), "bypass": (2000, 400)}
TARGET_P99_US = 10_000
KAMAILIO_CPS = 1250  # stateful proxy, children=1, one core (peers-bench.md), without --kamailio
SIPPY_CPS = 150  # Sippy B2BUA 2.5.0, one UDP thread (peers-bench.md)
SWITCH_CORE = "1"
PEER_CORE = "0"
KAMAILIO_CFG = ROOT / "bench" / "kamailio-proxy.cfg"
KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
KAM = "kamailio"


@dataclass
class Step:
    rate: int
    calls: int
    system: str = "relay"  # relay | bypass (dce's media mode) | kamailio
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
    other_pct: float = 0.0  # other processes' CPU during the step, % of one core (machine.py)
    steal_pct: float = 0.0  # the hypervisor's steal, highest of the cores, %
    disturbed: list[str] = field(default_factory=list)  # why the machine was not quiet
    load: dict[str, object] = field(default_factory=dict)
    attempt: int = 1
    attempts: int = 1
    uac: dict[str, int] = field(default_factory=dict)
    uas: dict[str, int] = field(default_factory=dict)
    cdrs: int | None = None
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


def rejected(err_log: Path) -> dict[str, int]:
    """Calls the uac aborted on a failure response, by status code (its -trace_err); a
    retransmitted response is logged again, so calls are counted by Call-ID."""
    if not err_log.exists():
        return {}
    calls: dict[str, set[str]] = {}
    for call_id, code in re.findall(r"Call-Id '([^']*)':[^\n]*?received 'SIP/2\.0 ([3-6]\d\d) ",
                                    err_log.read_text(errors="replace")):
        calls.setdefault(code, set()).add(call_id)
    return {code: len(ids) for code, ids in calls.items()}


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


def _media_workers(switch_pid: int) -> list[int]:
    """The switch's media worker processes (DCE_MEDIA_WORKERS)."""
    return [pid for pid, p in processes().items()
            if p.ppid == switch_pid and "media.worker" in cmdline(pid)]


class _WithWorkers:
    """The switch's CPU plus its media workers': all of dce's work for a call."""

    def __init__(self, switch: Switch, workers: list[int]) -> None:
        self.switch, self.workers = switch, workers

    def cpu_seconds(self) -> float:
        return self.switch.cpu_seconds() + sum(proc_cpu(pid) for pid in self.workers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.switch, name)


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


class Measured(Protocol):
    """What a step measures of the system under test (a :class:`Switch` or Kamailio)."""

    def cpu_seconds(self) -> float: ...

    def rss_kib(self) -> int: ...


class Sampler(threading.Thread):
    """Samples the system's CPU time every 0.25 s and its memory every second: peak 1-second
    CPU, peak memory."""

    def __init__(self, sw: Measured) -> None:
        super().__init__(daemon=True)
        self.sw = sw
        self.stop_event = threading.Event()
        self.peak_cpu = 0.0
        self.peak_rss_kib = 0

    def run(self) -> None:
        window: list[tuple[float, float]] = []
        tick = 0
        while not self.stop_event.wait(0.25):
            try:
                now, cpu = time.monotonic(), self.sw.cpu_seconds()
                if tick % 4 == 0:
                    self.peak_rss_kib = max(self.peak_rss_kib, self.sw.rss_kib())
            except (OSError, AssertionError):
                return
            tick += 1
            window.append((now, cpu))
            while window and now - window[0][0] > 1.0:
                t0, c0 = window[0]
                if now - t0 >= 0.99:
                    self.peak_cpu = max(self.peak_cpu, (cpu - c0) / (now - t0))
                window.pop(0)


def _proc_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_group(pgid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                out.append(int(entry.name))
    return out


class KamailioProxy:
    """Kamailio running ``bench/kamailio-proxy.cfg`` on a free port of its own, pinned to the
    switch's core, in the foreground (``-DD -E``) and in a session of its own; its runtime
    directory, pid file and working directory are under ``workdir`` (nothing in /run), and
    :meth:`stop` ends its whole process group."""

    def __init__(self, workdir: Path, next_hop: str, children: int = 1,
                 shm_mb: int = 1024) -> None:
        self.workdir = workdir
        self.next_hop = next_hop
        self.children = children
        # tm keeps each transaction some seconds after it ends: at 1,250 calls/s a few
        # hundred MB of shared memory (peers-bench.md ran -m 512); pages are touched lazily
        self.shm_mb = shm_mb
        self.port = free_port()
        self.run_dir = workdir / "run"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    @property
    def sip_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        assert KAMAILIO is not None
        return ["taskset", "-c", SWITCH_CORE, KAMAILIO, "-DD", "-E", "-f", str(KAMAILIO_CFG),
                "-Y", str(self.run_dir), "-P", str(self.run_dir / "kamailio.pid"),
                "-w", str(self.workdir), "-m", str(self.shm_mb), "-M", "32",
                "-A", f"BENCH_LISTEN=udp:{self.sip_addr}",
                "-A", f'BENCH_NEXT_HOP="{self.next_hop}"',
                "-A", f"BENCH_CHILDREN={self.children}"]

    def start(self, timeout: float = 15.0) -> KamailioProxy:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "kamailio.log").open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "kamailio.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"kamailio did not listen on {self.sip_addr}\n{tail}")
            time.sleep(0.05)
        # it binds before it forks its workers and timers: wait until the group stops growing
        stable_since, n = time.monotonic(), 0
        while time.monotonic() - stable_since < 0.5 and time.monotonic() < deadline:
            pids = _process_group(self.proc.pid)
            if len(pids) != n:
                stable_since, n = time.monotonic(), len(pids)
            time.sleep(0.1)
        self.pids = _process_group(self.proc.pid)
        return self

    def cpu_seconds(self) -> float:
        """utime + stime of all of Kamailio's processes (they do not fork during a step)."""
        total = 0.0
        for pid in self.pids:
            try:
                total += _proc_cpu(pid)
            except OSError:
                pass
        return total

    def rss_kib(self) -> int:
        """PSS summed over its processes: the shared memory counts once, not once each."""
        total = 0
        for pid in self.pids:
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            m = re.search(r"(?m)^Pss:\s+(\d+) kB", text)
            total += int(m.group(1)) if m else 0
        return total

    def stop(self) -> int | None:
        """SIGTERM, up to 10 s to exit, then SIGKILL to what is left of its process group.
        The main process is not reaped before that, so the group id cannot have been reused."""
        if self.proc is None:
            return None
        pid = self.proc.pid
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return self.proc.wait(5)


def run_step(rate: int, args: argparse.Namespace, db_url: str | None, out: Path,
             system: str = "relay") -> Step:
    """One step: a fresh system (``dce run`` in media mode ``system``, or Kamailio) carries
    the calls of one offered rate."""
    calls = max(args.min_calls, 10 * rate)
    step = Step(rate=rate, calls=calls, system=system)
    out.mkdir(parents=True, exist_ok=True)
    uas_port, uac_port = free_port(), free_port()
    tmo = int(calls / rate + 30)
    sipp = SIPP or "sipp"
    pcap = out / "caller-leg.pcap"
    uas = cap = None
    sw: Switch | None = None
    kam: KamailioProxy | None = None
    data_dir: Path | None = None
    try:
        target: Measured
        extra: Callable[[], Iterable[int]] | None = None
        if system == KAM:
            kam = KamailioProxy(out / "kamailio", f"sip:127.0.0.1:{uas_port}",
                                children=args.kamailio_children).start()
            target, addr = kam, kam.sip_addr
        else:
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
                             "DCE_RTP_PORTS": args.rtp_ports, "DCE_MEDIA_MODE": system,
                             "DCE_MEDIA_WORKERS": str(args.media_workers)})
            sw.start(timeout=90, taskset=SWITCH_CORE)
            target, addr = sw, sw.sip_addr
            if args.media_workers and system == "relay":
                # Media workers on SIPp's core (the switch keeps its own); their CPU counts
                # in dce's CPU per call.
                workers = _media_workers(sw.pid)
                for pid in workers:
                    subprocess.run(["taskset", "-pc", PEER_CORE, str(pid)], capture_output=True,
                                   check=False)
                target = cast(Measured, _WithWorkers(sw, workers))
            if db_url is None:
                for pid in _pids_of_data_dir(data_dir):
                    subprocess.run(["taskset", "-pc", PEER_CORE, str(pid)], capture_output=True,
                                   check=False)
                # the embedded server's postmaster (its backends are its children) is ours
                pg_dir = data_dir
                extra = lambda: _pids_of_data_dir(pg_dir)  # noqa: E731
            else:
                # the backends serving the step's own database are ours; the shared
                # server's background writers are not told apart and count as other load
                dbname = db_url.split("?")[0].rsplit("/", 1)[1]
                extra = lambda: pids_matching(f" {dbname} ")  # noqa: E731
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
        sampler = Sampler(target)
        window = Window(extra)
        cpu0 = target.cpu_seconds()
        sampler.start()
        t0 = time.monotonic()
        uac_cmd = ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uac.xml"),
                   addr, "-s", CALLED, "-i", "127.0.0.1", "-p", str(uac_port),
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
        cpu1 = target.cpu_seconds()
        load = window.stop()
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
        step.rss_peak_mib = sampler.peak_rss_kib / 1024
        step.other_pct, step.steal_pct = load.other_pct, load.steal_max
        step.disturbed = load.disturbed(args.max_other, args.max_steal)
        step.load = load.as_dict()
        rtt = sipp_rtt(out)
        if rtt:
            step.sipp_p50_ms, step.sipp_p99_ms = percentile(rtt, 0.5), percentile(rtt, 0.99)
        if cap is not None and pcap.exists():
            lat = invite_to_200_us(pcap)
            if lat:
                step.p50_us, step.p99_us = percentile(lat, 0.5), percentile(lat, 0.99)
            if not args.keep:
                pcap.unlink()

        why = step.why
        if sw is not None:
            # CDRs: wait for the writer (embedded: while the switch runs; external: after drain)
            like = f"bench-r{rate}-%"
            if db_url is None:
                deadline = time.monotonic() + 15
                cdrs = 0
                while time.monotonic() < deadline:
                    cdrs = count_cdrs(sw.dsn, like)
                    if cdrs >= calls:
                        break
                    time.sleep(0.25)
                step.switch_rc = sw.stop()
            else:
                step.switch_rc = sw.stop()
                cdrs = count_cdrs(db_url, like)
            step.cdrs = cdrs
        if uac_rc != 0:
            why.append(f"uac exit {uac_rc}")
        if step.achieved_cps < 0.9 * rate:
            # SIPp fell behind its own schedule: the rate was not offered (core 0 short of CPU)
            why.append(f"the uac offered only {step.achieved_cps:.0f} calls/s")
        if step.uac.get("successful") != calls or step.uac.get("failed"):
            why.append(f"uac {step.uac.get('successful')}/{calls} ok, "
                       f"{step.uac.get('failed')} failed")
            shed = rejected(out / "uac_err.log")
            if shed:
                why.append(", ".join(f"{n} answered {code}" for code, n in sorted(shed.items()))
                           + (" (dce's overload control sheds with 503: see its log)"
                              if "503" in shed and sw is not None else ""))
        if step.uac.get("retrans") or step.uas.get("retrans"):
            why.append(f"retransmissions uac {step.uac.get('retrans')} "
                       f"uas {step.uas.get('retrans')}")
        if uas_rc is None:
            why.append("uas did not exit within 10 s (did not see every call end)")
        if step.uas.get("successful") != calls or step.uas.get("failed"):
            why.append(f"uas {step.uas.get('successful')}/{calls} ended, "
                       f"{step.uas.get('failed')} failed")
        if sw is not None:
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
        if sw is not None:
            sw.kill()
        if kam is not None:
            kam.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    return step


def measured(system: str, rate: int, args: argparse.Namespace, server: str | None, out: Path,
             report: Callable[[Step, str], None]) -> Step:
    """A step, run again (at most ``--repeats`` times) while the machine was busy during it.

    Each attempt first waits (at most ``--quiet-wait`` s) for a quiet machine. A disturbed
    attempt is reported (``report``) and not kept; when every attempt was disturbed, the
    least disturbed one is kept and its line says so.
    """
    attempts: list[Step] = []
    total = args.repeats + 1
    for attempt in range(1, total + 1):
        if args.quiet_wait > 0:
            wait_quiet(args.max_other, args.max_steal, timeout=args.quiet_wait)
        db_url = (create_database(server, prefix="dce_bench")
                  if server and system != KAM else None)
        try:
            # A fresh database per step, as the embedded one is: a config file seeds a
            # database only once (docs/settings.md), and each step's buyer has another port.
            step = run_step(rate, args, db_url,
                            out / f"{system}-{rate}" / f"attempt-{attempt}", system)
        finally:
            if server and db_url:
                drop_database(server, db_url)
        step.attempt = attempt
        attempts.append(step)
        if not step.disturbed:
            break
        if attempt < total:
            report(step, f"attempt {attempt}/{total}, machine busy: repeated")
    quiet = [s for s in attempts if not s.disturbed]
    kept = quiet[0] if quiet else min(attempts, key=lambda s: s.other_pct + s.steal_pct)
    if kept is not attempts[-1]:
        report(attempts[-1], f"attempt {total}/{total}, machine busy")
    kept.attempts = len(attempts)
    return kept


# ---------------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def label(system: str) -> str:
    return "kamailio" if system == KAM else f"dce {system}"


def best_clean(steps: Iterable[Step]) -> Step | None:
    return max((s for s in steps if s.clean), key=lambda s: s.achieved_cps, default=None)


HEADER = (f"{'system':<11} {'rate':>5} {'clean':>5} {'calls/s':>8} {'p50 us':>7} {'p99 us':>7} "
          f"{'sipp ms':>9} {'cpu/call':>8} {'cpu':>5} {'peak':>5} {'mem MiB':>7} {'cdrs':>6} "
          f"{'other':>5} {'steal':>5}  dce/kamailio")


def step_line(s: Step, ratio: str = "", note: str = "", kept: bool = True) -> str:
    """One step's line; ``kept``: the attempt the step keeps (else one reported on the way)."""
    line = (f"{label(s.system):<11} {s.rate:>5} {'yes' if s.clean else 'NO':>5} "
            f"{s.achieved_cps:>8.1f} {fmt(s.p50_us, '.0f'):>7} {fmt(s.p99_us, '.0f'):>7} "
            f"{fmt(s.sipp_p50_ms, '.0f'):>4}/{fmt(s.sipp_p99_ms, '.0f'):<4} "
            f"{s.cpu_per_call_us:>8.0f} {s.cpu_avg_pct:>4.0f}% {s.cpu_peak_pct:>4.0f}% "
            f"{s.rss_peak_mib:>7.1f} {fmt(s.cdrs, 'd'):>6} {s.other_pct:>4.0f}% "
            f"{s.steal_pct:>4.0f}%  {ratio}")
    notes = [] if s.clean else ["; ".join(s.why)]
    if note:
        notes.append(note)
    if s.disturbed:
        if kept:
            notes.append(f"machine busy in all {s.attempts} attempts, the least busy "
                         f"(attempt {s.attempt}) kept" if s.attempts > 1
                         else "machine busy, not repeated")
        notes.append("; ".join(s.disturbed))
    elif kept and s.attempts > 1:
        notes.append(f"attempt {s.attempt} of {s.attempts}: the earlier ones were disturbed")
    return line.rstrip() + ("   [" + " | ".join(notes) + "]" if notes else "")


def ratio_text(s: Step, kam: Step | None, series: dict[str, list[Step]]) -> str:
    """dce / Kamailio: CPU per call at this rate, best clean rate so far."""
    if s.system == KAM or kam is None:
        return ""
    parts = []
    if kam.cpu_per_call_us > 0:
        parts.append(f"cpu/call {s.cpu_per_call_us / kam.cpu_per_call_us:.1f}x")
    mine, theirs = best_clean(series[s.system]), best_clean(series[KAM])
    if mine is not None and theirs is not None:
        parts.append(f"best clean {mine.achieved_cps / theirs.achieved_cps:.2f}x")
    return ", ".join(parts)


def summary(series: dict[str, list[Step]], half: dict[str, Step | None], top: int,
            kamailio_run: bool) -> list[str]:
    """The closing table: best clean rate and CPU/call of each system, p99 at half that rate,
    dce/Kamailio ratios, issue 13's targets."""
    lines = ["summary: best clean step of each system (achieved calls/s; '+': the ladder's top "
             "step, so the limit is higher), its CPU per call, p99 INVITE->200 at half that rate; "
             "dce/Kamailio ratios from this run; targets of issue 13"]
    lines.append(f"{'system':<11} {'best':>6} {'calls/s':>8} {'cpu/call':>9} {'p99 at half':>16} "
                 f"{'rate/kam':>9} {'cpu/kam':>8}  targets")
    kam_best = best_clean(series.get(KAM, []))
    for system, steps in series.items():
        best = best_clean(steps)
        if best is None:
            lines.append(f"{label(system):<11} {'-':>6}  no clean step")
            continue
        plus = "+" if best.rate == top and all(s.clean for s in steps) else ""
        h = half.get(system)
        p99 = ("-" if h is None or h.p99_us is None
               else f"{h.p99_us / 1000:.1f} ms @{h.rate}" + ("" if h.clean else " NO"))
        if system == KAM:
            rate_r = cpu_r = "1.00x"
        elif kam_best is not None:
            rate_r = f"{best.achieved_cps / kam_best.achieved_cps:.2f}x"
            cpu_r = f"{best.cpu_per_call_us / kam_best.cpu_per_call_us:.1f}x"
        else:
            rate_r, cpu_r = f"{best.achieved_cps / KAMAILIO_CPS:.2f}x*", "-"
        if system in TARGETS:
            cps_t, cpu_t = TARGETS[system]
            met = h is not None and h.clean and h.p99_us is not None and h.p99_us <= TARGET_P99_US
            targets = (f">= {cps_t:,} calls/s {'met' if best.achieved_cps >= cps_t else 'NOT met'}"
                       f"; <= {cpu_t} us/call "
                       f"{'met' if best.cpu_per_call_us <= cpu_t else 'NOT met'}"
                       f"; p99 <= {TARGET_P99_US // 1000} ms at half {'met' if met else 'NOT met'}")
        else:
            targets = "(reference)"
        lines.append(f"{label(system):<11} {best.rate:>5}{plus:1} {best.achieved_cps:>8.1f} "
                     f"{best.cpu_per_call_us:>6.0f} us {p99:>16} {rate_r:>9} {cpu_r:>8}  {targets}")
    if not kamailio_run:
        lines.append(f"* no Kamailio in this run: against peers-bench.md's {KAMAILIO_CPS:,} "
                     "calls/s (another day's machine)")
    for system, steps in series.items():
        best = best_clean(steps)
        if system != KAM and best is not None:
            lines.append(f"{label(system)} vs Sippy's {SIPPY_CPS} calls/s (peers-bench.md): "
                         f"{best.achieved_cps / SIPPY_CPS:.1f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=int, nargs="+", default=list(LADDER),
                   help="offered calls/s, climbed in order; each system stops at its first "
                        "step that is not clean")
    p.add_argument("--media", "--media-mode", dest="media", nargs="+", default=["relay"],
                   choices=("relay", "bypass"),
                   help="DCE_MEDIA_MODE of the switch, one or both: relay anchors RTP (4 sockets "
                        "per call), bypass is signalling only (what Kamailio does)")
    p.add_argument("--kamailio", action=argparse.BooleanOptionalAction, default=True,
                   help="run Kamailio (bench/kamailio-proxy.cfg) on the same ladder")
    p.add_argument("--kamailio-children", type=int, default=1,
                   help="Kamailio SIP workers; with 2, it reorders 180/200 (peers-bench.md)")
    p.add_argument("--half", action=argparse.BooleanOptionalAction, default=True,
                   help="run a step at half each system's best clean rate when the ladder has "
                        "none (the p99 target)")
    p.add_argument("--repeats", type=int, default=2,
                   help="run a step again at most this many times while the machine was busy")
    p.add_argument("--max-other", type=float, default=MAX_OTHER_PCT,
                   help="other processes' CPU (%% of one core, machine-wide) a quiet step allows")
    p.add_argument("--max-steal", type=float, default=MAX_STEAL_PCT,
                   help="hypervisor steal (%% of a core) a quiet step allows")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each step, wait at most this many s for a quiet machine (0: no)")
    p.add_argument("--min-calls", type=int, default=3000,
                   help="calls per step: max(MIN_CALLS, 10 x rate)")
    p.add_argument("--database-url", default=os.environ.get("DCE_BENCH_DATABASE_URL")
                   or os.environ.get("DCE_TEST_DATABASE_URL"),
                   help="PostgreSQL server to create a fresh database on (default: embedded)")
    p.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL")
    p.add_argument("--no-pcap", dest="pcap", action="store_false",
                   help="no capture of the caller leg (p50/p99 then only from SIPp, in ms)")
    p.add_argument("--log-level", default="warning", help="DCE_LOG_LEVEL of the switch")
    p.add_argument("--media-workers", type=int, default=0,
                   help="DCE_MEDIA_WORKERS of the relay switch: the workers run on SIPp's core "
                        "and their CPU counts in dce's CPU per call")
    p.add_argument("--rtp-ports", default="40000-59999", help="DCE_RTP_PORTS of the switch")
    p.add_argument("--out", type=Path, default=None, help="keep per-step files here")
    p.add_argument("--keep", action="store_true", help="keep the packet captures")
    args = p.parse_args(argv)
    if SIPP is None:
        print("bench_sip: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    if args.kamailio and KAMAILIO is None:
        print("bench_sip: kamailio not found (apt-get install kamailio, or --no-kamailio)",
              file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench_sip: needs 2 cores (system on core 1, SIPp on core 0)", file=sys.stderr)
        return 2
    # This script (sampler, machine windows) stays off the core the system under test has.
    os.sched_setaffinity(0, {int(PEER_CORE)})

    # `timeout` or a closed terminal: unwind, so that every step's `finally` stops its switch
    # and Kamailio (each in a session of its own, which these signals do not reach)
    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-bench-"))
    server = None if args.embedded else args.database_url
    systems = ([KAM] if args.kamailio else []) + list(dict.fromkeys(args.media))
    print(f"sip bench: {', '.join(label(s) for s in systems)}; system on core {SWITCH_CORE}, "
          f"SIPp uac+uas and this script on core {PEER_CORE}; database: "
          f"{'fresh database on ' + server.split('@')[-1] if server else 'embedded'}; "
          f"quiet: other <= {args.max_other:g}% of a core, steal <= {args.max_steal:g}%, "
          f"else up to {args.repeats} repeats; files in {out}", flush=True)
    if args.media_workers and "relay" in systems:
        print(f"dce relay: {args.media_workers} media worker processes (DCE_MEDIA_WORKERS) on "
              f"core {PEER_CORE}; CPU/call counts the switch and its workers", flush=True)
    print(HEADER, flush=True)
    series: dict[str, list[Step]] = {s: [] for s in systems}
    climbing = set(systems)

    def report(step: Step, note: str) -> None:
        print(step_line(step, note=note, kept=False), flush=True)

    for rate in args.rates:
        if not climbing:
            break
        kam_step: Step | None = None
        for system in systems:
            if system not in climbing:
                continue
            step = measured(system, rate, args, server, out, report)
            series[system].append(step)
            if system == KAM:
                kam_step = step
            print(step_line(step, ratio_text(step, kam_step, series)), flush=True)
            if not step.clean:
                climbing.discard(system)
    half: dict[str, Step | None] = {}
    for system in systems:
        best = best_clean(series[system])
        if best is None:
            half[system] = None
            continue
        rate = best.rate // 2
        done = [s for s in series[system] if s.rate == rate]
        if done:
            half[system] = done[0]
        elif args.half and rate >= 1:
            h = measured(system, rate, args, server, out, report)
            half[system] = h
            print(step_line(h, note="half the best clean rate"), flush=True)
        else:
            half[system] = None
    print()
    for line in summary(series, half, max(args.rates), args.kamailio):
        print(line)
    (out / "summary.json").write_text(json.dumps(
        {"steps": {s: [asdict(x) for x in steps] for s, steps in series.items()},
         "best": {s: (asdict(b) if (b := best_clean(steps)) else None)
                  for s, steps in series.items()},
         "half": {s: (asdict(h) if h else None) for s, h in half.items()}},
        indent=2, default=str))
    return 0 if all(best_clean(steps) for steps in series.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
