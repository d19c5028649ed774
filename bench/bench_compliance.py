"""Benchmark of the compliance gate (issue 5). Not a test: it prints figures.

    .venv/bin/python bench/bench_compliance.py [--numbers 10000000] [--calls 200000]

Measures, with N DNC numbers loaded and 1,000 consent records:

- DNC import rate: a generated plain-text file of N numbers through ``DncStore.import_file``;
- resident memory per million DNC numbers: a fresh process loads the persisted lists and reports
  its RSS growth (the steady state; the importing process also holds allocator slack);
- gate decision latency p50/p99/p99.9 in microseconds, without STIR signature checks, for three
  caller mixes: repeat callers (a pool of 50,000), new callers from 5,000 exchanges (a realistic
  campaign footprint) and new callers from anywhere in the NANP (every libphonenumber lookup
  cold). Targets: p99 <= 20 us, <= 10 MB per million numbers, >= 1M numbers/s.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compliance.check import CallFacts, Gate
from compliance.consent import ConsentRecord, ConsentStore
from compliance.dnc import DncStore
from compliance.policy import CompliancePolicy
from dce import collector

NOW = datetime(2026, 5, 1, 17, 0, tzinfo=UTC)  # 13:00 in New York, 10:00 in Seattle


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def nanp(rng: random.Random) -> int:
    """A random ten-digit NANP number with NPA and NXX starting 2-9."""
    return (
        rng.randrange(2, 10) * 10**9
        + rng.randrange(100) * 10**7
        + rng.randrange(2, 10) * 10**6
        + rng.randrange(10**6)
    )


def write_numbers(path: Path, n: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("wb") as f:
        left = n
        while left:
            k = min(left, 1_000_000)
            f.write(b"\n".join(b"%d" % nanp(rng) for _ in range(k)) + b"\n")
            left -= k


def percentiles(samples: list[int]) -> tuple[float, float, float]:
    samples.sort()
    n = len(samples)
    return (
        samples[n // 2] / 1000,
        samples[min(n - 1, n * 99 // 100)] / 1000,
        samples[min(n - 1, n * 999 // 1000)] / 1000,
    )


def time_gate(gate: Gate, policy: CompliancePolicy, facts: list[CallFacts]) -> list[int]:
    check = gate.check
    clock = time.perf_counter_ns
    out: list[int] = []
    append = out.append
    now = NOW
    for i, f in enumerate(facts):
        t = clock()
        check(f, policy, now)
        append(clock() - t)
        if i & 1023 == 0:
            now = now + timedelta(seconds=1)  # time moves so fraud buckets roll
    return out


def rss_child(directory: str) -> None:
    """Child mode: load the persisted lists and print RSS growth and the number count."""
    before = rss_bytes()
    store = DncStore.load(directory)
    after = rss_bytes()
    n = sum(len(lst) for lst in store)
    print(after - before, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--numbers", type=int, default=10_000_000)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return

    load1, _, _ = os.getloadavg()
    print(
        f"host: {os.cpu_count()} CPUs, load average {load1:.2f} (wall-clock figures below "
        f"include contention from other processes)"
    )
    with tempfile.TemporaryDirectory(prefix="dce-bench-") as tmp:
        tmpdir = Path(tmp)
        src = tmpdir / "federal.txt"
        t = time.perf_counter()
        write_numbers(src, args.numbers)
        print(
            f"generated {args.numbers:,} numbers ({src.stat().st_size / 1e6:.0f} MB) "
            f"in {time.perf_counter() - t:.1f}s"
        )

        dnc = DncStore()
        rss0 = rss_bytes()
        t = time.perf_counter()
        rep = dnc.import_file("federal", src, source="bench", loaded_at=NOW - timedelta(days=1))
        elapsed = time.perf_counter() - t
        rss1 = rss_bytes()
        print(
            f"DNC import: {rep.read:,} lines, {rep.imported:,} imported, {rep.rejected} "
            f"rejected, {rep.total:,} unique in {elapsed:.2f}s = "
            f"{rep.imported / elapsed / 1e6:.2f}M numbers/s"
        )
        print(
            f"  RSS growth in the importing process: "
            f"{(rss1 - rss0) / 1e6 / (rep.total / 1e6):.1f} MB per million"
        )
        src.unlink()

        rng = random.Random(2)
        dnc.add_numbers(
            "internal", [f"+1{nanp(rng)}" for _ in range(10_000)], source="bench", loaded_at=NOW
        )
        dnc.add_numbers(
            "litigator",
            [f"+1{nanp(rng)}" for _ in range(5_000)],
            source="bench",
            loaded_at=NOW,
            max_age_days=31,
        )
        store_dir = tmpdir / "dnc"
        t = time.perf_counter()
        dnc.save(store_dir)
        print(f"saved lists in {time.perf_counter() - t:.2f}s")
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(store_dir)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        grown, count = int(out[0]), int(out[1])
        print(
            f"DNC memory (fresh process, {count:,} numbers loaded from disk): "
            f"{grown / 1e6:.1f} MB = {grown / 1e6 / (count / 1e6):.2f} MB per million"
        )

        consent = ConsentStore()
        consent_callers = [f"+1{nanp(rng)}" for _ in range(1000)]
        for i, c in enumerate(consent_callers):
            consent.add(
                ConsentRecord(
                    id=f"c{i}",
                    caller=c,
                    campaign_id="solar",
                    trunk_id="pub1",
                    certificate_id=f"https://cert.trustedform.com/{i:040x}",
                    granted_at=NOW - timedelta(days=2),
                )
            )
        gate = Gate(dnc=dnc, consent=consent)
        policy = CompliancePolicy(
            dnc_lists=["federal", "internal", "litigator"], consent_required=True
        )
        collector.settle()  # as dce run does: the loaded data is frozen, its thresholds

        def facts(caller: Callable[[int], str], n: int) -> list[CallFacts]:
            return [
                CallFacts(
                    caller=caller(i), called="+18005550100", trunk_id="pub1", campaign_id="solar"
                )
                for i in range(n)
            ]

        pool = consent_callers + [f"+1{nanp(rng)}" for _ in range(49_000)]
        exchanges = [f"{nanp(rng) // 10_000}" for _ in range(5_000)]
        mixes = {
            "repeat callers (pool of 50,000)": facts(
                lambda i: pool[rng.randrange(len(pool))], args.calls
            ),
            "new callers, 5,000 exchanges": facts(
                lambda i: f"+1{exchanges[rng.randrange(5000)]}{rng.randrange(10_000):04d}",
                args.calls,
            ),
            "new callers, whole NANP (cold lookups)": facts(
                lambda i: f"+1{nanp(rng)}", args.calls // 4
            ),
        }
        # Warm the caches as a running switch would have them: every pool caller seen once,
        # every exchange of the second mix looked up once. The third mix stays cold.
        time_gate(gate, policy, facts(lambda i: pool[i], len(pool)))
        time_gate(gate, policy, facts(lambda i: f"+1{exchanges[i]}0000", len(exchanges)))
        print(
            f"gate decision, {len(dnc)} DNC lists ({sum(len(x) for x in dnc):,} numbers), "
            f"{len(consent)} consent records, no STIR signature:"
        )
        for name, fs in mixes.items():
            p50, p99, p999 = percentiles(time_gate(gate, policy, fs))
            print(
                f"  {name:42s} p50 {p50:6.1f} us  p99 {p99:6.1f} us  p99.9 {p999:6.1f} us"
                f"  ({len(fs):,} calls)"
            )


if __name__ == "__main__":
    main()
