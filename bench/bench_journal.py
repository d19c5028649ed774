#!/usr/bin/env python3
"""What the crash journal (dce/journal.py) costs a call: CPU, writes, fsyncs and latency.

Three parts, each printed with what else the machine did meanwhile (bench/machine.py):

1. **CPU per call**: the whole application without kernel I/O (bench_pipeline.py's ``Rig``:
   the real ``dce.server.Switch``, admission, core, gate, auction, CDR, log line, metrics),
   rounds with the journal and without it interleaved; the difference is the journal's own
   CPU per call (its records: ``Start``, ``Up``, ``Confirmed``, ``End``, and the one
   ``os.write`` per pump turn that has any).
2. **Where it goes**: the records of one round captured, then each kind made (``safe_start``,
   ``safe_up``) and appended again alone, and the writes replayed: µs per call of each.
3. **In real time**: ``--cps`` calls per second for ``--seconds``, paced on the event loop
   while ``Switch._heartbeat`` runs as in ``dce run`` (a ``Beat`` each second, ``fsync`` every
   ``DCE_JOURNAL_SYNC`` in a worker thread), journal on and off. It prints the write, fsync and
   byte rates, how long each fsync took (in its thread), how long each ``os.write`` of a pump
   turn took (on the loop, while fsyncs run), the latency of each message through
   ``feed``+``transmit`` and the loop's lateness on the pacing timer, and the process's CPU per
   call (all threads: the fsync thread included). The journal lives in a temporary directory
   on the same file system as ``/tmp`` (fsync is real on ext4, a no-op on tmpfs: the line says
   which).
4. **The heartbeat alone**: process CPU per second with and without it, an idle switch
   writing a record every 10 ms: its cost is per second, not per call.

    .venv/bin/python bench/bench_journal.py
    .venv/bin/python bench/bench_journal.py --calls 2000 --rounds 5 --cps 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import Rig, app_loop  # noqa: E402
from machine import Load, Window  # noqa: E402

from dce.journal import Confirmed, Journal, Record, safe_start, safe_up  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fs_type(path: Path) -> str:
    """The file system of ``path`` (longest matching mount point in /proc/mounts)."""
    best, kind = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind


def load_note(load: Load) -> str:
    top = ", ".join(f"{n} {p:.0f}%" for n, p in load.top[:3])
    return f"[machine: {load.brief()}{'; ' + top if top else ''}]"


# ------------------------------------------------------------------------- 1. CPU per call


async def cpu_rounds(calls: int, rounds: int) -> tuple[list[float], list[float], Load]:
    on: list[float] = []
    off: list[float] = []
    window = Window()
    for r in range(rounds):
        # Alternate which goes first, so drift on the machine hits both alike.
        for journal in ((True, False) if r % 2 == 0 else (False, True)):
            rig = Rig("bypass", journal)
            for i in range(calls):
                rig.call(i)
            rig.close()
            (on if journal else off).append(rig.cpu / calls * 1e6)
    return on, off, window.stop()


# ------------------------------------------------------------------------ 2. where it goes


async def breakdown(calls: int, rounds: int) -> tuple[dict[str, float], float, float, Load]:
    """µs per call of each journal step, on the records of a real round."""
    rig = Rig("bypass", True)
    journal = rig.journal
    assert journal is not None
    records: list[Record] = []
    writes: list[int] = []  # bytes of each os.write
    append, flush = journal.append, journal.flush

    def capture(record: Record) -> None:
        records.append(record)
        append(record)

    def count_flush() -> None:
        size = sum(len(b) for b in journal._buf)
        if size:
            writes.append(size)
        flush()

    journal.append = capture  # type: ignore[method-assign]
    journal.flush = count_flush  # type: ignore[method-assign]
    for i in range(calls):
        rig.call(i)
    journal.append, journal.flush = append, flush  # type: ignore[method-assign]
    rig.close()
    window = Window()
    kinds: dict[str, list[Record]] = {}
    for rec in records:
        kinds.setdefault(type(rec).__name__, []).append(rec)
    out: dict[str, float] = {}
    scratch = Journal(Path(tempfile.mkdtemp(prefix="dce-jbench-")))
    scratch.open()
    makers: dict[str, Callable[[Any], Any]] = {"Start": safe_start, "Up": safe_up}
    for name, recs in kinds.items():
        make = makers.get(name)
        best_make = best_append = float("inf")
        for _ in range(rounds):
            if make is not None:
                t0 = time.process_time()
                for rec in recs:
                    make(rec)
                best_make = min(best_make, time.process_time() - t0)
            t0 = time.process_time()
            for rec in recs:
                scratch.append(rec)
            best_append = min(best_append, time.process_time() - t0)
            scratch._buf.clear()
        if make is not None:
            out[f"{name}: safe_{name.lower()}"] = best_make / calls * 1e6
        out[f"{name}: encode + append"] = best_append / calls * 1e6
    payloads = [b"x" * n for n in writes]
    best_write = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for data in payloads:
            scratch._buf.append(data)
            scratch.flush()
        best_write = min(best_write, time.process_time() - t0)
    out["os.write per pump turn"] = best_write / calls * 1e6
    scratch.close()
    shutil.rmtree(scratch.directory, ignore_errors=True)
    return out, len(writes) / calls, sum(writes) / calls, window.stop()


# ---------------------------------------------------------------------------- 3. real time


class Timed:
    """Wraps a journal's ``sync`` and ``flush`` to time each call (wall, in µs)."""

    def __init__(self, journal: Journal) -> None:
        self.syncs: list[float] = []
        self.writes: list[float] = []  # while no fsync ran
        self.writes_in_sync: list[float] = []  # while an fsync ran in its thread
        self._syncing = threading.Event()
        sync, flush = journal.sync, journal.flush

        def timed_sync() -> None:
            self._syncing.set()
            t0 = time.perf_counter()
            before = journal.syncs
            sync()
            if journal.syncs != before:
                self.syncs.append((time.perf_counter() - t0) * 1e6)
            self._syncing.clear()

        def timed_flush() -> None:
            if not journal._buf:
                return
            during = self._syncing.is_set()
            t0 = time.perf_counter()
            flush()
            took = (time.perf_counter() - t0) * 1e6
            (self.writes_in_sync if during or self._syncing.is_set() else self.writes).append(
                took)

        journal.sync = timed_sync  # type: ignore[method-assign]
        journal.flush = timed_flush  # type: ignore[method-assign]


