"""Prometheus exposition for /metrics, read from the live objects at scrape time.

Counters live as plain ints where they are counted (the core, the CDR writer, the per-call
:class:`CallMetrics` the pump feeds when a call ends), so the hot path never touches a
prometheus_client object; a custom collector turns them into metrics here. Every metric and
label is documented in docs/operations.md ("Metrics"), with the bound on each label's values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from store.writer import Histogram

if TYPE_CHECKING:
    from dce.server import Switch
    from store.cdr import Cdr
    from store.writer import CdrWriter
    from switch.record import CallRecord

_GAUGES = {"live_calls", "transactions"}

# --------------------------------------------------------------------------- per-call counters

NONE = "(none)"  # a call without a campaign or trunk; "(" is never in a configured id
OTHER = "(other)"  # label values past MAX_VALUES, folded together
# A guard on each labelled family: its values come from configuration (ids) or from the code
# (dispositions, rules), so this is never reached unless ids churn by the thousand.
MAX_VALUES = 2000

# INVITE -> first buyer response / ringback relayed: from a few ms (a LAN buyer) to the ring
# timeout; decision: in-process auctions take tens of µs, RTB up to DCE_AUCTION_TIMEOUT.
SETUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0)
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0)


@dataclass(slots=True)
class Slice:
    """One trunk's, campaign's or buyer's totals; money in micro-dollars."""

    calls: dict[str, int] = field(default_factory=dict)  # disposition -> calls
    answered: int = 0
    billable: int = 0
    revenue: int = 0
    payout: int = 0
    talk_ms: int = 0


class CallMetrics:
    """What operators slice ended calls by: trunk, campaign, buyer, disposition, rule; and the
    setup histograms. Fed once per call with its CDR (dce/pump.py), read at scrape time."""

    def __init__(self) -> None:
        self.trunks: dict[str, Slice] = {}
        self.campaigns: dict[str, Slice] = {}
        self.buyers: dict[str, Slice] = {}  # by the last buyer tried, calls that reached one
        self.rules: dict[tuple[str, str], int] = {}  # (trunk, Reason rule) -> calls
        self.first_response = Histogram(SETUP_BUCKETS)
        self.post_dial_delay = Histogram(SETUP_BUCKETS)
        self.decision = Histogram(DECISION_BUCKETS)
        # (trunk, campaign, buyer) -> their Slices, found (or folded into OTHER) once: a
        # label value's Slice never changes once made, and tables never shrink.
        self._parts: dict[tuple[str, str, str | None], tuple[Slice, ...]] = {}

    def _slices(self, key: tuple[str, str, str | None]) -> tuple[Slice, ...]:
        parts = []
        for table, value in zip((self.trunks, self.campaigns, self.buyers), key, strict=True):
            if value is None:
                continue
            part = table.get(value)
            if part is None:
                if len(table) >= MAX_VALUES:
                    value = OTHER
                    part = table.get(OTHER)
                if part is None:
                    part = table[value] = Slice()
            parts.append(part)
        if len(self._parts) >= MAX_VALUES:
            self._parts.clear()  # ids churning by the thousand: keep the cache bounded
        out = self._parts[key] = tuple(parts)
        return out

    def ended(self, record: CallRecord, cdr: Cdr) -> None:
        """Count one ended call (its CDR is cleaned already)."""
        disposition = cdr.disposition.value
        answered = cdr.answered_at is not None
        revenue = payout = 0
        if cdr.billable:
            revenue, payout = cdr.price or 0, cdr.payout or 0
        trunk = cdr.trunk_id or NONE
        key = (trunk, cdr.campaign_id or NONE, cdr.buyer_id)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._slices(key)
        for part in parts:
            calls = part.calls
            calls[disposition] = calls.get(disposition, 0) + 1
            if answered:
                part.answered += 1
                part.talk_ms += cdr.duration_ms
            if cdr.billable:
                part.billable += 1
                part.revenue += revenue
                part.payout += payout
        if cdr.rule is not None:
            rules = self.rules
            rk = (trunk, cdr.rule)
            if rk not in rules and len(rules) >= MAX_VALUES:
                rk = (OTHER, OTHER)
            rules[rk] = rules.get(rk, 0) + 1
        received = record.received
        if record.first_response is not None:
            self.first_response.observe(record.first_response - received)
        ringback = record.ringing if record.ringing is not None else record.answered
        if ringback is not None:
            self.post_dial_delay.observe(ringback - received)
        if cdr.decision_us is not None:
            self.decision.observe(cdr.decision_us / 1e6)


