"""A media worker process (DCE_MEDIA_WORKERS): the RTP relay of a share of the calls, on its
own core, driven by the signalling process over one Unix stream socket.

Run by :class:`media.workers.WorkerPool` as ``python -m media.worker --fd N ...``; ``N`` is its
end of a ``socketpair``. The worker is a uvloop running one
:class:`~media.transport.RelayManager` over its own slice of DCE_RTP_PORTS: RTP arrives at,
and leaves from, the process that owns the ports, so the data path never crosses processes.
The signalling process keeps the SDP work (parse, rewrite) and sends only what the relay
needs to know: the endpoint each leg's SDP announced, the answer, a new B attempt, the end.

Command channel
---------------
Frames are a 4-byte big-endian length and a msgpack body (msgspec): one tagged struct per
frame, :data:`Command` towards the worker, :data:`Reply` back. A stream socket keeps order, so
a ``SetRemote`` sent before a ``Close`` is applied before it. Only three commands are
answered: ``Open`` (the two ports, or why not), ``Close`` (the call's final counters, for the
CDR) and ``Snapshot`` (live calls' counters so far). Every ``interval`` seconds the worker also
pushes a :class:`Tick`: its totals for /metrics and the calls due a media timeout.

The worker exits when the socket closes (the switch is gone) or on ``Shutdown``. It ignores
SIGINT and SIGTERM: a switch being stopped (Ctrl-C, or systemd signalling the whole cgroup)
still relays its calls while it drains them, then says ``Shutdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from media.errors import MediaError, PortsExhausted
from media.ports import PortAllocator
from media.relay import CallMediaStats, Leg, RelayConfig
from media.sdp import MediaEndpoint
from media.transport import RelayManager, RelayTotals, ScanResult

logger = logging.getLogger(__name__)

_LEN = 4  # frame header: body length, big endian
#: A frame longer than this is a bug or garbage: the channel is dropped rather than buffered.
MAX_FRAME = 64 << 20


# ------------------------------------------------------------------ commands (switch -> worker)


class Open(msgspec.Struct, tag="open", array_like=True):
    """Anchor a new call: answered with :class:`Opened` or :class:`Refused`."""

    seq: int
    call_id: str


class SetRemote(msgspec.Struct, tag="remote", array_like=True):
    """``leg``'s SDP announced ``endpoint`` (None: no live audio stream); see CallRelay."""

    call_id: str
    leg: Leg
    endpoint: MediaEndpoint | None
    signal_ip: str | None


class ResetLeg(msgspec.Struct, tag="reset", array_like=True):
    call_id: str
    leg: Leg


class Answered(msgspec.Struct, tag="answered", array_like=True):
    call_id: str


class Close(msgspec.Struct, tag="close", array_like=True):
    """End a call's relay: answered with :class:`Closed` (its final counters)."""

    seq: int
    call_id: str


class Snapshot(msgspec.Struct, tag="snapshot", array_like=True):
    """Every live call's counters so far: answered with :class:`Counters`."""

    seq: int


class Watch(msgspec.Struct, tag="watch", array_like=True):
    """Report calls due a media timeout of ``timeout`` s (0: none) in every :class:`Tick`."""

    timeout: float


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    """Close every call and the socket pool, then exit."""


Command = Open | SetRemote | ResetLeg | Answered | Close | Snapshot | Watch | Shutdown


# ------------------------------------------------------------------ replies (worker -> switch)


