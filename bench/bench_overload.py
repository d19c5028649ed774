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
* gate: the load gate's mean shed share over the overload, and delay: its queue delay
  (dce_load_queue_delay_seconds, an upper bound) p50/max, ms, from /metrics every 0.5 s
  (the trace is in gate.csv of the step);
* µs/in: the switch's CPU over the step per INVITE offered (a call, or a refusal: with
  ``--env DCE_OVERLOAD_CPU 0.01`` nearly every INVITE is refused, so this is a 503's cost);
* other: core 1 busy with anything but the switch (above ~10 % the figures are not the
  switch's own), and machine: what processes not the bench's (nor its database's backends)
  used of the whole machine while the load ran, and the hypervisor's steal per core
  (bench/machine.py). A step whose machine window was disturbed is run again, up to
  --repeat times, after waiting (bounded) for a quiet machine; every attempt is printed.

--shed-cost measures the CPU of a stateless 503 to a new INVITE and of the ACK that follows
it, against a whole call, in the sans-IO core alone (as bench_core.py) and through the pump
(as bench_pipeline.py: routing, journal, CDR, logs, metrics, no kernel): shedding works only
while refusing a call costs far less than carrying one. A machine window is printed with it.

    .venv/bin/python bench/bench_overload.py --clean-rate 1000
    .venv/bin/python bench/bench_overload.py --clean-rate 1000 --multiples 2 --seconds 20
    .venv/bin/python bench/bench_overload.py --shed-cost
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import CALLER, Admit, invite, one_round  # noqa: E402
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
from machine import Window, pids_matching, wait_quiet  # noqa: E402

from switch.context import CoreConfig  # noqa: E402
from switch.core import SwitchCore  # noqa: E402
from switch.message import SipResponse, parse_message  # noqa: E402
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
    us_per_offer: float = 0.0  # the switch's CPU over every INVITE offered (both uacs)
    other_pct: float = 0.0
    machine: str = ""  # other processes and steal while the load ran (bench/machine.py)
    shed_mean: float | None = None  # the gate's shed share, mean over the overload
    delay_p50_ms: float | None = None  # the gate's queue delay, over the overload
    delay_max_ms: float | None = None
    disturbed: list[str] = field(default_factory=list)
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


class GateTrace(threading.Thread):
    """The load gate's gauges from /metrics every half second: what it saw and did."""

    def __init__(self, sw: Switch, path: Path) -> None:
        super().__init__(daemon=True)
        self.sw, self.path = sw, path
        self.rows: list[tuple[float, float, float, float]] = []  # t, shed, delay s, cpu
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(0.5):
            try:
                text = self.sw.metrics()
            except Exception:  # a busy switch may not answer in time
                continue
            got = dict(re.findall(r"^(dce_load_\w+) (\S+)$", text, re.M))
            self.rows.append((time.monotonic() - t0, float(got.get("dce_load_shed_share", 0)),
                              float(got.get("dce_load_queue_delay_seconds", 0)),
                              float(got.get("dce_load_cpu", 0))))
        self.path.write_text("t;shed;delay_s;cpu\n" + "".join(
            f"{t:.1f};{s:.3f};{d:.4f};{c:.3f}\n" for t, s, d, c in self.rows))

    def summary(self, until: float) -> tuple[float, float, float] | None:
        rows = [r for r in self.rows if r[0] <= until]
        if not rows:
            return None
        delays = sorted(r[2] * 1000 for r in rows)
        return (statistics.fmean(r[1] for r in rows), percentile(delays, 0.5), delays[-1])


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
    for stale in (out / name).glob("*_rtt.csv"):  # SIPp names it by pid: an earlier run's
        stale.unlink()  # file in a reused --out would be read with this one's
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
        db_name = db_url.rsplit("/", 1)[-1].split("?")[0] if db_url else ""
        extra = (lambda: pids_matching(db_name)) if db_name else None
        # Bounded: a machine that never quiets is measured anyway, and the step says so.
        wait_quiet(timeout=args.quiet_wait, extra=extra)
        step.rss_before_mib = sw.rss_kib() / 1024
        window = Window(extra)
        sampler = Sampler(sw)
        cpu0, core0, t0 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE)), time.monotonic()
        sampler.start()
        trace = GateTrace(sw, out / "gate.csv")
        trace.start()
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
        load = window.stop()
        step.machine = load.brief()
        step.disturbed = load.disturbed()
        cpu1, core1 = sw.cpu_seconds(), core_busy_seconds(int(SWITCH_CORE))
        sampler.stop_event.set()
        sampler.join(2)
        trace.stop_event.set()
        trace.join(3)
        summary = trace.summary(args.seconds)
        if summary is not None:
            step.shed_mean, step.delay_p50_ms, step.delay_max_ms = summary
        step.cpu_pct = 100 * (cpu1 - cpu0) / elapsed
        half_calls = counts(last_stats(out / "half" / "half_stat.csv"))
        offered = calls + half_calls["successful"] + half_calls["failed"]
        step.us_per_offer = 1e6 * (cpu1 - cpu0) / max(1, offered)
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


