#!/usr/bin/env python3
"""CPU per call through the whole application, without the kernel: core, routing, CDR, journal.

The real ``dce.server.Switch`` is built (settings from the environment as ``dce run`` reads
them, a config with one IP trunk, one campaign and one buyer), but not started: its UDP
transport is replaced by a sink that keeps what would be sent, and there is no database (CDRs
reach the writer's ``submit`` and its queue, taken by 100 as if committed, which tells the
journal they are durable; the journal is real, in a temporary directory). Calls then go
through ``SipPump.feed`` and ``SipPump.transmit`` exactly as the UDP transport drives them:
admission, the sans-IO core, the compliance gate and the auction, media (bypass, or the relay
with real sockets), the journal, the CDR, the log line and the metrics. The caller's and the
buyer's messages are built outside the timed region.

It prints µs of CPU per call (best and median of the rounds) and, with --profile, a cProfile
of one round. Only the kernel's send and receive and the CDR's COPY are missing against
bench_sip.py's figure.

    .venv/bin/python bench/bench_pipeline.py
    .venv/bin/python bench/bench_pipeline.py --media relay --profile
    .venv/bin/python bench/bench_pipeline.py --components   # + each step alone
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import msgspec  # noqa: E402
from bench_core import SDP, buyer_answer, in_dialog  # noqa: E402

from config.settings import load_settings  # noqa: E402
from dce.bridge import CallBridge  # noqa: E402
from dce.journal import Journal  # noqa: E402
from dce.server import Switch  # noqa: E402
from exchange.engine import Exchange  # noqa: E402
from exchange.models import ExchangeConfig  # noqa: E402
from store.writer import CdrWriter  # noqa: E402
from switch.message import SipRequest, SipResponse, make_response, parse_message  # noqa: E402
from switch.peer import Peer  # noqa: E402

CALLER = Peer("udp", "192.0.2.10", 5080)
BATCH = 100  # CDRs per simulated commit (the writer's batch_size)
BUYER = Peer("udp", "192.0.2.20", 5070)


class Sink:
    """Stands in for the UDP transport: keeps what the switch sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, int]] = []
        self.rx_bytes = 0

    def send(self, data: bytes, host: str, port: int) -> None:
        self.sent.append((data, host, port))


def config() -> ExchangeConfig:
    return msgspec.convert({
        "trunks": [{"id": "t1", "name": "seller", "source_ips": ["192.0.2.10"]}],
        "campaigns": [{"id": "c1", "name": "main", "numbers": ["+18005550100"],
                       "compliance": {"calling_hours": False}}],
        "buyers": [{"id": "b1", "name": "buyer",
                    "endpoints": [{"id": "e1", "uri": "sip:buyer@192.0.2.20:5070"}],
                    "profiles": [{"id": "p1", "campaign_id": "c1", "bid": "12.00"}]}],
    }, ExchangeConfig)