class Ready(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    ports_capacity: int


class Opened(msgspec.Struct, tag="opened", array_like=True):
    seq: int
    a_port: int
    b_port: int


class Refused(msgspec.Struct, tag="refused", array_like=True):
    """``Open`` failed: ``exhausted`` is PortsExhausted (503), else another MediaError."""

    seq: int
    exhausted: bool
    reason: str


class Closed(msgspec.Struct, tag="closed", array_like=True):
    seq: int
    stats: CallMediaStats | None  # None: the worker had no such call


class Counters(msgspec.Struct, tag="counters", array_like=True):
    seq: int
    calls: dict[str, CallMediaStats]


class Tick(msgspec.Struct, tag="tick", array_like=True):
    totals: RelayTotals
    timed_out: list[str]


Reply = Ready | Opened | Refused | Closed | Counters | Tick


# ------------------------------------------------------------------ framing (sans-IO)


_encoder = msgspec.msgpack.Encoder()


def encode(message: Command | Reply) -> bytes:
    """One frame: length, then the msgpack body."""
    body = _encoder.encode(message)
    return len(body).to_bytes(_LEN, "big") + body


class FrameDecoder:
    """Bytes from the stream in, whole messages out (frames may arrive split or batched).

    Raises:
        msgspec.DecodeError / msgspec.ValidationError: a frame that is not a message;
        ValueError: a frame longer than :data:`MAX_FRAME`.
    """

    def __init__(self, kind: Any) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind)
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos, size = 0, len(buf)
        while size - pos >= _LEN:
            length = int.from_bytes(buf[pos : pos + _LEN], "big")
            if length > MAX_FRAME:
                raise ValueError(f"media worker frame of {length} bytes")
            end = pos + _LEN + length
            if end > size:
                break
            out.append(self._decoder.decode(buf[pos + _LEN : end]))
            pos = end
        del buf[:pos]
        return out