def shed_round(n: int) -> tuple[float, float]:
    """µs of CPU per stateless 503 (INVITE in, 503 out) and per ACK of one, core alone."""
    core = SwitchCore(CoreConfig(host="203.0.113.1", port=5060), Admit(), random.Random(1))
    core.set_shedding(1.0)
    invites = [invite(i) for i in range(n)]
    answers: list[bytes] = []
    t0 = time.process_time()
    for i, data in enumerate(invites):
        core.receive_datagram(data, CALLER, i * 1e-4)
        answers.extend(d for d, _ in core.datagrams_to_send())
    t1 = time.process_time()
    assert core.stats["calls_shed"] == n and len(answers) == n
    acks = []
    for data in answers:
        resp = parse_message(data)
        assert isinstance(resp, SipResponse) and resp.status == 503
        via = resp.headers.get("via") or ""
        acks.append((
            f"ACK sip:18005550100@203.0.113.1:5060 SIP/2.0\r\nVia: {via.split(';rport')[0]}"
            f";rport\r\nFrom: {resp.headers.get('from')}\r\nTo: {resp.headers.get('to')}\r\n"
            f"Call-ID: {resp.call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode())
    t2 = time.process_time()
    for i, data in enumerate(acks):
        core.receive_datagram(data, CALLER, 3.0 + i * 1e-4)
        assert not core.datagrams_to_send()
    t3 = time.process_time()
    assert core.live_calls == 0 and len(core.layer) == 0  # nothing kept
    return (t1 - t0) / n * 1e6, (t3 - t2) / n * 1e6


def ack_for(data: bytes) -> bytes:
    """The caller's ACK to a 503 (RFC 3261 §17.1.1.3: the INVITE's top Via, the 503's To)."""
    resp = parse_message(data)
    assert isinstance(resp, SipResponse) and resp.status == 503, data
    via = (resp.headers.get("via") or "").split(";rport")[0]
    return (f"ACK sip:18005550100@127.0.0.1:5060 SIP/2.0\r\nVia: {via};rport\r\n"
            f"From: {resp.headers.get('from')}\r\nTo: {resp.headers.get('to')}\r\n"
            f"Call-ID: {resp.call_id}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


async def pipeline_round(n: int) -> tuple[float, float, float]:
    """µs of CPU per 503, per ACK of one and per call through ``SipPump.feed`` and
    ``transmit``, the whole application without the kernel (bench_pipeline.py's rig)."""
    import bench_pipeline as bp

    rig = bp.Rig("bypass", True)
    rig.switch.core.set_shedding(1.0)
    invites = [bp.invite(i) for i in range(n)]
    cpu0 = rig.cpu
    answers = [rig.feed(raw, bp.CALLER) for raw in invites]
    refuse = (rig.cpu - cpu0) / n * 1e6
    acks = [ack_for(out[0][0]) for out in answers]
    cpu0 = rig.cpu
    for raw in acks:
        assert not rig.feed(raw, bp.CALLER)
    ack = (rig.cpu - cpu0) / n * 1e6
    rig.switch.core.set_shedding(0.0)
    rig.close()
    return refuse, ack, await bp.one_round(n // 2, "bypass", None)


def shed_cost(rounds: int, calls: int) -> int:
    import asyncio

    def show(where: str, refuse: list[float], ack: list[float], call: list[float]) -> None:
        both = [r + a for r, a in zip(refuse, ack, strict=True)]
        print(f"stateless 503, {where} ({rounds} rounds, best / median µs of CPU): "
              f"503 {min(refuse):.0f} / {statistics.median(refuse):.0f}, "
              f"its ACK {min(ack):.0f} / {statistics.median(ack):.0f}, "
              f"both {min(both):.0f} / {statistics.median(both):.0f}; "
              f"a whole call {min(call):.0f} / {statistics.median(call):.0f}; "
              f"a refusal costs {100 * min(both) / min(call):.0f} % of a call (best vs best)",
              flush=True)

    refuse, ack, call = [], [], []
    for _ in range(rounds):
        r, a = shed_round(calls * 4)
        refuse.append(r)
        ack.append(a)
        call.append(one_round(calls, 1000.0, None))
    show("core alone", refuse, ack, call)
    refuse, ack, call = [], [], []
    for _ in range(rounds):
        r, a, c = asyncio.run(pipeline_round(calls * 2))
        refuse.append(r)
        ack.append(a)
        call.append(c)
    show("whole application without the kernel", refuse, ack, call)
    return 0


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
    p.add_argument("--repeat", type=int, default=1,
                   help="run a step whose machine window was disturbed again, this many times")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds at most to wait for a quiet machine before each step")
    p.add_argument("--shed-cost", action="store_true",
                   help="only measure the CPU of a stateless 503 against a call (core alone)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.shed_cost:
        window = Window()
        shed_cost(5, 2000)
        load = window.stop()
        print(f"machine: {load.brief()}"
              + ("   DISTURBED: " + "; ".join(load.disturbed()) if load.disturbed() else ""))
        return 0
    if SIPP is None:
        print("bench_overload: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-overload-"))
    print(f"dce overload bench: clean rate {args.clean_rate}/s ({args.media_mode}); switch on "
          f"core {SWITCH_CORE}, SIPp on core {PEER_CORE}; {args.seconds:.0f} s per step; "
          f"files in {out}", flush=True)
    print(f"{'x':>4} {'offered':>7} {'done':>7} {'goodput':>8} {'%clean':>6} {'shed':>6} "
          f"{'failed':>6} {'p50ms':>6} {'p99ms':>6} {'recov':>5} {'RSS MiB b/peak/after':>21} "
          f"{'live':>4} {'cdrs':>6} {'ghost':>5} {'$':>3} {'cpu':>4} {'µs/in':>5} {'other':>5} {'gate':>6} {'delay':>10} machine",
          flush=True)
    steps = []
    for m in args.multiples:
        for attempt in range(args.repeat + 1):
            s = run_step(m, args, args.database_url, out / f"x{m}-{attempt}")
            notes = s.notes + (["DISTURBED: " + "; ".join(s.disturbed)] if s.disturbed else [])
            print(f"{s.multiple:>4.1f} {s.offered:>7} {s.completed:>7} {s.goodput:>8.0f} "
                  f"{100 * s.goodput / args.clean_rate:>5.0f}% {s.shed:>6} {s.failed:>6} "
                  f"{fmt(s.p50_ms, '>6.0f')} {fmt(s.p99_ms, '>6.0f')} "
                  f"{fmt(s.recovery_s, '>5.0f')} "
                  f"{s.rss_before_mib:>6.0f}/{s.rss_peak_mib:>6.0f}/{s.rss_after_mib:>6.0f} "
                  f"{fmt(s.live_after, '>4')} {s.cdrs:>6} {s.ghosts:>5} {s.ghost_billable:>3} "
                  f"{s.cpu_pct:>3.0f}% {s.us_per_offer:>5.0f} {s.other_pct:>4.0f}% "
                  f"{fmt(None if s.shed_mean is None else 100 * s.shed_mean, '>5.0f')}% "
                  f"{fmt(s.delay_p50_ms, '>4.0f')}/{fmt(s.delay_max_ms, '<5.0f')} {s.machine}"
                  + ("   " + "; ".join(notes) if notes else ""), flush=True)
            if not s.disturbed:
                break
        steps.append(s)  # the last attempt: quiet, or the last of the disturbed ones
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
