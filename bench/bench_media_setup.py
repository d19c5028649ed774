"""CPU per call of a call's media setup and teardown: relay (anchored) against bypass (issue 13).

Not a test. Run from the project root:

    .venv/bin/python bench/bench_media_setup.py                 # 5 rounds of 2,000 calls
    .venv/bin/python bench/bench_media_setup.py --calls 5000 --rounds 7

What one "call" is here, on uvloop in this process: exactly what the application does with a
call's media (``dce/pump.py``): ``MediaManager.open`` driven the way the pump drives it
(``dce.eager.start_eager``: a Task only if it suspends), the buyer's answer through
``b_answered``, ``answered``, then ``MediaManager.close`` and the loop turns that really close
whatever it closes. Calls overlap in batches of ``--batch`` (opened together, closed together)
as they do on a busy switch, paced at ``--rate`` calls/s (issue 13's target, 1,250: the socket
pool reuses a pair only after it idled, so its hit rate depends on the call rate). No packet is
sent: this is the per-call cost outside the data path.

Rows (CPU seconds of this process, ``time.process_time``, per call, best and median of the
rounds; the machine is shared, so compare rows of the same run):

* ``bypass``: DCE_MEDIA_MODE=bypass (SDP passed through, no sockets): the floor;
* ``relay``: the default, anchored media: ports, sockets, SDP rewritten both ways;
* ``sockets``: ``RelayManager.open_session``/``close_session`` alone (no SDP);
* ``sdp``: the SDP work alone: parse and rewrite the offer and the answer (no sockets).

``relay - bypass`` is what anchoring costs per call (issue 13: about 950 us before).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dce.eager import start_eager  # noqa: E402
from media.anchor import MediaManager  # noqa: E402
from media.relay import CallRelay, Leg  # noqa: E402
from media.sdp import LegOrigin, parse  # noqa: E402

OFFER = (
    b"v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
)
ANSWER = (
    b"v=0\r\no=callee 1234 5678 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6002 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    b"a=ptime:20\r\n"
)
# Each row's manager has its own range, as big as DCE_RTP_PORTS' default (the pool's size is
# bounded by the range).
PORTS = [(20000, 29999), (40000, 49999), (50000, 59999), (30000, 30099)]


def _manager(mode: str, row: int) -> MediaManager:
    return MediaManager(mode=mode, media_ip="127.0.0.1", ports=PORTS[row], rng=random.Random(1))


async def _settle() -> None:
    # Sockets closed by close() go on the next loop turns; their cost belongs to the call.
    for _ in range(3):
        await asyncio.sleep(0)


async def _calls(mm: MediaManager, first: int, batch: int) -> None:
    loop = asyncio.get_running_loop()
    sessions: dict[str, Any] = {}
    pending: list[asyncio.Task[None]] = []

    async def open_one(call_id: str) -> None:  # what SipPump._open_media does
        sessions[call_id] = await mm.open(call_id, OFFER, "127.0.0.1")

    for i in range(first, first + batch):
        task = start_eager(loop, open_one(f"c{i}"))
        if task is not None:
            pending.append(task)
    if pending:
        await asyncio.gather(*pending)
    for s in sessions.values():
        s.b_answered(ANSWER)
        s.answered()
    for call_id in sessions:
        mm.close(call_id)
    await _settle()


async def _sockets(mm: MediaManager, first: int, batch: int) -> None:
    ids = [f"s{i}" for i in range(first, first + batch)]
    for call_id in ids:
        await mm.relay.open_session(call_id)
    for call_id in ids:
        mm.relay.close_session(call_id)
    await _settle()


async def _sdp(mm: MediaManager, first: int, batch: int) -> None:
    rng = random.Random(first)
    for _ in range(batch):
        relay = CallRelay("127.0.0.1", 30000, 30002)
        origin = {Leg.A: LegOrigin.create(rng), Leg.B: LegOrigin.create(rng)}
        relay.anchor(Leg.A, parse(OFFER), 0.0, origin[Leg.B], "127.0.0.1")
        relay.anchor(Leg.B, parse(ANSWER), 0.0, origin[Leg.A], "127.0.0.1")


async def _round(
    run: Callable[[MediaManager, int, int], Awaitable[None]],
    mm: MediaManager,
    calls: int,
    batch: int,
    first: int,
    rate: float,
) -> float:
    # Half a second of calls first, not timed: the steady state of a switch taking calls at
    # ``rate``, not a cold start (an idle socket pool closes its pairs after a second).
    warm = max(batch, int(rate / 2) // batch * batch)
    pace = time.perf_counter()
    for start in range(first - warm, first + calls, batch):
        if start == first:
            gc.collect()
            t0 = time.process_time()
            pool = getattr(mm.relay, "pool", None)
            if pool is not None:
                pool.hits = pool.misses = 0
        await run(mm, start, batch)
        # At the real call rate: the socket pool reuses a pair only once it idled a while.
        pace += batch / rate
        await asyncio.sleep(max(0.0, pace - time.perf_counter()))
    return (time.process_time() - t0) / calls * 1e6


async def main_async(args: argparse.Namespace) -> None:
    rows: dict[str, tuple[str, Callable[[MediaManager, int, int], Awaitable[None]]]] = {
        "bypass": ("bypass", _calls),
        "relay": ("relay", _calls),
        "sockets": ("relay", _sockets),
        "sdp": ("relay", _sdp),
    }
    managers = {name: _manager(mode, i) for i, (name, (mode, _)) in enumerate(rows.items())}
    results: dict[str, list[float]] = {name: [] for name in rows}
    # Warm up once each (imports, first binds, pools), then alternate the rows every round so
    # that background load hits them alike.
    for name, (_, run) in rows.items():
        await _round(run, managers[name], args.batch, args.batch, 10**6, args.rate)
    first = 2 * 10**6
    for _ in range(args.rounds):
        for name, (_, run) in rows.items():
            results[name].append(
                await _round(run, managers[name], args.calls, args.batch, first, args.rate)
            )
        first += args.calls + 10**6
    pools = {
        name: pool
        for name, mm in managers.items()
        if (pool := getattr(mm.relay, "pool", None)) is not None
    }
    for mm in managers.values():
        mm.close_all()
    await _settle()
    print(
        f"per call, {args.rounds} rounds of {args.calls} calls (batches of {args.batch}, "
        f"{args.rate:g} calls/s):"
    )
    for name, vals in results.items():
        print(
            f"  {name:8} best {min(vals):7.1f} us  median {statistics.median(vals):7.1f} us  "
            f"({' '.join(f'{v:.0f}' for v in vals)})"
        )
    for name, pool in pools.items():
        print(
            f"  {name:8} socket pool, last round: {pool.hits} pairs reused, "
            f"{pool.misses} bound at once"
        )
    relay, bypass = min(results["relay"]), min(results["bypass"])
    print(f"relay - bypass (best): {relay - bypass:.1f} us per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50, help="calls open at once")
    parser.add_argument("--rate", type=float, default=1250.0, help="calls per second")
    args = parser.parse_args()
    import uvloop

    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before: {' '.join(load)}")
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
