#!/usr/bin/env python3
"""Memory per live call and garbage-collector pauses in the sans-IO switch core (issue 13).

Drives ``switch.core.SwitchCore`` with no sockets, as bench_core.py does (routing with one
target, bypass media), to ``--calls`` answered and ACKed calls up at once, then prints:

* bytes per live call, by tracemalloc (what Python allocated and still holds) and by RSS
  delta (what the process grew by, allocator slack included), twice: "answered" right after
  the last call came up (at ``--rate`` calls/virtual s the RFC 6026 transactions of the
  last 32 s of calls are still alive: Timers L and M), and "settled" once virtual time is
  33 s on and those transactions are gone (what a long call costs);
* gc-tracked objects per live call (``gc.get_objects()`` before and after, both points);
* with the calls up, ``--churn`` more calls set up and torn down at ``--rate``: the process
  CPU per churn call, and the longest and p99 garbage-collector pause (``gc.callbacks``
  start/stop, perf_counter), per generation and over all, for each GC setting of
  ``--variants`` (each in a fresh subprocess, so settings and heaps do not mix):

  - ``default``: CPython's thresholds (700, 10, 10), no freeze;
  - ``freeze``: ``gc.collect(); gc.freeze()`` after start-up, default thresholds;
  - ``freeze-T0-T1-T2``: freeze and ``gc.set_threshold(T0, T1, T2)``;
  - ``...-youngS``: and ``gc.collect(1)`` every S virtual seconds besides (dce/server.py applies
    ``freeze-300-5-3333-young1``; it applied ``freeze-5000-10-100``, then
    ``freeze-1000-10-500``). With calls ending as fast as they start, deaths of old objects
    offset births in the collector's count, so the thresholds alone let the young generations
    grow to whatever was born since the last collection and still lives (transactions, 32 s).
    A young collection on a clock bounds that to one period's worth;

* the machine's other load during each step (bench/machine.py) and the targets beside the
  figures (issue 13: <= 6 KiB per live call, no GC pause over 10 ms with 10,000 calls up).

``--app`` imports the whole application first (``dce.server`` and all it pulls in: aiohttp,
asyncpg, aiortc ...), so that "start-up" has the real process's heap: without a freeze a full
collection walks it too. ``--app`` also adds, per live call, what the application holds
beside the core (dce/bridge.py ``Decision`` with its ``CallFacts``, one auction target and
compliance rules; dce/journal.py's per-call segment entries), built as they are built there
and dropped at the call's end as they are there (so churn reaches a steady state instead of
growing the heap by a call's worth each), and prints it apart. The media session of a real call (media/) is not counted: the bench
uses a bypass stub.

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --calls 10000 --churn 20000 --app
    .venv/bin/python bench/bench_memory.py --variants default freeze freeze-5000-10-100
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import BUYER, CALLER, SDP, Admit, Bypass, buyer_answer, in_dialog, invite  # noqa: E402
from machine import Window  # noqa: E402

from switch.context import CoreConfig  # noqa: E402
from switch.core import SwitchCore  # noqa: E402
from switch.effects import CallEnded, OpenMedia, RouteCall, Routed  # noqa: E402
from switch.message import SipRequest, SipResponse, make_response, parse_message  # noqa: E402
from switch.peer import Peer  # noqa: E402

TARGET_BYTES = 6 * 1024
TARGET_PAUSE_MS = 10.0
SETTLE_S = 33.0  # > 64*T1 (32 s): RFC 6026 Timers L and M end the INVITE transactions

class Driver:
    """One core and the virtual clock; every call goes through ``receive_datagram``."""

    def __init__(self) -> None:
        self.core = SwitchCore(
            CoreConfig(host="203.0.113.1", port=5060, max_calls=1_000_000),
            Admit(), random.Random(1),
        )
        self.now = 0.0
        self.routed: Callable[[str], None] | None = None  # the app's per-call state, --app
        self.ended: Callable[[str], None] | None = None  # ... dropped at the call's end
        self.cpu = 0.0  # process CPU spent inside the core (feed and timers) only
        # ``-youngS`` variants: ``gc.collect(1)`` every S virtual seconds, as dce/server.py's
        # timer does, counted in ``cpu``; None: the thresholds alone.
        self.young_every: float | None = None
        self.next_young = 0.0

    def feed(self, data: bytes, peer: Peer) -> list[tuple[bytes, Peer]]:
        t0 = time.process_time()
        out = self._feed(data, peer)
        self.cpu += time.process_time() - t0
        return out

    def _feed(self, data: bytes, peer: Peer) -> list[tuple[bytes, Peer]]:
        core = self.core
        now = self.now
        core.receive_datagram(data, peer, now)
        out = core.datagrams_to_send()
        while (e := core.next_effect()) is not None:
            if isinstance(e, RouteCall):
                if self.routed is not None:
                    self.routed(e.call_id)
                core.routed(e.call_id, Routed(targets=["sip:buyer@198.51.100.7:5070"],
                                             present_as="+13122600123"), now)
            elif isinstance(e, OpenMedia):
                core.media_opened(e.call_id, Bypass(e.offer), now)  # type: ignore[arg-type]
            elif isinstance(e, CallEnded) and self.ended is not None:
                self.ended(e.record.call_id)
            out.extend(core.datagrams_to_send())
        return out

    def timers(self) -> None:
        t0 = time.process_time()
        core = self.core
        while (t := core.get_timer()) is not None and t <= self.now:
            core.handle_timer(self.now)
            core.datagrams_to_send()
            while core.next_effect() is not None:
                pass
        if self.young_every is not None and self.now >= self.next_young:
            gc.collect(1)
            self.next_young = self.now + self.young_every
        self.cpu += time.process_time() - t0

    def call_up(self, i: int) -> bytes:
        """Set up call ``i`` to answered and ACKed; returns the caller's BYE for it."""
        out = self.feed(invite(i), CALLER)
        b_inv = next(parse_message(d) for d, p in out if p.port == BUYER.port)
        assert isinstance(b_inv, SipRequest)
        self.feed(buyer_answer(b_inv, 100, "Trying"), BUYER)
        self.feed(buyer_answer(b_inv, 180, "Ringing"), BUYER)
        out = self.feed(buyer_answer(b_inv, 200, "OK", SDP), BUYER)
        ok = next(m for d, p in out if p.port == CALLER.port
                  if isinstance(m := parse_message(d), SipResponse) and m.status == 200)
        self.feed(in_dialog("ACK", ok, 1, f"z9hG4bK-{i:08x}-ack"), CALLER)
        return in_dialog("BYE", ok, 2, f"z9hG4bK-{i:08x}-bye")

    def call_down(self, bye: bytes) -> None:
        out = self.feed(bye, CALLER)
        b_bye = next(m for d, p in out if p.port == BUYER.port
                     if isinstance(m := parse_message(d), SipRequest))
        self.feed(make_response(b_bye, 200, "OK").to_bytes(), BUYER)

    def ramp(self, first: int, count: int, step: float) -> list[bytes]:
        byes = []
        for i in range(first, first + count):
            self.now += step
            self.timers()
            byes.append(self.call_up(i))
        return byes

    def settle(self) -> None:
        self.now += SETTLE_S
        self.timers()