class Channel(asyncio.Protocol):
    """Frames over a stream socket, both ways: each message received goes to ``on_message``.

    ``batch``: messages sent in one loop turn leave in one ``write`` at the end of the turn
    (the worker's replies). Without it each leaves at once (the switch's commands): a command
    is then in the worker's socket before the SIP message sent after it, so before the RTP
    that message prompts. The kernel reports sockets ready in the order data reached them, so
    the worker reads the command first, and a leg's first packet finds its address known.
    """

    def __init__(
        self,
        kind: Any,
        on_message: Callable[[Any], object],
        on_lost: Callable[[Exception | None], object],
        *,
        batch: bool = False,
    ) -> None:
        self._decoder = FrameDecoder(kind)
        self._on_message = on_message
        self._on_lost = on_lost
        self._batch = batch
        self._out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except (msgspec.DecodeError, ValueError) as exc:
            logger.error("media worker channel: bad frame (%s); closing it", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        for message in messages:
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(exc)

    def send(self, message: Command | Reply) -> bool:
        """Send ``message`` (or queue it, see ``batch``); False when the channel is closed."""
        if self.transport is None or self.transport.is_closing():
            return False
        if not self._batch:
            self.transport.write(encode(message))
            return True
        if not self._out:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._out.append(encode(message))
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()


# ------------------------------------------------------------------ the worker


class Worker:
    """Carries out commands on a :class:`RelayManager`; pushes a :class:`Tick` every interval."""

    def __init__(self, manager: RelayManager, interval: float = 1.0) -> None:
        self.manager = manager
        self.interval = interval
        self.timeout = 0.0
        self.channel: Channel | None = None
        self.done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket) -> None:
        """Until the channel closes or ``Shutdown``."""
        loop = self._loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        _, channel = await loop.create_unix_connection(
            lambda: Channel(Command, self.handle, self._lost, batch=True), sock=sock
        )
        self.channel = channel
        channel.send(Ready(os.getpid(), self.manager.allocator.capacity))
        self._tick = loop.call_later(self.interval, self._on_tick)
        try:
            await self.done
        finally:
            if self._tick is not None:
                self._tick.cancel()
            self.manager.close_all()
            await self.manager.wait_closed()
            channel.close()

    def _lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _reply(self, message: Reply) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def handle(self, message: Command) -> None:
        assert self._loop is not None
        manager = self.manager
        match message:
            case SetRemote(call_id, leg, endpoint, signal_ip):
                session = manager.session(call_id)
                if session is not None:
                    session.relay.set_remote(leg, endpoint, self._loop.time(), signal_ip)
            case Answered(call_id):
                session = manager.session(call_id)
                if session is not None:
                    session.relay.answered(self._loop.time())
            case ResetLeg(call_id, leg):
                session = manager.session(call_id)
                if session is not None:
                    session.relay.reset_leg(leg)
            case Open(seq, call_id):
                task = self._loop.create_task(self._open(seq, call_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case Close(seq, call_id):
                self._reply(Closed(seq, manager.close_session(call_id)))
            case Snapshot(seq):
                # A pass in slices (RelayManager.scan): packets go through between them.
                manager.scan(partial(self._counted, seq), counters=True)
            case Watch(timeout):
                self.timeout = timeout
            case Shutdown():
                self._lost(None)

    async def _open(self, seq: int, call_id: str) -> None:
        try:
            session = await self.manager.open_session(call_id)
        except PortsExhausted as exc:
            self._reply(Refused(seq, True, str(exc)))
        except MediaError as exc:
            self._reply(Refused(seq, False, str(exc)))
        else:
            a, b = session.ports
            self._reply(Opened(seq, a, b))

    def _counted(self, seq: int, result: ScanResult) -> None:
        self._reply(Counters(seq, result.counters or {}))

    def _on_tick(self) -> None:
        # Totals and time-outs read every call: in slices, so packets go through between them
        # (one pass over 800 calls held them up to 15 ms, issue 13); the Tick leaves at its end.
        self._tick = None
        self.manager.scan(self._ticked, timeout=self.timeout if self.timeout > 0 else None)

    def _ticked(self, result: ScanResult) -> None:
        assert self._loop is not None
        self._reply(Tick(result.totals, result.timed_out))
        if self.done is not None and not self.done.done():
            self._tick = self._loop.call_later(self.interval, self._on_tick)


def pin(cpu: int | None) -> None:
    """Run on ``cpu`` only (best effort: not every platform or container allows it)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        logger.warning("media worker: cannot pin to CPU %d: %s", cpu, exc)


def settle_gc() -> None:
    """The collector for a process that only relays, once started.

    A collection stops the loop, and every packet waits behind it: a full one over the
    modules a worker imports took 12 ms on the bench machine. Frozen, those are never walked
    again, so a full collection walks only the live calls' relay state. A call's objects are
    freed by reference counting when it ends (``CallRelay.release`` cuts the one cycle), so in
    steady state the young generation hardly grows and collections are rare; the higher
    thresholds keep the full ones rarer still (each object is walked once per generation, so
    total collector CPU barely changes).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(1_000, 10, 100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DCE media worker (started by the switch)")
    parser.add_argument("--fd", type=int, required=True, help="our end of the socketpair")
    parser.add_argument("--media-ip", required=True)
    parser.add_argument("--ports", required=True, help="LOW-HIGH: this worker's port slice")
    parser.add_argument("--pool", type=int, default=1024, help="socket pool size (pairs)")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--interval", type=float, default=1.0, help="tick interval (s)")
    parser.add_argument("--config", default="{}", help="RelayConfig as JSON")
    parser.add_argument("--seed", type=int, default=None, help="port order (random if unset)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format=f"media worker {os.getpid()}: %(levelname)s %(name)s %(message)s",
    )
    # The switch stops us (Shutdown) once it has drained its calls; see the module doc.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pin(args.cpu)
    low, _, high = args.ports.partition("-")
    rng = random.Random(args.seed) if args.seed is not None else random.Random()
    config = msgspec.json.decode(args.config.encode(), type=RelayConfig)
    sock = socket.socket(fileno=args.fd)

    async def run() -> None:
        manager = RelayManager(
            args.media_ip, PortAllocator(int(low), int(high), rng=rng), config, pool=args.pool
        )
        settle_gc()
        await Worker(manager, args.interval).serve(sock)

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
