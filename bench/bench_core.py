#!/usr/bin/env python3
"""CPU per call in the sans-IO switch core alone: parse, transactions, dialogs, the B2BUA.

A whole call (caller INVITE -> 100; B-leg INVITE; buyer 100, 180, 200; 180 and 200 to the
caller; caller ACK -> B-leg ACK; caller BYE -> 200 and B-leg BYE; buyer 200) goes through
``switch.core.SwitchCore`` with no sockets and no event loop: the buyer's and the caller's
messages are built once per call outside the timed region from what the core sent, and only
``receive_datagram`` / ``datagrams_to_send`` / ``next_effect`` and the answers to the
effects (routing with one target at once, bypass media) are timed. The RFC 6026 timers run
too: calls are spread over virtual time at ``--rate`` calls/s, so transactions live and
die as on a real switch.

Prints µs of CPU per call (process time, this process only), over ``--calls`` calls, best
and median of ``--rounds``. Everything in the switch's own Python per call except the
routing decision, the CDR, the media relay and the kernel's send/receive, which
bench_sip.py measures whole.

    .venv/bin/python bench/bench_core.py
    .venv/bin/python bench/bench_core.py --calls 20000 --profile     # cProfile, top 25
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from switch.context import CoreConfig  # noqa: E402
from switch.core import SwitchCore  # noqa: E402
from switch.effects import CallEnded, OpenMedia, RouteCall, Routed  # noqa: E402
from switch.message import SipRequest, SipResponse, make_response, parse_message  # noqa: E402
from switch.outside import AdmitResult  # noqa: E402
from switch.peer import Peer  # noqa: E402

CALLER = Peer("udp", "192.0.2.10", 5080)
BUYER = Peer("udp", "198.51.100.7", 5070)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


class Admit:
    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        return AdmitResult(trunk_id="t1")


class Bypass:
    """The media stub: slotted, so that it weighs next to nothing beside the core
    (bench_memory.py counts bytes per call with it)."""

    __slots__ = ("b_offer", "dtmf_to_buyer")

    def __init__(self, offer: bytes) -> None:
        self.b_offer = offer
        self.dtmf_to_buyer = False

    def new_attempt(self) -> None:
        return None

    def b_answered(self, sdp: bytes) -> bytes:
        return sdp

    def answered(self) -> None:
        return None

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp


def invite(i: int) -> bytes:
    head = (
        f"INVITE sip:18005550100@203.0.113.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5080;branch=z9hG4bK-{i:08x}-0;rport\r\n"
        f'From: "Caller" <sip:+13122600123@192.0.2.10:5080>;tag={i}-uac\r\n'
        f"To: <sip:18005550100@203.0.113.1:5060>\r\n"
        f"Call-ID: bench-{i}@192.0.2.10\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:+13122600123@192.0.2.10:5080;transport=UDP>\r\n"
        f"Max-Forwards: 70\r\nSubject: bench\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def in_dialog(method: str, ok: SipResponse, seq: int, branch: str) -> bytes:
    return (
        f"{method} sip:dce@203.0.113.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5080;branch={branch};rport\r\n"
        f"From: {ok.headers.get('from')}\r\nTo: {ok.headers.get('to')}\r\n"
        f"Call-ID: {ok.call_id}\r\nCSeq: {seq} {method}\r\n"
        f"Contact: <sip:+13122600123@192.0.2.10:5080;transport=UDP>\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def buyer_answer(req: SipRequest, status: int, reason: str, body: bytes = b"") -> bytes:
    resp = make_response(
        req, status, reason, to_tag=None if status == 100 else "buyer-tag",
        headers=[("contact", "<sip:buyer@198.51.100.7:5070;transport=UDP>")]
        + ([("content-type", "application/sdp")] if body else []),
        body=body,
    )
    return resp.to_bytes()


class Clock:
    """Process CPU spent inside the core only."""

    def __init__(self) -> None:
        self.spent = 0.0

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        t0 = time.process_time()
        out = fn(*args)
        self.spent += time.process_time() - t0
        return out


def one_round(calls: int, rate: float, profile: cProfile.Profile | None) -> float:
    core = SwitchCore(CoreConfig(host="203.0.113.1", port=5060), Admit(), random.Random(1))
    clock = Clock()
    now = 0.0
    step = 1.0 / rate

    def feed(data: bytes, peer: Peer) -> list[tuple[bytes, Peer]]:
        def go() -> list[tuple[bytes, Peer]]:
            core.receive_datagram(data, peer, now)
            out = core.datagrams_to_send()
            while (e := core.next_effect()) is not None:
                if isinstance(e, RouteCall):
                    core.routed(e.call_id, Routed(targets=["sip:buyer@198.51.100.7:5070"],
                                                 present_as="+13122600123"), now)
                elif isinstance(e, OpenMedia):
                    core.media_opened(e.call_id, Bypass(e.offer), now)  # type: ignore[arg-type]
                out.extend(core.datagrams_to_send())
            return out

        return clock.run(go)  # type: ignore[no-any-return]

    def timers() -> None:
        def go() -> None:
            while (t := core.get_timer()) is not None and t <= now:
                core.handle_timer(now)
                core.datagrams_to_send()
                while (e := core.next_effect()) is not None:
                    assert not isinstance(e, CallEnded) or e.record.outcome.value
        clock.run(go)

    if profile is not None:
        profile.enable()
    for i in range(calls):
        now += step
        timers()
        out = feed(invite(i), CALLER)
        b_inv = next(parse_message(d) for d, p in out if p.port == BUYER.port)
        assert isinstance(b_inv, SipRequest)
        feed(buyer_answer(b_inv, 100, "Trying"), BUYER)
        feed(buyer_answer(b_inv, 180, "Ringing"), BUYER)
        out = feed(buyer_answer(b_inv, 200, "OK", SDP), BUYER)
        ok = next(m for d, p in out if p.port == CALLER.port
                  if isinstance(m := parse_message(d), SipResponse) and m.status == 200)
        feed(in_dialog("ACK", ok, 1, f"z9hG4bK-{i:08x}-ack"), CALLER)
        out = feed(in_dialog("BYE", ok, 2, f"z9hG4bK-{i:08x}-bye"), CALLER)
        bye = next(m for d, p in out if p.port == BUYER.port
                   if isinstance(m := parse_message(d), SipRequest))
        feed(make_response(bye, 200, "OK").to_bytes(), BUYER)
    if profile is not None:
        profile.disable()
    assert core.live_calls == 0, core.live_calls
    return clock.spent / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rate", type=float, default=1000.0, help="calls per virtual second")
    p.add_argument("--profile", action="store_true", help="cProfile one round, top 25 by tottime")
    args = p.parse_args(argv)
    gc.collect()
    gc.freeze()
    if args.profile:
        prof = cProfile.Profile()
        one_round(args.calls, args.rate, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    per_call = [one_round(args.calls, args.rate, None) for _ in range(args.rounds)]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"switch core, sans-IO: {args.calls} calls x {args.rounds} rounds at "
          f"{args.rate:.0f} calls/virtual s; machine load {' '.join(load)}")
    print(f"CPU per call: best {min(per_call):.0f} us, median {statistics.median(per_call):.0f} "
          f"us (rounds: {', '.join(f'{x:.0f}' for x in per_call)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