# --------------------------------------------------------------------- the application


class AppState:
    """What the application keeps per live call beside the core, built as it builds it."""

    def __init__(self) -> None:
        from datetime import UTC, datetime

        from dce.bridge import Decision
        from exchange.routing import CallFacts, Target

        self._decision = Decision
        self._facts = CallFacts
        self._target = Target
        self._at = datetime.now(UTC)
        self.decisions: dict[str, Any] = {}
        self.segment_of: dict[str, Path] = {}  # dce/journal.py Journal._segment_of
        self.open_segment: set[str] = set()  # dce/journal.py Journal._open[path]
        self.segment = Path("/tmp/journal/000001.jsonl")

    def routed(self, call_id: str) -> None:
        facts = self._facts(call_id=call_id, trunk_id="t1", source="sip",
                            caller="+13122600123", called="+18005550100", received_at=self._at)
        self.decisions[call_id] = self._decision(
            facts=facts, targets=[_target(self._target)], campaign_id="camp-1",
            compliance=["hours", "dnc", "consent", "stir", "fraud"], fraud_score=3,
            attestation="A", caller_state="IL", decision_us=180,
            auction={"winner": "buyer-1", "bids": 3, "clearing": 1_250_000},
        )
        self.segment_of[call_id] = self.segment
        self.open_segment.add(call_id)

    def ended(self, call_id: str) -> None:
        """The call's end: the bridge and the journal drop what they kept for it."""
        self.decisions.pop(call_id, None)
        self.segment_of.pop(call_id, None)
        self.open_segment.discard(call_id)