def invite(i: int) -> bytes:
    head = (
        f"INVITE sip:18005550100@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5080;branch=z9hG4bK-{i:08x}-0;rport\r\n"
        f'From: "Caller" <sip:+13122600123@192.0.2.10:5080>;tag={i}-uac\r\n'
        f"To: <sip:18005550100@127.0.0.1:5060>\r\n"
        f"Call-ID: bench-{i}@192.0.2.10\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:+13122600123@192.0.2.10:5080;transport=UDP>\r\n"
        f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


class Rig:
    """The switch as ``dce run`` builds it, without sockets or a database (module docstring)."""

    def __init__(self, media: str, journal: bool = True) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="dce-pipeline-"))
        env = {**os.environ, "DCE_DATA_DIR": str(self.data), "DCE_MEDIA_MODE": media,
               "DCE_LOG_LEVEL": "info", "DCE_PROBE_INTERVAL": "0", "DCE_PIKE_LIMIT": "0"}
        settings = load_settings({}, env)
        cfg = config()
        sw = self.switch = Switch(settings, cfg)
        sw.router = Exchange.from_settings(cfg, redis_url=None, auction_timeout=0.1)
        sw.bridge = CallBridge(sw._build_gate(), sw.router, cfg)
        pump = self.pump = sw.pump
        pump.bridge = sw.bridge
        self.sink = Sink()
        pump.udp = self.sink  # type: ignore[assignment]
        self.journal: Journal | None = None
        if journal:
            self.journal = sw.journal = pump.journal = Journal(self.data / "journal")
            self.journal.open()
        # The CDR writer, not started: submit() as the pump calls it; every BATCH CDRs the
        # queue is taken as a committed batch would be (on_durable tells the journal).
        writer = self.writer = sw.cdr_writer = CdrWriter("postgresql://unused", self.data / "spool")
        if self.journal is not None:
            writer.on_durable = self.journal.durable
        self.cpu = 0.0  # process CPU seconds spent in feed + transmit
        self.messages = 0

    def feed(self, raw: bytes, peer: Peer) -> list[tuple[bytes, str, int]]:
        """One message in, as the UDP transport gives it; what the switch sent back."""
        sink, pump = self.sink, self.pump
        sink.sent.clear()
        t0 = time.process_time()
        pump.feed(raw, peer)
        pump.transmit()
        self.cpu += time.process_time() - t0
        self.messages += 1
        return list(sink.sent)

    def call(self, i: int) -> None:
        """Call ``i``: INVITE, 100, 180, 200, ACK, the caller's BYE and its 200."""
        feed = self.feed
        out = feed(invite(i), CALLER)
        b_inv = next(m for m in _to(BUYER.port, out) if isinstance(m, SipRequest))
        feed(buyer_answer(b_inv, 100, "Trying"), BUYER)
        feed(buyer_answer(b_inv, 180, "Ringing"), BUYER)
        body = SDP.replace(b"192.0.2.10", b"192.0.2.20")
        out = feed(buyer_answer(b_inv, 200, "OK", body), BUYER)
        ok = next(m for m in _to(CALLER.port, out)
                  if isinstance(m, SipResponse) and m.status == 200)
        feed(in_dialog("ACK", ok, 1, f"z9hG4bK-{i:08x}-ack"), CALLER)
        out = feed(in_dialog("BYE", ok, 2, f"z9hG4bK-{i:08x}-bye"), CALLER)
        bye = next(m for m in _to(BUYER.port, out) if isinstance(m, SipRequest))
        feed(make_response(bye, 200, "OK").to_bytes(), BUYER)
        queue = self.writer._queue
        if len(queue) >= BATCH:
            t0 = time.process_time()
            self.writer._durable(list(queue))
            queue.clear()
            self.cpu += time.process_time() - t0

    def close(self) -> None:
        sw = self.switch
        assert sw.core.live_calls == 0, sw.core.live_calls
        sw.media.close_all()
        if self.journal is not None:
            self.journal.close()
        shutil.rmtree(self.data, ignore_errors=True)


def _to(port: int, out: list[tuple[bytes, str, int]]) -> list[SipRequest | SipResponse]:
    return [parse_message(d) for d, _, p in out if p == port]


async def one_round(calls: int, media: str, profile: cProfile.Profile | None,
                    journal: bool = True) -> float:
    """µs of CPU per call over ``calls`` calls."""
    rig = Rig(media, journal)
    if profile is not None:
        profile.enable()
    for i in range(calls):
        rig.call(i)
    if profile is not None:
        profile.disable()
    rig.close()
    return rig.cpu / calls * 1e6


