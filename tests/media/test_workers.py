"""The media workers' command channel and the switch's choices (media/worker.py,
media/workers.py), without processes: framing, port shares, which worker takes a call, and the
SDP work the switch keeps. Real worker processes: tests/integration/test_media_workers.py."""

from __future__ import annotations

import random

import msgspec
import pytest

from media.errors import PortsExhausted
from media.ports import PortAllocator
from media.relay import CallRelay, Leg
from media.sdp import LegOrigin, MediaEndpoint, parse
from media.transport import RelayTotals
from media.worker import (
    MAX_FRAME,
    Answered,
    Close,
    Closed,
    Command,
    Counters,
    FrameDecoder,
    Open,
    Opened,
    Ready,
    Refused,
    Reply,
    ResetLeg,
    SetRemote,
    Shutdown,
    Snapshot,
    Tick,
    Watch,
    encode,
)
from media.workers import RemoteCallRelay, WorkerPool, _Worker, pick, split_ports

STATS = CallRelay("192.0.2.1", 20000, 20002).stats()
COMMANDS: list[Command] = [
    Open(1, "call-1@example"),
    SetRemote("c", Leg.A, MediaEndpoint("192.0.2.7", 4000, 4001, "sendrecv"), "192.0.2.8"),
    SetRemote("c", Leg.B, None, None),
    ResetLeg("c", Leg.B),
    Answered("c"),
    Close(7, "c"),
    Snapshot(8),
    Watch(60.0),
    Shutdown(),
]
REPLIES: list[Reply] = [
    Ready(1234, 2500),
    Opened(1, 20000, 20002),
    Refused(2, True, "all 3 RTP port pairs are in use"),
    Closed(7, STATS),
    Closed(9, None),
    Counters(8, {"c": STATS}),
    Tick(RelayTotals(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12), ["timed-out-call"]),
]


def test_every_command_and_reply_survives_the_stream_cut_anywhere() -> None:
    for kind, messages in ((Command, COMMANDS), (Reply, REPLIES)):
        stream = b"".join(encode(m) for m in messages)
        for cut in range(len(stream) + 1):
            decoder = FrameDecoder(kind)
            got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
            assert got == messages


def test_frames_byte_by_byte() -> None:
    decoder = FrameDecoder(Command)
    got = []
    for byte in b"".join(encode(m) for m in COMMANDS):
        got += decoder.feed(bytes([byte]))
    assert got == COMMANDS


def test_a_frame_that_is_not_a_command_is_an_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        FrameDecoder(Command).feed(encode(Opened(1, 2, 3)))  # a reply, not a command
    body = b"\xc1"  # never valid msgpack
    with pytest.raises(msgspec.DecodeError):
        FrameDecoder(Command).feed(len(body).to_bytes(4, "big") + body)


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(Command).feed((MAX_FRAME + 1).to_bytes(4, "big"))


# --------------------------------------------------------------------------- port shares


@pytest.mark.parametrize(
    ("low", "high", "workers"),
    [(20000, 29999, 1), (20000, 29999, 2), (20001, 29998, 3), (61000, 61019, 2), (40000, 59999, 7)],
)
def test_port_shares_are_disjoint_and_cover_the_range(low: int, high: int, workers: int) -> None:
    local, shares = split_ports(low, high, workers)
    assert len(shares) == workers
    every = PortAllocator(low, high)
    seen: list[int] = []
    for lo, hi in [local, *shares]:
        alloc = PortAllocator(lo, hi)
        assert alloc.capacity >= 1
        seen += [alloc.allocate() for _ in range(alloc.capacity)]
        assert low <= lo and hi <= high
    assert sorted(seen) == sorted(every.allocate() for _ in range(every.capacity))
    sizes = [PortAllocator(*s).capacity for s in shares]
    assert max(sizes) - min(sizes) <= 1  # an even split
    assert all(size >= 2 for size in sizes)  # a worker carries at least one call


def test_a_range_too_small_for_the_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        split_ports(61000, 61009, 3)  # 5 pairs: 3 workers need 6, plus one for WebRTC
    split_ports(61000, 61013, 3)  # 7 pairs: enough


# --------------------------------------------------------------------------- choosing a worker


def _workers(loads: list[int], ready: list[bool] | None = None) -> list[_Worker]:
    out = []
    for i, load in enumerate(loads):
        w = _Worker(i, (61000 + 100 * i, 61099 + 100 * i), None)
        w.ready = True if ready is None else ready[i]
        w.opening = load
        out.append(w)
    return out


def test_a_new_call_goes_to_the_worker_with_the_fewest_calls() -> None:
    workers = _workers([3, 1, 2])
    assert pick(workers) is workers[1]
    workers[1].opening = 5
    assert pick(workers) is workers[2]


def test_a_tie_goes_to_the_first_worker() -> None:
    workers = _workers([2, 2, 2])
    assert pick(workers) is workers[0]


def test_dead_and_starting_workers_get_no_call() -> None:
    workers = _workers([5, 0, 1], ready=[True, False, True])
    workers[2].dead = True
    assert pick(workers) is workers[0]
    workers[0].dead = True
    assert pick(workers) is None


async def test_no_running_worker_is_a_503() -> None:
    pool = WorkerPool("127.0.0.1", [(61000, 61099)])  # never started
    with pytest.raises(PortsExhausted) as info:
        await pool.open_session("c")
    assert info.value.status == 503
    assert pool.totals().sessions_refused == 1


# --------------------------------------------------------------------------- the SDP half


OFFER = (
    b"v=0\r\no=alice 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def test_remote_relay_rewrites_sdp_as_the_in_process_relay_does() -> None:
    sent: list[Command] = []
    remote = RemoteCallRelay("c", "198.51.100.1", 30000, 30002, sent.append, lambda: None)
    local = CallRelay("198.51.100.1", 30000, 30002)
    got = remote.anchor(Leg.A, parse(OFFER), 0.0, LegOrigin.create(random.Random(5)), "192.0.2.9")
    want = local.anchor(Leg.A, parse(OFFER), 0.0, LegOrigin.create(random.Random(5)), "192.0.2.9")
    assert got == want
    assert b"c=IN IP4 198.51.100.1" in got and b"m=audio 30002 " in got  # B sees our B port
    # What the worker is told: A's endpoint, with the signalling source.
    assert sent == [
        SetRemote("c", Leg.A, MediaEndpoint("192.0.2.7", 4000, 4001, "sendrecv"), "192.0.2.9")
    ]
    remote.answered(1.0)
    remote.reset_leg(Leg.B)
    assert sent[1:] == [Answered("c"), ResetLeg("c", Leg.B)]