def call_families(calls: CallMetrics) -> Iterator[Any]:
    """The metric families of :class:`CallMetrics` (docs/operations.md)."""
    for dim, table in (("trunk", calls.trunks), ("campaign", calls.campaigns),
                       ("buyer", calls.buyers)):
        of = f"per {dim}" if dim != "buyer" else "per buyer (the last one tried)"
        ended = CounterMetricFamily(f"dce_{dim}_calls", f"calls ended {of}, by disposition",
                                    labels=[dim, "disposition"])
        answered = CounterMetricFamily(f"dce_{dim}_answered_calls",
                                       f"calls answered (connected) {of}", labels=[dim])
        talk = CounterMetricFamily(f"dce_{dim}_talk_seconds",
                                   f"talk time of answered calls {of}", labels=[dim])
        billable = CounterMetricFamily(f"dce_{dim}_billable_calls", f"billable calls {of}",
                                       labels=[dim])
        revenue = CounterMetricFamily(f"dce_{dim}_revenue_micros",
                                      f"price of billable calls {of}, micro-dollars",
                                      labels=[dim])
        payout = CounterMetricFamily(f"dce_{dim}_payout_micros",
                                     f"seller payout of billable calls {of}, micro-dollars",
                                     labels=[dim])
        for key, part in sorted(table.items()):
            for disposition, n in sorted(part.calls.items()):
                ended.add_metric([key, disposition], n)
            answered.add_metric([key], part.answered)
            talk.add_metric([key], part.talk_ms / 1000)
            billable.add_metric([key], part.billable)
            revenue.add_metric([key], part.revenue)
            payout.add_metric([key], part.payout)
        yield from (ended, answered, talk, billable, revenue, payout)
    rules = CounterMetricFamily("dce_call_rules",
                                "calls that did not connect, by the Reason rule the caller got",
                                labels=["trunk", "rule"])
    for (trunk, rule), n in sorted(calls.rules.items()):
        rules.add_metric([trunk, rule], n)
    yield rules
    for name, hist, doc in (
        ("first_response", calls.first_response,
         "INVITE to the first buyer response (not 100) relayed to the caller"),
        ("post_dial_delay", calls.post_dial_delay,
         "INVITE to the first 18x relayed to the caller (the 2xx if none came first)"),
        ("decision", calls.decision, "routing decision: compliance gate and auction"),
    ):
        yield HistogramMetricFamily(
            f"dce_{name}_seconds", doc, buckets=hist.cumulative(), sum_value=hist.sum
        )