async def components(calls: int, rounds: int) -> dict[str, float]:
    """µs of CPU per call of each per-call step around the core, replayed alone (best of
    ``rounds``) on the inputs one real round gave them."""
    from dce.aggregates import LiveStats
    from dce.journal import safe_up
    from dce.logs import CallLines
    from dce.metrics import CallMetrics
    from store.cdrtext import clean_cdr

    rig = Rig("bypass", True)
    bridge, stats = rig.pump.bridge, rig.pump.stats
    assert bridge is not None and stats is not None
    raw: list[Any] = []
    ended: list[Any] = []
    ups: list[Any] = []
    routed: list[Any] = []
    connected: list[Any] = []
    b_ended, b_answered, s_routed, s_connected = (
        bridge.ended, bridge.answered, stats.routed, stats.connected)

    def on_ended(record: Any, wall: Any, media: Any) -> Any:
        cdr = b_ended(record, wall, media)
        raw.append(cdr)
        ended.append((record, clean_cdr(cdr)))
        return cdr

    def on_answered(effect: Any, wall: Any) -> Any:
        up = b_answered(effect, wall)
        ups.append(up)
        return up

    def on_routed(*a: Any) -> None:
        routed.append(a)
        s_routed(*a)

    def on_connected(*a: Any) -> None:
        connected.append(a)
        s_connected(*a)

    bridge.ended, bridge.answered = on_ended, on_answered  # type: ignore[method-assign]
    stats.routed, stats.connected = on_routed, on_connected  # type: ignore[method-assign]
    for i in range(calls):
        rig.call(i)
    rig.close()
    lines = CallLines()

    def log_line() -> None:
        for record, cdr in ended:
            lines.ended(record, cdr)

    def metrics() -> None:
        m = CallMetrics()
        for record, cdr in ended:
            m.ended(record, cdr)

    def aggregates() -> None:
        live = LiveStats(time.time())
        for a in routed:
            live.routed(*a)
        for a in connected:
            live.connected(*a)
        for _, cdr in ended:
            live.ended(cdr)

    def clean() -> None:
        for cdr in raw:
            clean_cdr(cdr)

    def clean_again() -> None:
        for _, cdr in ended:
            clean_cdr(cdr, escaped=True)

    def journal_up() -> None:
        for up in ups:
            safe_up(up)

    out = {}
    for name, fn in (("log line (CallLines.ended)", log_line),
                     ("metrics (CallMetrics.ended)", metrics),
                     ("aggregates (LiveStats)", aggregates),
                     ("clean_cdr of the CDR", clean),
                     ("clean_cdr again, escaped", clean_again),
                     ("journal safe_up", journal_up)):
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        out[name] = best / calls * 1e6
    return out



def app_loop() -> asyncio.AbstractEventLoop:
    """What `dce run` sets up before its first call: logging at info (into /dev/null here), a
    uvloop loop, and the start-up heap frozen out of the collector's way."""
    from dce.logs import setup_logging

    setup_logging("info")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.collect()
    gc.freeze()
    return loop

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--media", choices=("bypass", "relay"), default="bypass")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--components", action="store_true",
                   help="also: each per-call step around the core alone, µs per call")
    args = p.parse_args(argv)
    # The log line per call goes where dce run's would, minus the terminal: /dev/null.
    loop = app_loop()
    if args.profile:
        prof = cProfile.Profile()
        loop.run_until_complete(one_round(args.calls, args.media, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return 0
    from machine import Window

    window = Window()
    runs: list[Any] = [loop.run_until_complete(one_round(args.calls, args.media, None))
                       for _ in range(args.rounds)]
    machine = window.stop()
    load = Path("/proc/loadavg").read_text().split()[:3]
    top = ", ".join(f"{n} {p:.0f}%" for n, p in machine.top[:3])
    print(f"whole pipeline, no kernel I/O ({args.media}): {args.calls} calls x {args.rounds} "
          f"rounds; machine load {' '.join(load)}, meanwhile {machine.brief()} ({top})")
    print(f"CPU per call: best {min(runs):.0f} us, median {statistics.median(runs):.0f} us "
          f"(rounds: {', '.join(f'{x:.0f}' for x in runs)})")
    if args.components:
        steps = loop.run_until_complete(components(min(args.calls, 1000), args.rounds * 3))
        print(f"per-call steps alone, best of {args.rounds * 3}, us of CPU per call:")
        for name, us in steps.items():
            print(f"  {name:30} {us:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