async def paced(cps: float, seconds: float, journal: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rig = Rig("bypass", journal)
    timed = Timed(rig.journal) if rig.journal is not None else None
    heartbeat = loop.create_task(rig.switch._heartbeat()) if journal else None
    latencies: list[float] = []
    lateness: list[float] = []
    feed = rig.feed

    def timed_feed(raw: bytes, peer: Any) -> list[tuple[bytes, str, int]]:
        t0 = time.perf_counter()
        out = feed(raw, peer)
        latencies.append((time.perf_counter() - t0) * 1e6)
        return out

    rig.feed = timed_feed  # type: ignore[method-assign]
    calls = int(cps * seconds)
    cpu0, t0 = time.process_time(), loop.time()
    window = Window()
    for i in range(calls):
        due = t0 + i / cps
        # Always through the loop, even when late: the heartbeat must get its turns.
        await asyncio.sleep(max(0.0, due - loop.time()))
        lateness.append(max(0.0, loop.time() - due) * 1e6)
        rig.call(i)
    elapsed = loop.time() - t0
    cpu = time.process_time() - cpu0
    load = window.stop()
    if heartbeat is not None:
        heartbeat.cancel()
        try:
            await heartbeat
        except asyncio.CancelledError:
            pass
    j = rig.journal
    out: dict[str, Any] = {
        "calls": calls, "elapsed": elapsed, "cpu_per_call": cpu / calls * 1e6,
        "latency": latencies, "lateness": lateness, "load": load,
    }
    if j is not None and timed is not None:
        out.update(records=j.records, bytes=j.bytes, syncs=j.syncs,
                   writes=len(timed.writes) + len(timed.writes_in_sync),
                   sync_us=timed.syncs, write_us=timed.writes, write_sync_us=timed.writes_in_sync)
    rig.close()
    return out


def dist(values: list[float]) -> str:
    return (f"p50 {pct(values, 50):7.1f}  p99 {pct(values, 99):7.1f}  "
            f"max {max(values, default=0):8.1f}")


async def heartbeat_cpu(heartbeat: bool, seconds: float) -> tuple[float, int]:
    """CPU ms per second of the process (all threads) over ``seconds`` of an idle switch that
    writes a pump turn's records every 10 ms, with and without the heartbeat: what the
    heartbeat costs whatever the call rate. Returns (ms/s, fsyncs)."""
    loop = asyncio.get_running_loop()
    rig = Rig("bypass", True)
    journal = rig.journal
    assert journal is not None
    task = loop.create_task(rig.switch._heartbeat()) if heartbeat else None
    cpu0, t0 = time.process_time(), loop.time()
    n = 0
    while loop.time() - t0 < seconds:
        await asyncio.sleep(0.01)
        journal.append(Confirmed(call_id=f"idle-{n}"))
        journal.flush()
        n += 1
    cpu = time.process_time() - cpu0
    elapsed = loop.time() - t0
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rig.close()
    return cpu / elapsed * 1000, journal.syncs


async def part4(args: argparse.Namespace) -> None:
    window = Window()
    runs: dict[bool, list[float]] = {True: [], False: []}
    syncs = 0
    for _ in range(3):
        for hb in (True, False):
            ms, n = await heartbeat_cpu(hb, args.seconds / 2)
            runs[hb].append(ms)
            syncs += n
    load = window.stop()
    on, off = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"\n4. the heartbeat alone: a write every 10 ms, 3 x {args.seconds / 2:g} s with and "
          f"without it {load_note(load)}")
    print(f"   process CPU, median: with {on:.1f} ms/s, without {off:.1f} ms/s: the heartbeat "
          f"(Beat 1/s, fsync every {args.sync * 1000:g} ms) costs {on - off:.1f} ms of CPU per "
          f"second ({syncs / (3 * args.seconds / 2):.1f} fsyncs/s), i.e. "
          f"{(on - off) * 1000 / args.cps:.0f} us per call at {args.cps:g} calls/s")


