"""Prometheus exposition for /metrics, read from the live objects at scrape time.

Counters live as plain ints where they are counted (the core, the CDR writer), so the hot path
never touches a prometheus_client object; a custom collector turns them into metrics here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dce.server import Switch

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
            for name in ("written", "spooled", "replayed", "failed"):
                count = getattr(writer, name, None)
                if isinstance(count, int):
                    yield CounterMetricFamily(f"dce_cdr_{name}", f"CDRs {name}", value=count)


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
