#!/usr/bin/env python3
"""Overload benchmark: goodput, setup latency and recovery at 1x, 1.5x, 2x and 3x the clean rate.

Method (same as bench_sip.py: the switch pinned to core 1, SIPp uac and uas on core 0, a fresh
`dce run` and database per step, 0-hold calls from sipp_scenarios/uac.xml to uas.xml): for
each multiple M of the clean rate C (--clean-rate, measured by bench_sip.py), a SIPp uac
offers M x C calls/s for --seconds; when it stops sending, a second uac offers C/2 calls/s for
10 s (the load drops). Per step it prints:

* goodput: calls that completed (the caller's SuccessfulCall) per second of the overload, and
  as a share of the clean rate (target at 2x: >= 90 %);
* shed: calls the switch refused with 503 (overload control), and failed: calls that failed
  otherwise (timeouts, retransmissions that gave up);
* INVITE->200 p50 and p99 of the completed calls, from SIPp's RTT trace, ms (target at 2x:
  p99 <= 200 ms);
* recovery: seconds from the drop until the half-rate caller's calls all succeed again, second
  after second (target <= 5 s);
* RSS before the load, at its peak, and --settle seconds after it (target: within 20 % of
  before), live calls then (target 0), and CDRs: how many, and how many claim a connected call
  lasting more than 5 s or billable (0-hold calls: target 0);
* other: core 1 busy with anything but the switch (above ~10 % the figures are not the
  switch's own).

    .venv/bin/python bench/bench_overload.py --clean-rate 1000
    .venv/bin/python bench/bench_overload.py --clean-rate 1000 --multiples 2 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sip import (  # noqa: E402
    PEER_CORE,
    SWITCH_CORE,
    Sampler,
    _pids_of_data_dir,
    core_busy_seconds,
    counts,
    last_stats,
    percentile,
    sipp_rtt,
)

from tests.integration import dce_process  # noqa: E402
from tests.integration.db import create_database, drop_database, fetch  # noqa: E402
from tests.integration.dce_process import Switch  # noqa: E402
from tests.integration.sipp import CALLED, SCENARIOS, SIPP  # noqa: E402
from tests.ports import free_port, wait_bound  # noqa: E402

TARGET_GOODPUT = 0.90  # of the clean rate, at 2x
TARGET_P99_MS = 200.0
TARGET_RECOVERY_S = 5.0
TARGET_RSS = 1.20


@dataclass
class Step:
    multiple: float
    offered: int
    completed: int = 0
    goodput: float = 0.0
    shed: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    recovery_s: float | None = None
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    live_after: int | None = None
    cdrs: int = 0
    ghosts: int = 0
    ghost_billable: int = 0
    cpu_pct: float = 0.0
    other_pct: float = 0.0
    notes: list[str] = field(default_factory=list)


def period_rows(path: Path) -> list[dict[str, str]]:
    """Every row of a SIPp -trace_stat CSV (one per -fd period)."""
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < 2:
        return []
    names = lines[0].rstrip(";").split(";")
    return [dict(zip(names, ln.rstrip(";").split(";"), strict=False)) for ln in lines[1:]]


def _n(row: dict[str, str], key: str) -> int:
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def recovery_seconds(rows: list[dict[str, str]]) -> float | None:
    """Seconds into the half-rate run until every later second is free of failed calls."""
    last_bad = -1
    seen = False
    for i, row in enumerate(rows):
        if _n(row, "SuccessfulCall(P)") or _n(row, "FailedCall(P)"):
            seen = True
        if _n(row, "FailedCall(P)") or _n(row, "Retransmissions(P)"):
            last_bad = i
    if not seen:
        return None
    return float(last_bad + 1)


def sipp_uac(out: Path, name: str, target: str, rate: int, calls: int, seconds: float,
             port: int) -> subprocess.Popen[bytes]:
    sipp = SIPP or "sipp"
    cmd = ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uac.xml"), target,
           "-s", CALLED, "-i", "127.0.0.1", "-p", str(port), "-r", str(rate), "-m", str(calls),
           "-d", "0", "-l", "100000", "-nostdin", "-timeout", f"{int(seconds + 40)}s",
           "-cid_str", f"{name}-%u", "-trace_stat", "-stf", f"{name}_stat.csv", "-fd", "1",
           "-trace_rtt", "-rtt_freq", "1", "-trace_err", "-error_file", f"{name}_err.log",
           "-cp", str(free_port()), "-max_recv_loops", "100000", "-max_sched_loops", "100000"]
    (out / name).mkdir(exist_ok=True)
    log = (out / name / "out").open("wb")
    return subprocess.Popen(cmd, cwd=out / name, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def run_step(multiple: float, args: argparse.Namespace, server: str | None, out: Path) -> Step:
    clean = args.clean_rate
    rate = int(clean * multiple)
    calls = int(rate * args.seconds)
    step = Step(multiple=multiple, offered=rate)
    out.mkdir(parents=True, exist_ok=True)
    uas_port = free_port()
    config = {
        "trunks": [dce_process.ip_trunk("bench")],
        "campaigns": [dce_process.campaign("bench", ["+" + CALLED])],
        "buyers": [dce_process.buyer("bench", [f"sip:buyer@127.0.0.1:{uas_port}"])],
    }
    db_url = create_database(server, prefix="dce_overload") if server else None
    data_dir = Path(tempfile.mkdtemp(prefix=f"dce-overload-{multiple}-"))
    sw = Switch(out, config, database_url=db_url, data_dir=data_dir, name="dce",
                env={"DCE_LOG_LEVEL": "warning", "DCE_MAX_CALLS": "100000",
                     "DCE_RING_TIMEOUT": "30s", "DCE_MEDIA_MODE": args.media_mode,
                     "DCE_RTP_PORTS": "40000-59999", **dict(args.env)})
    uas = None
    sipp = SIPP or "sipp"
    try:
        sw.start(timeout=90, taskset=SWITCH_CORE)
        if db_url is None:
            for pid in _pids_of_data_dir(data_dir):
                subprocess.run(["taskset", "-pc", PEER_CORE, str(pid)], capture_output=True,
                               check=False)
        half = max(1, clean // 2)
        with (out / "uas.out").open("wb") as uas_out:
            uas = subprocess.Popen(
                ["taskset", "-c", PEER_CORE, sipp, "-sf", str(SCENARIOS / "uas.xml"),
                 "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin",
                 "-timeout", f"{int(args.seconds + 120)}s", "-trace_stat", "-stf",
                 "uas_stat.csv", "-fd", "1", "-cp", str(free_port()),
                 "-max_recv_loops", "100000", "-max_sched_loops", "100000"],
                cwd=out, stdout=uas_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_bound(uas_port)
        time.sleep(1.0)
        step.rss_before_mib = sw.rss_kib() / 1024
        sampler = Sampler(sw)
        cpu0, core0, t0 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE)), time.monotonic()
        sampler.start()
        over = sipp_uac(out, "over", sw.sip_addr, rate, calls, args.seconds, free_port())
        # The offered load stops after --seconds; SIPp keeps waiting for calls in flight.
        time.sleep(args.seconds)
        drop = sipp_uac(out, "half", sw.sip_addr, half, int(half * 10), 10, free_port())
        for proc, limit in ((drop, 60), (over, 60)):
            try:
                proc.wait(limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                step.notes.append("a uac did not finish in time")
        elapsed = time.monotonic() - t0
        cpu1, core1 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE))
        sampler.stop_event.set()
        sampler.join(2)
        step.cpu_pct = 100 * (cpu1 - cpu0) / elapsed
        step.other_pct = max(0.0, 100 * ((core1 - core0) - (cpu1 - cpu0)) / elapsed)
        step.rss_peak_mib = sampler.peak_rss_kib / 1024
        over_counts = counts(last_stats(out / "over" / "over_stat.csv"))
        step.completed = over_counts["successful"]
        step.failed = over_counts["failed"]
        step.goodput = step.completed / args.seconds
        rtt = sipp_rtt(out / "over")
        if rtt:
            step.p50_ms, step.p99_ms = percentile(rtt, 0.5), percentile(rtt, 0.99)
        errors = out / "over" / "over_err.log"
        if errors.exists():
            text = errors.read_text(errors="replace")
            step.shed = len(set(re.findall(
                r"Call-Id '([^']+)': while expecting '[^']*' \(index \d+\), "
                r"received 'SIP/2.0 503", text)))
        step.failed -= step.shed
        step.recovery_s = recovery_seconds(period_rows(out / "half" / "half_stat.csv"))
        time.sleep(args.settle)
        step.rss_after_mib = sw.rss_kib() / 1024
        step.live_after = sw.healthz().get("live_calls")
        rows = fetch(sw.dsn, "SELECT disposition, duration_ms, billable FROM cdrs "
                             "WHERE a_call_id LIKE 'over-%'")
        step.cdrs = len(rows)
        ghosts = [r for r in rows if r["disposition"] == "answered" and r["duration_ms"] > 5000]
        step.ghosts = len(ghosts)
        step.ghost_billable = len([r for r in ghosts if r["billable"]])
        if sw.stop() != 0:
            step.notes.append("switch did not exit 0 on SIGTERM")
    except Exception as exc:
        step.notes.append(f"{type(exc).__name__}: {exc}")
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
        sw.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
        if server and db_url:
            drop_database(server, db_url)
    return step


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clean-rate", type=int, default=1000,
                   help="the best clean calls/s of bench_sip.py in the same media mode")
    p.add_argument("--multiples", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long each overload lasts")
    p.add_argument("--settle", type=float, default=60.0,
                   help="seconds after the load before RSS, live calls and CDRs are read")
    p.add_argument("--media-mode", default="bypass", choices=("relay", "bypass"))
    p.add_argument("--database-url", default=os.environ.get("DCE_BENCH_DATABASE_URL")
                   or os.environ.get("DCE_TEST_DATABASE_URL"))
    p.add_argument("--env", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="extra environment for the switch, e.g. --env DCE_OVERLOAD_CPU 0.9")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if SIPP is None:
        print("bench_overload: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-overload-"))
    print(f"dce overload bench: clean rate {args.clean_rate}/s ({args.media_mode}); switch on "
          f"core {SWITCH_CORE}, SIPp on core {PEER_CORE}; {args.seconds:.0f} s per step; "
          f"files in {out}", flush=True)
    print(f"{'x':>4} {'offered':>7} {'done':>7} {'goodput':>8} {'%clean':>6} {'shed':>6} "
          f"{'failed':>6} {'p50ms':>6} {'p99ms':>6} {'recov':>5} {'RSS MiB b/peak/after':>21} "
          f"{'live':>4} {'cdrs':>6} {'ghost':>5} {'$':>3} {'cpu':>4} {'other':>5}", flush=True)
    steps = []
    for m in args.multiples:
        s = run_step(m, args, args.database_url, out / f"x{m}")
        steps.append(s)
        print(f"{s.multiple:>4.1f} {s.offered:>7} {s.completed:>7} {s.goodput:>8.0f} "
              f"{100 * s.goodput / args.clean_rate:>5.0f}% {s.shed:>6} {s.failed:>6} "
              f"{fmt(s.p50_ms, '>6.0f')} {fmt(s.p99_ms, '>6.0f')} {fmt(s.recovery_s, '>5.0f')} "
              f"{s.rss_before_mib:>6.0f}/{s.rss_peak_mib:>6.0f}/{s.rss_after_mib:>6.0f} "
              f"{fmt(s.live_after, '>4')} {s.cdrs:>6} {s.ghosts:>5} {s.ghost_billable:>3} "
              f"{s.cpu_pct:>3.0f}% {s.other_pct:>4.0f}%"
              + ("   " + "; ".join(s.notes) if s.notes else ""), flush=True)
    print()
    for s in steps:
        if s.multiple == 2.0:
            ok_g = s.goodput >= TARGET_GOODPUT * args.clean_rate
            ok_p = s.p99_ms is not None and s.p99_ms <= TARGET_P99_MS
            print(f"2x: goodput {s.goodput:.0f}/s = {100 * s.goodput / args.clean_rate:.0f}% of "
                  f"clean (target >= {100 * TARGET_GOODPUT:.0f}%: {'met' if ok_g else 'NOT met'})"
                  f"; p99 setup {fmt(s.p99_ms, '.0f')} ms (target <= {TARGET_P99_MS:.0f}: "
                  f"{'met' if ok_p else 'NOT met'})")
    for s in steps:
        rec = s.recovery_s is not None and s.recovery_s <= TARGET_RECOVERY_S
        rss = s.rss_after_mib <= TARGET_RSS * s.rss_before_mib
        print(f"{s.multiple:.1f}x: recovery {fmt(s.recovery_s, '.0f')} s "
              f"({'met' if rec else 'NOT met'}); RSS after {args.settle:.0f} s "
              f"{s.rss_after_mib:.0f} vs {s.rss_before_mib:.0f} MiB "
              f"({'met' if rss else 'NOT met'}); live calls {s.live_after}; "
              f"ghost connected calls {s.ghosts} (billable {s.ghost_billable})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
