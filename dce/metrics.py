"""Prometheus exposition for /metrics, read from the live objects at scrape time.

Counters live as plain ints where they are counted (the core, the CDR writer), so the hot path
never touches a prometheus_client object; a custom collector turns them into metrics here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dce.server import Switch
    from store.writer import CdrWriter

_GAUGES = {"live_calls", "transactions"}


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
    for trunk, count in sorted(limiter.live_by_trunk().items()):
        live.add_metric([trunk], count)
    yield live


def render(switch: Switch) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SwitchCollector(switch))
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
