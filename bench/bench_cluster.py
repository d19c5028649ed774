#!/usr/bin/env python3
"""Cluster benchmark: aggregate calls/s through Kamailio's dispatcher with 1 and with 2
``dce run`` instances on this machine, relay and bypass (issue 15 "Benchmark").

Method: SIPp uac -> Kamailio 5.6 (the shipped config/kamailio/kamailio.cfg, 1 worker) ->
N switches sharing one fresh PostgreSQL database -> SIPp uas. For each configuration (N
instances, media mode) the offered rate climbs a ladder; each step starts fresh switches on
a fresh database and Kamailio, and carries ``max(MIN_CALLS, SECONDS x rate)`` calls with no
hold (``-r R -d 0``) from sipp_scenarios/uac.xml to sipp_scenarios/uas.xml. A step is
*clean* as in bench_sip.py: every call successful on both SIPp sides, no retransmission, one
CDR per call, every switch exits 0 on SIGTERM. The ladder of a configuration stops at its
first step that is not clean.

Nothing is pinned: the switches, Kamailio and both SIPp processes share the machine's cores,
so with 2 instances the switches compete with the load generator (on a 2-core machine the
ratio says what this box gains, not what a bigger one would). What carries over to another
machine is the CPU each part spends per call (utime+stime from /proc over the step, divided
by the calls): the switches (all instances together) and Kamailio (all its processes), both
net of what they spend with no calls at all (measured for ``--idle`` seconds before the
step, and shown as "idle"), SIPp (both sides), and PostgreSQL+Redis (every postgres and
redis-server process on the machine, other sessions' included, so an upper bound). "other" is what the machine's cores spent on
anything but the switches, Kamailio and SIPp during the step, in % of one core: PostgreSQL,
Redis and other people's processes. Above some 20 % the figures are not this setup's alone.

At the end, per configuration: the best clean rate, and the 2-instance / 1-instance ratio.

    .venv/bin/python bench/bench_cluster.py                       # all four, ~6-10 min
    .venv/bin/python bench/bench_cluster.py --configs 1:bypass 2:bypass --rates 200 400
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sip import counts, last_stats, percentile, sipp_rtt  # noqa: E402
from machine import proc_cpu  # noqa: E402

from tests.integration import dce_process  # noqa: E402
from tests.integration.db import count_cdrs, create_database, drop_database  # noqa: E402
from tests.integration.dce_process import Switch  # noqa: E402
from tests.integration.kamailio import KAMAILIO, Kamailio  # noqa: E402
from tests.integration.sipp import CALLED, SCENARIOS, SIPP  # noqa: E402
from tests.ports import free_port, wait_bound  # noqa: E402

LADDER = (100, 200, 300, 400, 500, 600, 700, 800, 1000, 1200)
PROXY_IP = "127.0.0.2"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Step:
    instances: int
    mode: str
    rate: int
    calls: int
    clean: bool = False
    why: list[str] = field(default_factory=list)
    achieved_cps: float = 0.0
    per_instance: list[int] = field(default_factory=list)  # INVITEs each instance took
    sipp_p50_ms: float | None = None
    sipp_p99_ms: float | None = None
    switch_us_per_call: float = 0.0  # all instances together, net of their idle CPU
    kamailio_us_per_call: float = 0.0  # net of its idle CPU (probes, timers)
    switch_idle_pct: float = 0.0  # % of one core the switches take with no calls
    kamailio_idle_pct: float = 0.0
    sipp_us_per_call: float = 0.0  # uac + uas
    db_us_per_call: float = 0.0  # every postgres and redis-server process (upper bound)
    other_pct: float = 0.0  # % of one core spent on anything but switches, Kamailio, SIPp
    uac: dict[str, int] = field(default_factory=dict)
    uas: dict[str, int] = field(default_factory=dict)
    cdrs: int = 0
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc


def _stat_fields(pid: str) -> tuple[str, int] | None:
    """(command name, process group) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return name, int(fields[2])


def group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (Kamailio and its
    children, started in a session of their own)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat_fields(entry.name)
            if info is not None and info[1] == pgid:
                total += proc_cpu(int(entry.name))
    return total


