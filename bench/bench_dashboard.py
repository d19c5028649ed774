"""What the dashboard costs the switch (docs/dashboard.md): feeding ``LiveStats`` per call, and
one snapshot (built and encoded as the event stream sends it) per view and second.

Usage: ``python bench/bench_dashboard.py [--calls N] [--buyers B] [--campaigns C]``

A busy hour: ``--calls`` answered billable calls (default 100,000, about 28 a second) spread
over 3,600 s, each to a random one of ``--buyers`` buyers and ``--campaigns`` campaigns, fed
through the pump's hooks (``routed`` and ``ended``); then the operator's snapshot and one
buyer's, each the best of 20 (on a shared machine the others measure the neighbours).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from dce.aggregates import LiveStats
from store.cdr import Cdr, Disposition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--buyers", type=int, default=50)
    parser.add_argument("--campaigns", type=int, default=20)
    args = parser.parse_args()
    t0 = 1_800_000_000.0
    rnd = random.Random(1)
    step = 3600 / args.calls
    cdrs = []
    for i in range(args.calls):
        end = t0 + i * step
        received = datetime.fromtimestamp(end - 30, UTC)
        cdrs.append(Cdr(
            call_id=f"c{i}", a_call_id=f"a{i}", received_at=received,
            answered_at=received + timedelta(seconds=2), ended_at=datetime.fromtimestamp(end, UTC),
            duration_ms=28_000, disposition=Disposition.ANSWERED, sip_status=200,
            buyer_id=f"b{rnd.randrange(args.buyers)}",
            campaign_id=f"k{rnd.randrange(args.campaigns)}",
            price=2_500_000, payout=1_750_000, billable=True,
        ))  # fmt: skip
    stats = LiveStats(t0)
    start = time.perf_counter()
    for c in cdrs:
        stats.routed(c.call_id, c.received_at.timestamp())
        stats.ended(c)
    feed_us = (time.perf_counter() - start) / len(cdrs) * 1e6
    now = t0 + 3600
    encoder = msgspec.json.Encoder()

    def best(buyer_id: str | None) -> tuple[float, int]:
        times, size = [], 0
        for _ in range(20):
            t = time.perf_counter()
            size = len(encoder.encode(stats.snapshot(now, buyer_id=buyer_id, live_calls=500)))
            times.append(time.perf_counter() - t)
        return min(times) * 1e3, size

    op_ms, op_bytes = best(None)
    b_ms, b_bytes = best("b7")
    print(f"{args.calls} calls, {args.buyers} buyers x {args.campaigns} campaigns")
    print(f"feed (routed + ended)  {feed_us:8.1f} us per call")
    print(f"operator snapshot      {op_ms:8.2f} ms  ({op_bytes} bytes of JSON)")
    print(f"buyer snapshot         {b_ms:8.2f} ms  ({b_bytes} bytes of JSON)")


if __name__ == "__main__":
    main()
