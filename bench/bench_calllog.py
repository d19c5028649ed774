"""What a call's log line and metrics cost: ``CallLines.ended`` and ``CallMetrics.ended``, as
the pump calls them once per ended call (docs/operations.md).

Usage: ``python bench/bench_calllog.py [--rounds N]``

The line goes through the real logging path (a LogRecord, the JSON or text formatter, a
``StreamHandler``) into /dev/null: the one ``write`` a real stderr costs is included. Each
case runs ``--rounds`` batches of 2,000 calls; the best batch is reported in µs per call (as
``timeit`` does: on a shared machine the others measure the neighbours).
Cases: an answered billable call, a refused one (403, no buyer), the metrics alone, and the
line at ``DCE_LOG_LEVEL=warning`` (skipped at once).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dce.logs import CallLines, JsonFormatter, TextFormatter
from dce.metrics import CallMetrics
from store.cdr import Cdr, Disposition
from switch.record import CallRecord, HangupSide, Outcome

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
BATCH = 2000


def answered() -> tuple[CallRecord, Cdr]:
    record = CallRecord(
        call_id="c-8f2a1e", a_call_id="a8c1f0e2@10.0.0.7", b_call_id="b71@dce", trunk_id="seller-1",
        source="sip", caller="+13125550123", called="+18005550100", received=100.0,
        answered=101.2, confirmed=True, ended=161.2, duration_ms=60000, outcome=Outcome.ANSWERED,
        sip_status=200, hangup_side=HangupSide.CALLER, target_index=0,
        endpoint="sip:buyer@10.0.0.9:5070", attempts=1, first_response=100.4, ringing=100.4,
    )
    cdr = Cdr(
        call_id="c-8f2a1e", a_call_id="a8c1f0e2@10.0.0.7", b_call_id="b71@dce", trunk_id="seller-1",
        caller="+13125550123", called="+18005550100", received_at=T0,
        answered_at=T0 + timedelta(seconds=1.2), ended_at=T0 + timedelta(seconds=61.2),
        duration_ms=60000, disposition=Disposition.ANSWERED, sip_status=200,
        hangup_side=HangupSide.CALLER, campaign_id="auto-insurance", buyer_id="buyer-a",
        endpoint="sip:buyer@10.0.0.9:5070", bid=12_000_000, price=5_000_000, payout=3_500_000,
        billable=True, attempts=1, decision_us=140,
    )
    return record, cdr


def refused() -> tuple[CallRecord, Cdr]:
    record = CallRecord(
        call_id="c-9a", a_call_id="x1@10.0.0.7", b_call_id=None, trunk_id="seller-1",
        source="sip", caller="+13125550123", called="+18005550100", received=100.0,
        answered=None, confirmed=False, ended=100.0002, duration_ms=0, outcome=Outcome.REJECTED,
        sip_status=403, hangup_side=HangupSide.SYSTEM, target_index=None, endpoint=None,
        attempts=0, rule="dnc",
    )
    cdr = Cdr(
        call_id="c-9a", a_call_id="x1@10.0.0.7", trunk_id="seller-1", caller="+13125550123",
        called="+18005550100", received_at=T0, ended_at=T0,
        disposition=Disposition.REJECTED_COMPLIANCE, sip_status=403,
        hangup_side=HangupSide.SYSTEM, campaign_id="auto-insurance", rule="dnc", decision_us=60,
    )
    return record, cdr


def per_call(fn: Callable[[], None], rounds: int) -> float:
    batches = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(BATCH):
            fn()
        batches.append((time.perf_counter() - t0) / BATCH * 1e6)
    return min(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    rounds = parser.parse_args().rounds
    # As setup_logging leaves it, minus the root handler: this logger writes to /dev/null.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    sink = open("/dev/null", "w")  # noqa: SIM115 - open for the whole run
    logger = logging.getLogger("bench.calls")
    logger.propagate = False
    handler = logging.StreamHandler(sink)
    logger.addHandler(handler)
    lines = CallLines(logger=logger)
    metrics = CallMetrics()
    cases = [("answered", *answered()), ("refused 403", *refused())]
    for fmt, formatter in (("json", JsonFormatter()), ("text", TextFormatter())):
        handler.setFormatter(formatter)
        logger.setLevel(logging.INFO)
        for name, record, cdr in cases:
            def both(record: CallRecord = record, cdr: Cdr = cdr) -> None:
                metrics.ended(record, cdr)
                lines.ended(record, cdr)

            print(f"{fmt:5} {name:12} line + metrics  {per_call(both, rounds):6.2f} µs/call")
    record, cdr = answered()
    print(f"      answered     metrics alone   "
          f"{per_call(lambda: metrics.ended(record, cdr), rounds):6.2f} µs/call")
    logger.setLevel(logging.WARNING)
    print(f"      answered     line at warning "
          f"{per_call(lambda: lines.ended(record, cdr), rounds):6.2f} µs/call")


if __name__ == "__main__":
    main()
