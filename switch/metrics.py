"""Prometheus exposition for /metrics, read from the live objects at scrape time.

Counters live as plain ints where they are counted (the core, the CDR writer), so the hot path
never touches a prometheus_client object; a custom collector turns them into metrics here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from switch.server import Switch

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
