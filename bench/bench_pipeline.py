#!/usr/bin/env python3
"""CPU per call through the whole application, without the kernel: core, routing, CDR, journal.

The real ``dce.server.Switch`` is built (settings from the environment as ``dce run`` reads
them, a config with one IP trunk, one campaign and one buyer), but not started: its UDP
transport is replaced by a sink that keeps what would be sent, and there is no database (CDRs
stop at the writer's door; the journal is real, in a temporary directory). Calls then go
through ``SipPump.feed`` and ``SipPump.transmit`` exactly as the UDP transport drives them:
admission, the sans-IO core, the compliance gate and the auction, media (bypass, or the relay
with real sockets), the journal, the CDR, the log line and the metrics. The caller's and the
buyer's messages are built outside the timed region.

It prints µs of CPU per call (best and median of the rounds) and, with --profile, a cProfile
of one round. Only the kernel's send and receive and the CDR's COPY are missing against
bench_sip.py's figure.

    .venv/bin/python bench/bench_pipeline.py
    .venv/bin/python bench/bench_pipeline.py --media relay --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
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
from switch.message import SipRequest, SipResponse, make_response, parse_message  # noqa: E402
from switch.peer import Peer  # noqa: E402

CALLER = Peer("udp", "192.0.2.10", 5080)
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


async def one_round(calls: int, media: str, profile: cProfile.Profile | None) -> float:
    data = Path(tempfile.mkdtemp(prefix="dce-pipeline-"))
    env = {**os.environ, "DCE_DATA_DIR": str(data), "DCE_MEDIA_MODE": media,
           "DCE_LOG_LEVEL": "info", "DCE_PROBE_INTERVAL": "0", "DCE_PIKE_LIMIT": "0"}
    settings = load_settings({}, env)
    cfg = config()
    sw = Switch(settings, cfg)
    sw.router = Exchange.from_settings(cfg, redis_url=None, auction_timeout=0.1)
    sw.bridge = CallBridge(sw._build_gate(), sw.router, cfg)
    pump = sw.pump
    pump.bridge = sw.bridge
    sink = Sink()
    pump.udp = sink  # type: ignore[assignment]
    journal = sw.journal = pump.journal = Journal(data / "journal")
    journal.open()
    cpu = 0.0

    def feed(raw: bytes, peer: Peer) -> list[tuple[bytes, str, int]]:
        nonlocal cpu
        sink.sent.clear()
        t0 = time.process_time()
        pump.feed(raw, peer)
        pump.transmit()
        cpu += time.process_time() - t0
        return list(sink.sent)

    def to(port: int, out: list[tuple[bytes, str, int]]) -> list[SipRequest | SipResponse]:
        return [parse_message(d) for d, _, p in out if p == port]

    if profile is not None:
        profile.enable()
    for i in range(calls):
        out = feed(invite(i), CALLER)
        b_inv = next(m for m in to(BUYER.port, out) if isinstance(m, SipRequest))
        feed(buyer_answer(b_inv, 100, "Trying"), BUYER)
        feed(buyer_answer(b_inv, 180, "Ringing"), BUYER)
        body = SDP.replace(b"192.0.2.10", b"192.0.2.20")
        out = feed(buyer_answer(b_inv, 200, "OK", body), BUYER)
        ok = next(m for m in to(CALLER.port, out)
                  if isinstance(m, SipResponse) and m.status == 200)
        feed(in_dialog("ACK", ok, 1, f"z9hG4bK-{i:08x}-ack"), CALLER)
        out = feed(in_dialog("BYE", ok, 2, f"z9hG4bK-{i:08x}-bye"), CALLER)
        bye = next(m for m in to(BUYER.port, out) if isinstance(m, SipRequest))
        feed(make_response(bye, 200, "OK").to_bytes(), BUYER)
    if profile is not None:
        profile.disable()
    assert sw.core.live_calls == 0, sw.core.live_calls
    sw.media.close_all()
    journal.close()
    return cpu / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--media", choices=("bypass", "relay"), default="bypass")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    # The log line per call goes where dce run's would, minus the terminal: /dev/null.
    from dce.logs import setup_logging

    setup_logging("info")
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.collect()
    gc.freeze()
    if args.profile:
        prof = cProfile.Profile()
        loop.run_until_complete(one_round(args.calls, args.media, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(35)
        return 0
    runs: list[Any] = [loop.run_until_complete(one_round(args.calls, args.media, None))
                       for _ in range(args.rounds)]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"whole pipeline, no kernel I/O ({args.media}): {args.calls} calls x {args.rounds} "
          f"rounds; machine load {' '.join(load)}")
    print(f"CPU per call: best {min(runs):.0f} us, median {statistics.median(runs):.0f} us "
          f"(rounds: {', '.join(f'{x:.0f}' for x in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