async def main_async(args: argparse.Namespace) -> None:
    print(f"journal on {fs_type(Path(tempfile.gettempdir()))} ({tempfile.gettempdir()}); "
          f"machine load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if "1" in args.parts:
        await part1(args)
    if "2" in args.parts:
        await part2(args)
    if "3" in args.parts:
        await part3(args)
    if "4" in args.parts:
        await part4(args)


async def part1(args: argparse.Namespace) -> None:
    on, off, load = await cpu_rounds(args.calls, args.rounds)
    diffs = [a - b for a, b in zip(on, off, strict=True)]
    print(f"\n1. whole pipeline, CPU per call, {args.calls} calls x {args.rounds} rounds each, "
          f"interleaved {load_note(load)}")
    for name, runs in (("journal on ", on), ("journal off", off)):
        print(f"   {name}: best {min(runs):6.0f} us, median {statistics.median(runs):6.0f} us "
              f"(rounds: {', '.join(f'{x:.0f}' for x in runs)})")
    print(f"   journal's share: best-best {min(on) - min(off):5.1f} us/call, "
          f"median of paired differences {statistics.median(diffs):5.1f} us/call")


async def part2(args: argparse.Namespace) -> None:
    steps, writes_per_call, bytes_per_call, load = await breakdown(args.calls, args.rounds)
    print(f"\n2. where it goes, best of {args.rounds}, us of CPU per call "
          f"{load_note(load)}")
    for name, us in steps.items():
        print(f"   {name:28} {us:6.2f}")
    print(f"   {'total':28} {sum(steps.values()):6.2f}")
    print(f"   per call: {writes_per_call:.2f} os.write, {bytes_per_call:.0f} bytes")


async def part3(args: argparse.Namespace) -> None:
    print(f"\n3. real time: {args.cps:g} calls/s for {args.seconds:g} s, heartbeat as dce run "
          f"(Beat 1/s, fsync every {args.sync * 1000:g} ms off the loop)")
    os.environ["DCE_JOURNAL_SYNC"] = str(args.sync)
    results = {}
    for journal in (True, False):
        results[journal] = await paced(args.cps, args.seconds, journal)
    for journal in (True, False):
        r = results[journal]
        print(f"   journal {'on ' if journal else 'off'}: {r['calls']} calls in "
              f"{r['elapsed']:.1f} s, CPU {r['cpu_per_call']:.0f} us/call (all threads) "
              f"{load_note(r['load'])}")
        print(f"     message feed+transmit us: {dist(r['latency'])}")
        print(f"     pacing timer late us:     {dist(r['lateness'])}")
    r = results[True]
    secs = r["elapsed"]
    print(f"   journal: {r['records'] / r['calls']:.2f} records/call, "
          f"{r['writes'] / secs:.0f} writes/s ({r['writes'] / r['calls']:.2f}/call), "
          f"{r['syncs'] / secs:.1f} fsyncs/s, {r['bytes'] / secs / 1024:.0f} KiB/s "
          f"({r['bytes'] / r['calls']:.0f} B/call)")
    print(f"     fsync (worker thread) us: {dist(r['sync_us'])}")
    print(f"     os.write (on the loop) us, no fsync running: {dist(r['write_us'])} "
          f"({len(r['write_us'])})")
    print(f"     os.write (on the loop) us, an fsync running: {dist(r['write_sync_us'])} "
          f"({len(r['write_sync_us'])})")
    on_lat, off_lat = results[True]["latency"], results[False]["latency"]
    print(f"   latency added per message: p50 {pct(on_lat, 50) - pct(off_lat, 50):+.1f} us, "
          f"p99 {pct(on_lat, 99) - pct(off_lat, 99):+.1f} us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls per CPU round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cps", type=float, default=100.0, help="paced calls per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sync", type=float, default=0.1, help="DCE_JOURNAL_SYNC, seconds")
    p.add_argument("--parts", default="1234", help="which parts to run, e.g. 12")
    args = p.parse_args(argv)
    loop = app_loop()
    loop.run_until_complete(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