def named_cpu(names: tuple[str, ...]) -> dict[int, float]:
    """pid -> CPU seconds of every process whose command is one of ``names``."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat_fields(entry.name)
            if info is not None and (info[0] in names or info[0].startswith("postgres")):
                out[int(entry.name)] = proc_cpu(int(entry.name))
    return out


def _children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """Busy seconds of all cores together (all but idle and iowait), from /proc/stat."""
    line = Path("/proc/stat").read_text().splitlines()[0]
    v = [int(x) for x in line.split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK


# ---------------------------------------------------------------------------------------------
# one step


def metric(sw: Switch, name: str) -> int:
    for line in sw.metrics().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return 0


def run_step(instances: int, mode: str, rate: int, args: argparse.Namespace,
             db_url: str, out: Path) -> Step:
    calls = max(args.min_calls, args.seconds * rate)
    step = Step(instances=instances, mode=mode, rate=rate, calls=calls)
    out.mkdir(parents=True, exist_ok=True)
    uas_port, uac_port = free_port(), free_port()
    config = {
        "trunks": [dce_process.ip_trunk("bench")],
        "campaigns": [dce_process.campaign("bench", ["+" + CALLED])],
        "buyers": [dce_process.buyer("bench", [f"sip:buyer@127.0.0.1:{uas_port}"])],
    }
    secret = secrets.token_hex(32)  # instances sharing a database share the erasure secret
    switches: list[Switch] = []
    data_dirs: list[Path] = []
    proxy: Kamailio | None = None
    uas: subprocess.Popen[bytes] | None = None
    tmo = int(calls / rate + 30)
    sipp = SIPP or "sipp"
    try:
        for i in range(instances):
            data_dir = Path(tempfile.mkdtemp(prefix=f"dce-bench-cluster-{i}-"))
            data_dirs.append(data_dir)
            lo = 40000 + i * 10000
            sw = Switch(out / f"dce{i}", config, database_url=db_url, data_dir=data_dir,
                        name=f"dce{i}",
                        env={"DCE_LOG_LEVEL": args.log_level, "DCE_MAX_CALLS": "100000",
                             "DCE_RING_TIMEOUT": "30s", "DCE_MEDIA_MODE": mode,
                             "DCE_RTP_PORTS": f"{lo}-{lo + 9999}",
                             "DCE_TRUSTED_PROXIES": PROXY_IP, "DCE_ERASURE_SECRET": secret})
            sw.start(timeout=90)
            switches.append(sw)
        proxy = Kamailio(out / "kamailio", [sw.sip_addr for sw in switches], host=PROXY_IP,
                         children=args.kamailio_children, shm_mb=512)
        proxy.start()
        proxy.wait_states({sw.sip_addr: "A" for sw in switches})
        with (out / "uas.out").open("wb") as uas_out:
            uas = subprocess.Popen(
                [sipp, "-sf", str(SCENARIOS / "uas.xml"), "-i", "127.0.0.1", "-p",
                 str(uas_port), "-nostdin", "-m", str(calls), "-timeout", f"{tmo + 30}s",
                 "-trace_stat", "-stf", "uas_stat.csv", "-fd", "1", "-trace_err",
                 "-error_file", "uas_err.log", "-cp", str(free_port())],
                cwd=out, stdout=uas_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_bound(uas_port)
        assert proxy.proc is not None
        # What the switches and Kamailio spend with no calls (timers, probes, the load
        # watch): taken off the step's CPU, so "per call" is what one more call costs.
        idle0 = sum(sw.cpu_seconds() for sw in switches), group_cpu(proxy.proc.pid)
        time.sleep(args.idle)
        idle1 = sum(sw.cpu_seconds() for sw in switches), group_cpu(proxy.proc.pid)
        sw_idle = (idle1[0] - idle0[0]) / args.idle
        kam_idle = (idle1[1] - idle0[1]) / args.idle
        step.switch_idle_pct, step.kamailio_idle_pct = 100 * sw_idle, 100 * kam_idle
        before_calls = [metric(sw, "dce_calls_total") for sw in switches]
        sw_cpu0 = sum(sw.cpu_seconds() for sw in switches)
        kam0 = group_cpu(proxy.proc.pid)
        children0 = _children_cpu()
        db0 = named_cpu(("redis-server",))
        busy0 = machine_busy()
        t0 = time.monotonic()
        uac_cmd = [sipp, "-sf", str(SCENARIOS / "uac.xml"), proxy.addr, "-s", CALLED,
                   "-i", "127.0.0.1", "-p", str(uac_port), "-r", str(rate), "-m", str(calls),
                   "-d", "0", "-l", "30000", "-nostdin", "-timeout", f"{tmo}s",
                   "-timeout_error", "-cid_str", f"bench-c{instances}-r{rate}-%u",
                   "-trace_stat", "-stf", "uac_stat.csv", "-fd", "1", "-trace_rtt",
                   "-rtt_freq", "1", "-trace_err", "-error_file", "uac_err.log",
                   "-cp", str(free_port())]
        uas_cpu0 = proc_cpu(uas.pid)
        with (out / "uac.out").open("wb") as uac_out:
            try:
                uac_rc = subprocess.run(uac_cmd, cwd=out, stdout=uac_out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        timeout=tmo + 15).returncode
            except subprocess.TimeoutExpired:
                uac_rc = -9
        step.elapsed_s = time.monotonic() - t0
        uac_cpu = _children_cpu() - children0  # the only child reaped meanwhile
        sw_cpu1 = sum(sw.cpu_seconds() for sw in switches)
        kam1 = group_cpu(proxy.proc.pid)
        uas_cpu1 = proc_cpu(uas.pid)
        db1 = named_cpu(("redis-server",))
        busy1 = machine_busy()
        step.per_instance = [metric(sw, "dce_calls_total") - b
                             for sw, b in zip(switches, before_calls, strict=True)]
        try:
            uas_rc: int | None = uas.wait(10)
        except subprocess.TimeoutExpired:
            uas_rc = None
            uas.kill()
            uas.wait(5)

        step.uac = counts(last_stats(out / "uac_stat.csv"))
        step.uas = counts(last_stats(out / "uas_stat.csv"))
        try:
            step.achieved_cps = float(last_stats(out / "uac_stat.csv").get("CallRate(C)", "0"))
        except ValueError:
            step.achieved_cps = 0.0
        rtt = sipp_rtt(out)
        if rtt:
            step.sipp_p50_ms, step.sipp_p99_ms = percentile(rtt, 0.5), percentile(rtt, 0.99)
        sw_cpu = sw_cpu1 - sw_cpu0
        kam_cpu = kam1 - kam0
        net_sw = max(0.0, sw_cpu - sw_idle * step.elapsed_s)
        net_kam = max(0.0, kam_cpu - kam_idle * step.elapsed_s)
        sipp_cpu = (uas_cpu1 - uas_cpu0) + uac_cpu
        db_cpu = sum(c - db0.get(pid, 0.0) for pid, c in db1.items())
        step.switch_us_per_call = net_sw / calls * 1e6
        step.kamailio_us_per_call = net_kam / calls * 1e6
        step.sipp_us_per_call = sipp_cpu / calls * 1e6
        step.db_us_per_call = db_cpu / calls * 1e6
        ours = sw_cpu + kam_cpu + sipp_cpu
        step.other_pct = max(0.0, 100 * ((busy1 - busy0) - ours) / max(step.elapsed_s, 1e-9))

        rcs = [sw.stop() for sw in switches]
        step.cdrs = count_cdrs(db_url, f"bench-c{instances}-r{rate}-%")
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
        if any(rc != 0 for rc in rcs):
            why.append(f"switch exit codes {rcs} on SIGTERM")
        step.clean = not why
    except Exception as exc:
        step.why.append(f"{type(exc).__name__}: {exc}")
    finally:
        if uas is not None and uas.poll() is None:
            uas.kill()
        if proxy is not None:
            proxy.stop()
        for sw in switches:
            sw.kill()
        for d in data_dirs:
            shutil.rmtree(d, ignore_errors=True)
    return step


# ---------------------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = (f"{'inst':>4} {'media':>6} {'rate':>5} {'clean':>5} {'calls/s':>8} {'split':>11} "
          f"{'sipp ms p50/p99':>15} {'dce us':>7} {'kam us':>7} {'sipp us':>7} "
          f"{'db us':>6} {'idle d/k':>9} {'other':>6}")


def print_step(s: Step) -> None:
    split = "/".join(str(n) for n in s.per_instance) or "-"
    print(f"{s.instances:>4} {s.mode:>6} {s.rate:>5} {'yes' if s.clean else 'NO':>5} "
          f"{s.achieved_cps:>8.1f} {split:>11} "
          f"{fmt(s.sipp_p50_ms, '>7.0f')}/{fmt(s.sipp_p99_ms, '<7.0f')} "
          f"{s.switch_us_per_call:>7.0f} {s.kamailio_us_per_call:>7.0f} "
          f"{s.sipp_us_per_call:>7.0f} {s.db_us_per_call:>6.0f} "
          f"{s.switch_idle_pct:>4.0f}/{s.kamailio_idle_pct:<3.0f}% {s.other_pct:>5.0f}%"
          + ("" if s.clean else "   " + "; ".join(s.why)), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+",
                   default=["1:relay", "2:relay", "1:bypass", "2:bypass"],
                   help="INSTANCES:MEDIA_MODE pairs, measured in this order")
    p.add_argument("--rates", type=int, nargs="+", default=list(LADDER),
                   help="offered calls/s, climbed in order until a step is not clean")
    p.add_argument("--min-calls", type=int, default=2000, help="calls per step at least")
    p.add_argument("--seconds", type=int, default=8, help="calls per step: SECONDS x rate")
    p.add_argument("--idle", type=float, default=3.0,
                   help="seconds the idle CPU of switches and Kamailio is measured per step")
    p.add_argument("--kamailio-children", type=int, default=1,
                   help="Kamailio SIP worker processes (DCE_CHILDREN); with more, a 180 can "
                        "overtake its 200 on a busy machine and SIPp fails the call")
    p.add_argument("--database-url", default=os.environ.get("DCE_BENCH_DATABASE_URL")
                   or os.environ.get("DCE_TEST_DATABASE_URL"),
                   help="PostgreSQL server to create a fresh database on per step (required: "
                        "the instances share it)")
    p.add_argument("--log-level", default="warning", help="DCE_LOG_LEVEL of the switches")
    p.add_argument("--out", type=Path, default=None, help="keep per-step files here")
    args = p.parse_args(argv)
    if SIPP is None or KAMAILIO is None:
        print("bench_cluster: needs sipp (sip-tester) and kamailio", file=sys.stderr)
        return 2
    if not args.database_url:
        print("bench_cluster: needs --database-url or DCE_TEST_DATABASE_URL (the instances "
              "share one PostgreSQL)", file=sys.stderr)
        return 2
    configs: list[tuple[int, str]] = []
    for text in args.configs:
        n, _, mode = text.partition(":")
        if not n.isdigit() or int(n) < 1 or mode not in ("relay", "bypass"):
            p.error(f"--configs: expected INSTANCES:relay|bypass, got {text!r}")
        configs.append((int(n), mode))
    out = args.out or Path(tempfile.mkdtemp(prefix="dce-bench-cluster-"))
    print(f"dce cluster bench: {os.cpu_count()} cores, nothing pinned; Kamailio "
          f"{args.kamailio_children} children on {PROXY_IP}; fresh database per step on "
          f"{args.database_url.split('@')[-1]}; files in {out}", flush=True)
    print("us columns: CPU per call (utime+stime / calls) of the switches together and of "
          "Kamailio (both net of their idle CPU), SIPp uac+uas, PostgreSQL+Redis (all "
          "sessions'); idle d/k: % of one core the switches / Kamailio take with no calls; "
          "other: % of one core spent on anything but switches, Kamailio and SIPp", flush=True)
    print(HEADER, flush=True)
    steps: list[Step] = []
    best: dict[tuple[int, str], Step] = {}
    for n, mode in configs:
        for rate in args.rates:
            db_url = create_database(args.database_url, prefix="dce_bench")
            try:
                step = run_step(n, mode, rate, args, db_url, out / f"{n}-{mode}-{rate}")
            finally:
                drop_database(args.database_url, db_url)
            steps.append(step)
            print_step(step)
            if not step.clean:
                break
            if (n, mode) not in best or step.achieved_cps > best[(n, mode)].achieved_cps:
                best[(n, mode)] = step
    print()
    for (n, mode), s in best.items():
        print(f"{n} instance{'s' if n > 1 else ' '} {mode:>6}: best clean {s.achieved_cps:.0f} "
              f"calls/s (offered {s.rate}); per call: switches {s.switch_us_per_call:.0f} us, "
              f"Kamailio {s.kamailio_us_per_call:.0f} us, SIPp {s.sipp_us_per_call:.0f} us; "
              f"other load {s.other_pct:.0f}% of a core")
    for mode in ("relay", "bypass"):
        one, two = best.get((1, mode)), best.get((2, mode))
        if one is not None and two is not None and one.achieved_cps > 0:
            print(f"{mode}: 2 instances / 1 instance = {two.achieved_cps / one.achieved_cps:.2f}x")
    for n, mode in configs:
        if (n, mode) not in best:
            print(f"{n}:{mode}: no clean step")
    (out / "summary.json").write_text(json.dumps(
        {"steps": [asdict(s) for s in steps],
         "best": {f"{n}:{m}": asdict(s) for (n, m), s in best.items()}},
        indent=2, default=str))
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