class _SwitchCollector(Collector):
    def __init__(self, switch: Switch) -> None:
        self.switch = switch

    def collect(self) -> Iterator[Any]:
        core = self.switch.core
        stats: dict[str, int] = dict(
            core.stats, live_calls=core.live_calls, transactions=len(core.layer)
        )
        for name, value in sorted(stats.items()):
            if name in _GAUGES:
                yield GaugeMetricFamily(f"dce_{name}", name.replace("_", " "), value=value)
            else:
                yield CounterMetricFamily(f"dce_{name}", name.replace("_", " "), value=value)
        load = self.switch.load
        yield GaugeMetricFamily("dce_load_cpu", "smoothed CPU share of one core", value=load.cpu)
        yield GaugeMetricFamily("dce_load_lag_seconds", "event-loop lag", value=load.lag)
        yield GaugeMetricFamily("dce_load_udp_queue_bytes", "bytes waiting in the SIP socket",
                                value=load.queue)
        yield GaugeMetricFamily("dce_load_queue_delay_seconds",
                                "how long that queue takes to read (overload control's measure)",
                                value=load.delay)
        yield GaugeMetricFamily("dce_load_busy", "share of the time the event loop ran or "
                                "waited for a CPU", value=load.busy)
        yield GaugeMetricFamily("dce_load_shed_share", "share of new INVITEs refused",
                                value=load.shed)
        gc_stats = self.switch.gc_pauses
        for gen in range(3):
            yield CounterMetricFamily(f"dce_gc_gen{gen}_collections", "collections",
                                      value=gc_stats.count[gen])
            yield CounterMetricFamily(f"dce_gc_gen{gen}_seconds", "time spent collecting",
                                      value=gc_stats.total[gen])
            yield GaugeMetricFamily(f"dce_gc_gen{gen}_max_pause_seconds", "longest pause",
                                    value=gc_stats.longest[gen])
        media = self.switch.media
        totals = media.relay.totals()
        yield GaugeMetricFamily("dce_media_sessions_active", "relayed calls",
                                value=totals.sessions_active + media.webrtc_sessions)
        for name in ("packets", "bytes", "malformed", "foreign", "unroutable", "lost"):
            yield CounterMetricFamily(f"dce_media_{name}", f"relay {name}",
                                      value=getattr(totals, name))
        yield GaugeMetricFamily("dce_media_ports_free", "free RTP port pairs",
                                value=totals.ports_free)
        for name, value in self.switch.ws.stats.as_dict().items():
            if isinstance(value, int):
                yield GaugeMetricFamily(f"dce_{name}", name.replace("_", " "), value=value)
        writer = self.switch.cdr_writer
        if writer is not None:
            yield from _cdr_metrics(writer)
        yield from call_families(self.switch.pump.call_metrics)
        yield from _admission(self.switch)
        yield from _shield(self.switch)
        yield from _endpoint_health(self.switch)


def _cdr_metrics(writer: CdrWriter) -> Iterator[Any]:
    """The CDR writer (store/writer.py): counters, what waits, the database, latencies."""
    for name in ("written", "spooled", "replayed", "failed", "rejected", "lost"):
        yield CounterMetricFamily(f"dce_cdr_{name}", f"CDRs {name}", value=getattr(writer, name))
    waiting = GaugeMetricFamily(
        "dce_cdr_waiting", "CDRs not yet in the database (spool files, or memory)", labels=["place"]
    )
    waiting.add_metric(["disk"], writer.spool_rows)
    waiting.add_metric(["memory"], writer.queued)
    yield waiting
    yield GaugeMetricFamily(
        "dce_cdr_database_up", "1 while the CDR writer reaches the database",
        value=int(writer.db_ok),
    )
    for name, hist, doc in (
        ("commit_delay", writer.commit_delay, "per CDR, from the end of the call to its commit"),
        ("batch", writer.batch_seconds, "per committed batch of CDRs, its transaction"),
    ):
        yield HistogramMetricFamily(
            f"dce_cdr_{name}_seconds", doc, buckets=hist.cumulative(), sum_value=hist.sum
        )


def _admission(switch: Switch) -> Iterator[Any]:
    """Password guessing (failures, blocks) and per-trunk limits (docs/sip.md)."""
    guard = switch.admitter.guard
    for name, text in (("failures", "failed digest authentications"),
                       ("source_blocks", "sources blocked"), ("user_blocks", "user names blocked"),
                       ("refused", "requests refused unchecked during a block"),
                       ("dropped", "of those, not answered at all")):
        yield CounterMetricFamily(f"dce_auth_{name}", text, value=getattr(guard, name))
    now = switch.loop.time()
    yield GaugeMetricFamily("dce_auth_blocked_sources", "sources blocked now",
                            value=guard.blocked_sources(now))
    yield GaugeMetricFamily("dce_auth_blocked_users", "user names blocked now",
                            value=guard.blocked_users(now))
    limiter = switch.admitter.limiter
    refused = CounterMetricFamily("dce_trunk_limited", "INVITEs refused over a trunk limit",
                                  labels=["trunk", "rule"])
    for (trunk, rule), count in sorted(limiter.refused.items()):
        refused.add_metric([trunk, rule], count)
    yield refused
    live = GaugeMetricFamily("dce_trunk_live_calls", "live calls per trunk", labels=["trunk"])
    # Configured trunks with no call show 0, not a gap.
    by_trunk = {t.id: 0 for t in switch.config.trunks} | limiter.live_by_trunk()
    for trunk, count in sorted(by_trunk.items()):
        live.add_metric([trunk], count)
    yield live


