"""What the CDR text rule costs per call: ``store.cdrtext.clean_cdr`` on the writer's submit.

Usage: ``python bench/bench_cdrtext.py [--rounds N]``

Three CDRs, each cleaned ``--rounds`` times in batches of 1,000 (the median batch is
reported, in µs per CDR):

* usual: every text column plain, eight compliance rules, the auction record of
  ``config/example.toml`` (docs/cdr.md): nothing to change, the fast path;
* odd Call-ID: the same with a Call-ID holding bytes that are not UTF-8;
* worst: a 60 KiB Call-ID of invalid bytes (the largest a datagram allows), cut to 512.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from store.cdr import Cdr, Disposition
from store.cdrtext import clean_cdr

AUCTION = {
    "campaign_id": "auto-insurance", "rule": "second_price", "reserve": "5.000000",
    "ranking": "ev = bid * exp(-min_duration / 180s)",
    "tie_break": "splitmix64(splitmix64(seq) ^ blake2b64(buyer/profile)) ascending",
    "seq": 1887529286, "eligible": ["buyer-a/a-auto"], "excluded": {}, "bids": {
        "buyer-a/a-auto": "12.000000"},
    "order": [{"buyer_id": "buyer-a", "profile_id": "a-auto", "bid": "12.000000",
               "min_duration": 60, "price": "5.000000", "rtb": False}],
    "winner": {"buyer_id": "buyer-a", "profile_id": "a-auto", "bid": "12.000000",
               "min_duration": 60, "price": "5.000000", "rtb": False},
    "price": "5.000000", "fallback": [], "elapsed_us": 114,
}  # fmt: skip


def usual() -> Cdr:
    now = datetime.now(UTC)
    return Cdr(
        call_id="0123456789abcdef01234567", a_call_id="a84dfe-1@192.0.2.1",
        b_call_id="89abcdef0123456789abcdef@127.0.0.1", trunk_id="local-trunk",
        caller="+13122600123", called="+18005550100", caller_state="IL", received_at=now,
        answered_at=now, ended_at=now, duration_ms=61_000, disposition=Disposition.ANSWERED,
        sip_status=200, campaign_id="auto-insurance", buyer_id="buyer-a",
        endpoint="sip:buyer@127.0.0.1:5070", bid=12_000_000, price=5_000_000,
        payout=3_500_000, billable=True, attempts=1,
        compliance=[f"{r}:pass" for r in ("invalid_number", "suppressed", "dnc_stale", "dnc",
                                          "calling_hours", "consent", "attestation", "fraud")],
        fraud_score=0, attestation="none", decision_us=180, auction=AUCTION,
    )  # fmt: skip


def per_cdr_us(cdr: Cdr, rounds: int) -> float:
    batches = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(1000):
            clean_cdr(cdr)
        batches.append((time.perf_counter_ns() - t0) / 1000 / 1000)
    return statistics.median(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    base = usual()
    odd_id = b"a84dfe-\xff\xfe\xc3(-1@192.0.2.1".decode("utf-8", "surrogateescape")
    worst_id = (b"\xff" * 60_000).decode("utf-8", "surrogateescape")
    cases = {
        "usual (nothing to change)": base,
        "odd Call-ID": msgspec.structs.replace(base, a_call_id=odd_id),
        "worst: 60 KiB of invalid bytes": msgspec.structs.replace(base, a_call_id=worst_id),
    }
    for name, cdr in cases.items():
        print(f"{name:34s} {per_cdr_us(cdr, args.rounds):8.2f} µs per CDR")


if __name__ == "__main__":
    main()