def _target(cls: Any) -> Any:
    import inspect

    fields = {
        "buyer_id": "buyer-1", "endpoint_id": "ep-1", "uri": "sip:buyer@198.51.100.7:5070",
        "profile_id": "p-1", "bid": 1_250_000, "price": 1_250_000, "min_duration_s": 30,
    }
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in fields.items() if k in params})


# ------------------------------------------------------------------------- measuring


def rss() -> int:
    """Resident set size now, bytes (/proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held(byes: list[bytes]) -> int:
    """What the bench itself keeps per call (the BYEs it will send): not the core's."""
    return sys.getsizeof(byes) + sum(sys.getsizeof(b) for b in byes)


class Pauses:
    """Each collection's wall time (what calls wait) and this thread's CPU time (the same
    without the other processes of a shared machine preempting the collector)."""

    def __init__(self) -> None:
        self.by_gen: list[list[float]] = [[], [], []]
        self.cpu: list[float] = []
        self.collected = 0  # objects found unreachable: cyclic garbage (refcounting missed it)
        self._t0 = 0.0
        self._c0 = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            self._c0 = time.thread_time()
        else:
            self.by_gen[info["generation"]].append(time.perf_counter() - self._t0)
            self.cpu.append(time.thread_time() - self._c0)
            self.collected += info["collected"]


def apply_variant(name: str) -> float | None:
    """Apply a GC setting; returns the period of its young collections (``-youngS``), if any."""
    if name == "default":
        return None
    parts = name.split("-")
    young = None
    if parts[-1].startswith("young"):
        young = float(parts.pop()[len("young"):])
    if parts[0] != "freeze":
        raise SystemExit(f"unknown variant {name!r}")
    gc.collect()
    gc.freeze()
    if len(parts) == 4:
        gc.set_threshold(int(parts[1]), int(parts[2]), int(parts[3]))
    return young