def render(switch: Switch) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SwitchCollector(switch))
    # prometheus_client's own: process_* (CPU, RSS, open fds, start time), python_gc_*
    # (collections and objects per generation) and python_info. They read /proc and the
    # interpreter at scrape time only.
    for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
        registry.register(collector)
    return generate_latest(registry)


class GcPauses:
    """Garbage-collector pauses per generation, for /metrics (a pause stalls every call)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        pause = time.perf_counter() - self._started
        self.count[gen] += 1
        self.total[gen] += pause
        self.longest[gen] = max(self.longest[gen], pause)


def _shield(switch: Switch) -> Iterator[Any]:
    """Per-source bans (switch/pike.py) and stream connection caps (dce/shield.py)."""
    pump, shield = switch.pump, switch.shield
    dropped = CounterMetricFamily(
        "dce_pike_dropped_packets", "messages from banned sources dropped unread",
        labels=["transport"],
    )
    dropped.add_metric(["udp"], pump.udp.dropped if pump.udp is not None else 0)
    dropped.add_metric(["tcp"], pump.tcp.stats.dropped if pump.tcp is not None else 0)
    dropped.add_metric(["ws"], switch.ws.stats.dropped)
    yield dropped
    pike = shield.pike
    yield GaugeMetricFamily("dce_pike_bans_active", "sources banned now",
                            value=pike.active if pike is not None else 0)
    yield CounterMetricFamily("dce_pike_sources_banned", "bans started",
                              value=pike.stats.bans if pike is not None else 0)
    yield CounterMetricFamily(
        "dce_pike_trusted_over_limit", "times a trusted source went over the limit (not banned)",
        value=pike.stats.trusted_over_limit if pike is not None else 0,
    )
    yield CounterMetricFamily("dce_pike_untracked", "messages not counted: source table full",
                              value=pike.stats.untracked if pike is not None else 0)
    proxy = switch.admitter.proxies.stats  # trusted proxies (switch/proxy.py)
    sources = CounterMetricFamily(
        "dce_proxy_source", "X-DCE-Source headers on new INVITEs, by what became of them",
        labels=["outcome"],
    )
    sources.add_metric(["named"], proxy.named)
    sources.add_metric(["ignored"], proxy.ignored)
    sources.add_metric(["unusable"], proxy.unusable)
    yield sources
    bans = shield.bans
    yield CounterMetricFamily("dce_pike_nft_pushed", "bans added to the nftables set",
                              value=bans.stats.pushed if bans is not None else 0)
    yield CounterMetricFamily("dce_pike_nft_errors", "nft runs that failed",
                              value=bans.stats.errors if bans is not None else 0)
    tcp = pump.tcp
    if tcp is None:
        return
    stats = tcp.stats
    yield GaugeMetricFamily("dce_tcp_connections_open", "TCP connections open", value=stats.open)
    yield CounterMetricFamily("dce_tcp_connections_opened", "TCP connections opened",
                              value=stats.opened)
    refused = CounterMetricFamily("dce_tcp_connections_refused",
                                  "inbound TCP connections closed at once", labels=["reason"])
    refused.add_metric(["banned"], stats.refused_banned)
    refused.add_metric(["per_source"], stats.refused_per_source)
    refused.add_metric(["total"], stats.refused_total)
    yield refused
    closed = CounterMetricFamily("dce_tcp_connections_closed",
                                 "TCP connections closed by the switch", labels=["reason"])
    closed.add_metric(["idle"], stats.closed_idle)
    closed.add_metric(["stalled"], stats.closed_stalled)
    yield closed


def _endpoint_health(switch: Switch) -> Iterator[Any]:
    """Buyer endpoint health (dce/endpoint_health.py): probed URIs by state, OPTIONS probes."""
    health = switch.prober.health
    states = GaugeMetricFamily("dce_endpoints", "probed buyer endpoint URIs by health",
                               labels=["state"])
    for state, count in health.counts().items():
        states.add_metric([state.value], count)
    yield states
    yield CounterMetricFamily("dce_probes_sent", "OPTIONS probes sent", value=health.sent)
    yield CounterMetricFamily("dce_probes_failed",
                              "probes unanswered in time or answered 408, 5xx (not 501), 6xx",
                              value=health.failed)