def run_one(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One variant in this (fresh) process: memory, objects, pauses, CPU per churn call."""
    if args.app:
        import dce.server  # noqa: F401  (the whole application's start-up heap)
    app = AppState() if args.app else None
    d = Driver()
    if app is not None:
        d.routed = app.routed
        d.ended = app.ended
    step = 1.0 / args.rate
    # Warm up: caches (header names, interned strings) that any running switch has.
    d.call_down(d.ramp(10_000_000, 1, step)[0])
    d.settle()
    d.young_every = apply_variant(variant)
    d.next_young = d.now
    res: dict[str, Any] = {"variant": variant, "gc_threshold": gc.get_threshold(),
                           "frozen": gc.get_freeze_count()}

    # Memory: RSS and object counts on a plain run; tracemalloc (slow, and its own traces
    # grow the RSS) in a run of its own that stops there.
    tracing = args.tracemalloc
    gc.collect()
    objs0 = len(gc.get_objects())
    rss0 = rss()
    if tracing:
        tracemalloc.start()
    ramp_pauses = Pauses()
    if not tracing:
        gc.callbacks.append(ramp_pauses.callback)
    w = Window()
    d.cpu = 0.0
    byes = d.ramp(0, args.calls, step)
    res["ramp_cpu_us"] = d.cpu / args.calls * 1e6
    res["ramp_load"] = w.stop().brief()
    if not tracing:
        gc.callbacks.remove(ramp_pauses.callback)
    ramp_all = [p for g in ramp_pauses.by_gen for p in g]
    res["ramp_pause_max_ms"] = max(ramp_all, default=0.0) * 1e3
    res["ramp_pause_cpu_max_ms"] = max(ramp_pauses.cpu, default=0.0) * 1e3
    res["ramp_collections"] = [len(g) for g in ramp_pauses.by_gen]
    assert d.core.live_calls == args.calls, d.core.live_calls
    bench_bytes = held(byes)

    def point(name: str) -> None:
        gc.collect()
        res[f"{name}_objects"] = (len(gc.get_objects()) - objs0) / args.calls
        res[f"{name}_rss"] = (rss() - rss0 - bench_bytes) / args.calls
        if tracing:
            res[f"{name}_traced"] = (tracemalloc.get_traced_memory()[0] - bench_bytes) / args.calls
        res[f"{name}_layer"] = len(d.core.layer)

    point("answered")
    d.settle()
    point("settled")
    if tracing:
        if args.top:
            snap = tracemalloc.take_snapshot()
            res["top"] = [
                f"{s.size / args.calls:7.0f} B/call {s.count / args.calls:5.1f} blocks/call  "
                f"{s.traceback[0].filename.split('/main/')[-1]}:{s.traceback[0].lineno}"
                for s in snap.statistics("lineno")[: args.top]
            ]
        tracemalloc.stop()
        return res
    if app is not None:
        gc.collect()
        a_objs = len(gc.get_objects())
        tracemalloc.start()
        extra = AppState()
        for i in range(args.calls):
            extra.routed(f"app-{i:024x}")
        res["app_traced"] = tracemalloc.get_traced_memory()[0] / args.calls
        tracemalloc.stop()
        res["app_objects"] = (len(gc.get_objects()) - a_objs) / args.calls
        del extra
    # A full collection walks every tracked object not frozen: what one costs with the calls
    # up, whenever the thresholds let one come.
    full = []
    for _ in range(3):
        t0 = time.perf_counter()
        gc.collect()
        full.append((time.perf_counter() - t0) * 1e3)
    res["full_gc_ms"] = statistics.median(full)
    res["tracked"] = len(gc.get_objects())

    # Churn with the calls up: set up and tear down, one at a time, timers running.
    pauses = Pauses()
    gc.collect()
    gc.callbacks.append(pauses.callback)
    w = Window()
    d.cpu = 0.0
    first = args.calls
    for i in range(first, first + args.churn):
        d.now += step
        d.timers()
        d.call_down(d.call_up(i))
    d.settle()
    res["churn_cpu_us"] = d.cpu / args.churn * 1e6
    res["churn_load"] = w.stop().brief()
    gc.callbacks.remove(pauses.callback)
    assert d.core.live_calls == args.calls, d.core.live_calls
    all_p = sorted(p for g in pauses.by_gen for p in g)
    res["pauses"] = [
        (len(g), max(g, default=0.0) * 1e3, _p99(g) * 1e3) for g in pauses.by_gen
    ]
    res["pause_max_ms"] = max(all_p, default=0.0) * 1e3
    res["pause_p99_ms"] = _p99(all_p) * 1e3
    res["pause_cpu_max_ms"] = max(pauses.cpu, default=0.0) * 1e3
    res["pause_cpu_p99_ms"] = _p99(pauses.cpu) * 1e3
    res["cyclic_per_call"] = pauses.collected / max(1, args.churn)
    res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del byes
    return res


def _p99(xs: list[float]) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"switch core, sans-IO: {args.calls} answered calls up, churn {args.churn} calls at "
          f"{args.rate:.0f} calls/virtual s{', whole app imported (--app)' if args.app else ''}; "
          f"machine load {' '.join(load)}")
    mem = next((r for r in results if "settled_traced" in r), results[0])
    results = [r for r in results if "pauses" in r]
    first = results[0]
    print(f"memory per live call ({first['variant']}), target <= {TARGET_BYTES} B "
          f"({TARGET_BYTES // 1024} KiB):")
    for name, label in (("answered", "answered (RFC 6026 transactions of the last 32 s live)"),
                        ("settled", "settled  (33 s on: transactions ended)")):
        traced = mem.get(f"{name}_traced")
        tm = f"tracemalloc {traced:6.0f} B" if traced is not None else "tracemalloc   off"
        print(f"  {label}: {tm}, RSS delta {first[f'{name}_rss']:6.0f} B, "
              f"gc-tracked objects {first[f'{name}_objects']:5.1f}, "
              f"live transactions {first[f'{name}_layer']}")
    if "app_traced" in first:
        print(f"  the application beside the core (dce/bridge.py Decision, journal entries): "
              f"tracemalloc {first['app_traced']:.0f} B, gc-tracked objects "
              f"{first['app_objects']:.1f} per call (media session not counted)")
    for line in mem.get("top", []):
        print("    " + line)
    print(f"GC with {args.calls} calls up, {args.churn} calls set up and torn down; target: "
          f"no pause > {TARGET_PAUSE_MS:g} ms")
    print(f"  {'variant':<22} {'thresholds':<16} {'frozen':>7}  {'max ms':>7} {'p99 ms':>7} "
          f"{'cpu max/p99':>11}  "
          f"{'gen0 n/max/p99':>18} {'gen1 n/max/p99':>18} {'gen2 n/max/p99':>18}  "
          f"{'CPU us/call':>11} {'full gc ms':>10}  load")
    for r in results:
        gens = "  ".join(f"{n:5d}/{mx:5.1f}/{p:5.1f}" for n, mx, p in r["pauses"])
        ok = "ok " if r["pause_max_ms"] <= TARGET_PAUSE_MS else "OVER"
        print(f"  {r['variant']:<22} {tuple(r['gc_threshold'])!s:<16} {r['frozen']:>7}  "
              f"{r['pause_max_ms']:7.1f} {r['pause_p99_ms']:7.2f} "
              f"{r['pause_cpu_max_ms']:5.1f}/{r['pause_cpu_p99_ms']:5.1f}  {gens}  "
              f"{r['churn_cpu_us']:11.0f} {r['full_gc_ms']:10.1f}  {r['churn_load']} {ok}")
    print(f"  while the {args.calls} calls came up (0 to {args.calls} live): longest pause, wall/cpu ms")
    for r in results:
        print(f"  {r['variant']:<22} {r['ramp_pause_max_ms']:7.1f}/{r['ramp_pause_cpu_max_ms']:5.1f}"
              f"  collections per generation {r['ramp_collections']}  {r['ramp_load']}")
    cyclic = ", ".join(f"{r['variant']} {r['cyclic_per_call']:.2f}" for r in results)
    print(f"  cyclic garbage the collector freed during the churn, objects per churn call: "
          f"{cyclic} (0: a finished call is freed by reference counting alone, so freezing "
          f"live calls could not keep one from being collected)")
    print(f"  ramp CPU per call (set-up only, {first['variant']}): "
          f"{first['ramp_cpu_us']:.0f} us; max RSS {first['maxrss_mb']:.0f} MB; "
          f"gc-tracked objects with the calls up {first['tracked']}")
    print("  max/p99 ms: wall time of each collection (all generations); cpu max/p99: the "
          "collector thread's CPU time (without preemption by other processes); n/max/p99 "
          "per generation in wall ms; CPU us/call: process CPU inside the core per churn call")
    print("  full gc ms: one gc.collect() with the calls up (median of 3): the pause a full "
          "collection costs whenever the thresholds let one come")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10_000, help="answered calls kept up")
    p.add_argument("--churn", type=int, default=20_000, help="calls set up and torn down")
    p.add_argument("--rate", type=float, default=300.0, help="calls per virtual second")
    p.add_argument("--variants", nargs="+",
                   default=["freeze-300-5-3333-young1", "freeze-300-5-3333",
                            "freeze-1000-10-500", "freeze-5000-10-100", "default"])
    p.add_argument("--app", action="store_true", help="import the whole application first")
    p.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    p.add_argument("--top", type=int, default=0, help="tracemalloc: top N lines held")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return 0
    results = []
    runs = [(v, False) for v in args.variants]
    if args.tracemalloc:
        runs.insert(0, (args.variants[0], True))
    for variant, tracing in runs:
        cmd = [sys.executable, __file__, "--one", variant, "--calls", str(args.calls),
               "--churn", str(args.churn), "--rate", str(args.rate), "--top", str(args.top)]
        if args.app:
            cmd.append("--app")
        if not tracing:
            cmd.append("--no-tracemalloc")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
