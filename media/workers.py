"""The switch's side of the media workers (DCE_MEDIA_WORKERS): start them, choose one per
call, command it, hear its ticks, restart it when it dies, stop it.

:class:`WorkerPool` stands where :class:`media.transport.RelayManager` stands in a switch
without workers, with the same surface for ``media/anchor.py`` (``open_session``,
``session``, ``close_session``, ``totals``, ``start_watchdog``, ``close_all``,
``wait_closed``); its sessions are :class:`RemoteSession` objects whose ``relay`` is a
:class:`RemoteCallRelay`: the SDP work of :meth:`media.relay.CallRelay.anchor` done here, the
relay state (latching, counters, media timeout) in the worker, told through
``media/worker.py``'s commands. Only ``open_session`` waits for the worker (one round trip);
every other command leaves at once without waiting for an answer, so it reaches the worker
before the SIP message that follows it reaches its peer (see ``media.worker.Channel``).

Counters. A call's final counters come back with the worker's answer to ``Close``:
:meth:`WorkerPool.close_final` gives a future of them, which the CDR waits for. Live calls'
counters (the live-calls API) are those of the last ``Snapshot``, asked for when read and at
most twice a second, so they may lag by that much. /metrics totals come from the workers'
ticks (once a second).

A worker that dies (its socket closes) is logged; its calls are handed to ``on_lost`` (the
switch ends them as media timeouts: their RTP is gone), their CDRs get the counters last heard
of, new calls go to the other workers, and it is started again ``restart_delay`` s later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path

import msgspec

from media.errors import InvalidStateError, MediaError, PortsExhausted
from media.ports import PortAllocator
from media.relay import CallMediaStats, DirectionStats, Leg, RelayConfig, SdpAnchor
from media.sdp import MediaEndpoint
from media.transport import RelayTotals
from media.worker import (
    Answered,
    Channel,
    Close,
    Closed,
    Command,
    Counters,
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
)

logger = logging.getLogger(__name__)

_ROOT = str(Path(__file__).resolve().parents[1])  # the worker imports ``media`` from here
_NO_DIRECTION = DirectionStats(0, 0, 0, 0, 0, 0, 0)
NO_STATS = CallMediaStats(_NO_DIRECTION, _NO_DIRECTION)
#: Share of DCE_RTP_PORTS kept by the signalling process for WebRTC calls (never in workers).
LOCAL_SHARE = 8
_SNAPSHOT_EVERY = 0.5  # s: live counters are read at most this often from the workers
CLOSE_WAIT = 2.0  # s: a call's final counters wait at most this long for its worker

Waiter = Callable[[Reply | None], object]  # None: the worker died before answering


def split_ports(low: int, high: int, workers: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """DCE_RTP_PORTS cut in contiguous, disjoint shares: (the signalling process's, for
    WebRTC: 1/:data:`LOCAL_SHARE` of the pairs, at least one; one per worker, the rest split
    evenly). Each share is a LOW-HIGH for :class:`PortAllocator` (even RTP, odd RTCP ports).

    Raises:
        ValueError: fewer than two pairs per worker plus one for WebRTC.
    """
    first = low + (low & 1)
    pairs = len(range(first, high, 2))
    if workers < 1 or pairs < 2 * workers + 1:
        raise ValueError(
            f"RTP port range {low}-{high} ({pairs} pairs) is too small for {workers} media "
            "workers (two pairs each, one more for WebRTC)"
        )
    local = max(1, pairs // LOCAL_SHARE)
    rest = pairs - local

    def share(start: int, count: int) -> tuple[int, int]:
        return first + 2 * start, first + 2 * (start + count) - 1

    shares = []
    start = local
    for i in range(workers):
        count = rest // workers + (1 if i < rest % workers else 0)
        shares.append(share(start, count))
        start += count
    return share(0, local), shares


def pick(workers: list[_Worker], skip: Collection[_Worker] = ()) -> _Worker | None:
    """The running worker with the fewest live calls (opening ones count), not in ``skip``;
    the lowest index on a tie. None when there is none."""
    best: _Worker | None = None
    for w in workers:
        if w.ready and not w.dead and w not in skip and (best is None or w.load < best.load):
            best = w
    return best


class RemoteCallRelay(SdpAnchor):
    """The signalling half of a call relayed by a worker: the interface of
    :class:`media.relay.CallRelay` that ``media/anchor.py`` uses, SDP done here."""

    __slots__ = ("_send", "_want", "call_id", "last")

    def __init__(
        self,
        call_id: str,
        media_ip: str,
        a_port: int,
        b_port: int,
        send: Callable[[Command], object],
        want: Callable[[], object],
    ) -> None:
        super().__init__(media_ip, a_port, b_port)
        self.call_id = call_id
        self.last = NO_STATS  # the counters last heard of
        self._send = send
        self._want = want

    def set_remote(
        self,
        leg: Leg,
        endpoint: MediaEndpoint | None,
        now: float,
        signal_ip: str | None = None,
    ) -> None:
        # ``now`` is the worker's own clock when it gets this (both are monotonic).
        self._send(SetRemote(self.call_id, leg, endpoint, signal_ip))

    def reset_leg(self, leg: Leg) -> None:
        self._send(ResetLeg(self.call_id, leg))

    def answered(self, now: float) -> None:
        self._send(Answered(self.call_id))

    def stats(self) -> CallMediaStats:
        """The counters of the last snapshot (asks for a fresher one)."""
        self._want()
        return self.last


class RemoteSession:
    """A call's relay in a worker: what :class:`media.transport.RelaySession` gives
    ``media/anchor.py`` (``call_id``, ``relay``, ``ports``, ``close``)."""

    __slots__ = ("call_id", "final", "relay", "worker")

    def __init__(self, call_id: str, relay: RemoteCallRelay, worker: _Worker) -> None:
        self.call_id = call_id
        self.relay = relay
        self.worker = worker
        self.final: asyncio.Future[CallMediaStats] | None = None  # set by close()

    @property
    def ports(self) -> tuple[int, int]:
        return self.relay.a_port, self.relay.b_port

    @property
    def closed(self) -> bool:
        return self.final is not None

    def close(self) -> CallMediaStats:
        """Stop relaying (idempotent). The final counters come in ``final``; this returns
        the last ones heard of."""
        if self.final is None:
            self.final = self.worker.close(self)
        return self.relay.last


class _Worker:
    """One worker process, from its start to its death (a restart is a new object)."""

    def __init__(self, index: int, ports: tuple[int, int], cpu: int | None) -> None:
        self.index = index
        self.ports = ports
        self.cpu = cpu
        self.capacity = len(range(ports[0] + (ports[0] & 1), ports[1], 2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.ready = False
        self.dead = False
        self.started: asyncio.Future[None] | None = None
        self.sessions: dict[str, RemoteSession] = {}
        self.opening = 0
        self.waiting: dict[int, Waiter] = {}
        self.totals: RelayTotals | None = None
        self._seq = 0

    @property
    def load(self) -> int:
        return len(self.sessions) + self.opening

    def send(self, command: Command, waiter: Waiter | None = None) -> bool:
        """Send ``command`` (``waiter`` gets its answer); False when the worker is gone."""
        if self.dead or self.channel is None:
            return False
        if waiter is not None:
            self._seq += 1
            self.waiting[self._seq] = waiter
            command.seq = self._seq  # type: ignore[union-attr]
        return self.channel.send(command)

    def close(self, session: RemoteSession) -> asyncio.Future[CallMediaStats]:
        self.sessions.pop(session.call_id, None)
        final: asyncio.Future[CallMediaStats] = asyncio.get_running_loop().create_future()
        relay = session.relay

        timer: asyncio.TimerHandle | None = None

        def closed(reply: Reply | None) -> None:
            if isinstance(reply, Closed) and reply.stats is not None:
                relay.last = reply.stats
            if not final.done():
                final.set_result(relay.last)
            if timer is not None:
                timer.cancel()

        if not self.send(Close(0, session.call_id), closed):
            closed(None)  # the worker is gone: the counters last heard of
        else:
            # A worker alive but not answering (stopped, swamped) must not hold the CDR back:
            # after CLOSE_WAIT the CDR goes with the counters last heard of.
            timer = final.get_loop().call_later(CLOSE_WAIT, closed, None)
        return final

    def answer(self, seq: int, reply: Reply | None) -> None:
        waiter = self.waiting.pop(seq, None)
        if waiter is not None:
            waiter(reply)


def _cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


class WorkerPool:
    """N media worker processes over disjoint slices of DCE_RTP_PORTS (see module doc)."""

    def __init__(
        self,
        media_ip: str,
        slices: list[tuple[int, int]],
        config: RelayConfig | None = None,
        *,
        pool: int = 1024,
        cpus: list[int] | None = None,
        local: PortAllocator | None = None,
        interval: float = 1.0,
        restart_delay: float = 1.0,
        start_timeout: float = 20.0,
    ) -> None:
        self.media_ip = media_ip
        self.config = config or RelayConfig()
        self.pool_size = pool
        self.interval = interval
        self.restart_delay = restart_delay
        self.start_timeout = start_timeout
        self.local = local  # the signalling process's own ports (WebRTC): in the totals
        # From the last core down: with fewer workers than cores, the first ones are left to
        # signalling (and whatever else runs there).
        cpus = (_cpus() or [])[::-1] if cpus is None else cpus
        self.workers = [
            _Worker(i, s, cpus[i % len(cpus)] if cpus else None) for i, s in enumerate(slices)
        ]
        #: A dead worker's call ids go here (the switch ends those calls).
        self.on_lost: Callable[[str], object] = lambda call_id: None
        self.restarts = 0
        self._sessions: dict[str, RemoteSession] = {}
        self._opened = 0
        self._refused = 0
        self._retired = RelayTotals(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # dead workers' counters
        self._timeout = 0.0
        self._on_timeout: Callable[[str], object] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._snapshot_at = float("-inf")
        self._restarting: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ processes

    async def start(self) -> None:
        """Start every worker; returns once all are ready.

        Raises:
            MediaError: a worker did not start (what it printed is on stderr).
        """
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            for w in self.workers:
                self._kill(w)
            raise

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None and not w.dead]

    async def _spawn(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [
            sys.executable, "-m", "media.worker",
            "--fd", str(child.fileno()),
            "--media-ip", self.media_ip,
            "--ports", f"{w.ports[0]}-{w.ports[1]}",
            "--pool", str(self.pool_size),
            "--interval", str(self.interval),
            "--config", msgspec.json.encode(self.config).decode(),
        ]  # fmt: skip
        if w.cpu is not None:
            cmd += ["--cpu", str(w.cpu)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        try:
            w.proc = subprocess.Popen(
                cmd, pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.started = loop.create_future()
        try:
            _, w.channel = await loop.create_unix_connection(
                lambda: Channel(Reply, lambda m: self._message(w, m), lambda e: self._lost(w)),
                sock=parent,
            )
            if self._timeout > 0:
                w.send(Watch(self._timeout))
            await asyncio.wait_for(asyncio.shield(w.started), self.start_timeout)
        except BaseException:
            self._kill(w)
            raise
        logger.info(
            "media worker %d started: pid %d, ports %d-%d, CPU %s",
            w.index, w.proc.pid, w.ports[0], w.ports[1], w.cpu,
        )  # fmt: skip

    def _kill(self, w: _Worker) -> None:
        w.dead = True
        if w.started is not None and not w.started.done():
            w.started.cancel()  # nobody waits any more
        if w.channel is not None:
            w.channel.close()
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(1.0)

    def _message(self, w: _Worker, message: Reply) -> None:
        match message:
            case Tick(totals, timed_out):
                w.totals = totals
                on_timeout = self._on_timeout
                if on_timeout is not None:
                    for call_id in timed_out:
                        if call_id in w.sessions:
                            self._call(on_timeout, call_id)
            case Opened(seq) | Refused(seq) | Closed(seq) | Counters(seq):
                w.answer(seq, message)
            case Ready():
                w.ready = True
                if w.started is not None and not w.started.done():
                    w.started.set_result(None)

    def _call(self, handler: Callable[[str], object], call_id: str) -> None:
        try:
            handler(call_id)
        except Exception:
            logger.exception("media worker: call handler failed", extra={"call_id": call_id})

    def _lost(self, w: _Worker) -> None:
        """The worker's socket closed: it exited, or is about to."""
        was_ready = w.ready
        w.dead, w.ready, w.channel = True, False, None
        if w.started is not None and not w.started.done():
            w.started.set_exception(MediaError(f"media worker {w.index} exited at start"))
        waiting, w.waiting = w.waiting, {}
        for waiter in waiting.values():
            waiter(None)
        if w.totals is not None:
            _add(self._retired, w.totals)  # counters stay monotonic across a restart
            w.totals = None
        code = self._reap(w)
        if self._closing or not was_ready:
            return
        lost = list(w.sessions)
        logger.error(
            "media worker %d (pid %s) died (exit code %s): %d calls lose their media; "
            "new calls go to the other workers; restarting it in %g s",
            w.index, w.proc.pid if w.proc else None, "not known yet" if code is None else code,
            len(lost), self.restart_delay,
        )  # fmt: skip
        loop = self._loop or asyncio.get_running_loop()
        for call_id in lost:
            loop.call_soon(self._end_lost, call_id)
        task = loop.create_task(self._restart(w))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    def _end_lost(self, call_id: str) -> None:
        if call_id in self._sessions:
            self._call(self.on_lost, call_id)

    def _reap(self, w: _Worker) -> int | None:
        proc = w.proc
        if proc is None:
            return None
        code = proc.poll()
        if code is None and self._loop is not None:
            # Closing its socket is about the last thing it does: reap it a moment later.
            self._loop.call_later(0.5, proc.poll)
        return code

    async def _restart(self, old: _Worker) -> None:
        delay = self.restart_delay
        while not self._closing:
            await asyncio.sleep(delay)
            if self._closing:
                return
            w = _Worker(old.index, old.ports, old.cpu)
            self.workers[old.index] = w
            try:
                await self._spawn(w)
            except Exception as exc:
                logger.error("media worker %d did not restart: %s", w.index, exc)
                delay = min(delay * 2, 30.0)
                continue
            self.restarts += 1
            return

    # ------------------------------------------------------------------ calls

    async def open_session(self, call_id: str) -> RemoteSession:
        """Anchor a new call in the worker with the fewest calls (one round trip; one more
        for each worker that has no ports left or stops meanwhile).

        Raises:
            PortsExhausted: (503) no running worker has a free port pair.
            InvalidStateError: ``call_id`` already has a session (our bug).
        """
        if call_id in self._sessions:
            raise InvalidStateError(f"relay session for {call_id} already open")
        tried: list[_Worker] = []
        while (w := pick(self.workers, tried)) is not None:
            try:
                return await self._open(w, call_id)
            except PortsExhausted:
                tried.append(w)
        self._refused += 1
        if tried:
            raise PortsExhausted(f"no free RTP port pair in the {len(tried)} media workers")
        raise PortsExhausted("no media worker is running")

    async def _open(self, w: _Worker, call_id: str) -> RemoteSession:
        """Open ``call_id`` in ``w`` (PortsExhausted: none left there, or it stopped)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reply | None] = loop.create_future()

        def opened(reply: Reply | None) -> None:
            if not answer.done():
                answer.set_result(reply)
            elif isinstance(reply, Opened):
                w.send(Close(0, call_id))  # the caller stopped waiting: give the ports back

        w.opening += 1
        try:
            w.send(Open(0, call_id), opened)
            reply = await answer
        finally:
            w.opening -= 1
        if reply is None:
            raise PortsExhausted(f"media worker {w.index} stopped")
        if isinstance(reply, Refused):
            if reply.exhausted:
                raise PortsExhausted(reply.reason)
            self._refused += 1
            raise MediaError(reply.reason)
        assert isinstance(reply, Opened)
        if call_id in self._sessions:  # opened twice concurrently: keep the first
            w.send(Close(0, call_id))
            raise InvalidStateError(f"relay session for {call_id} already open")
        relay = RemoteCallRelay(
            call_id, self.media_ip, reply.a_port, reply.b_port, w.send, self._want_counters
        )
        session = RemoteSession(call_id, relay, w)
        if w.dead:  # died while the answer was on its way
            raise PortsExhausted(f"media worker {w.index} stopped")
        self._sessions[call_id] = w.sessions[call_id] = session
        self._opened += 1
        return session

    def session(self, call_id: str) -> RemoteSession | None:
        return self._sessions.get(call_id)

    def close_session(self, call_id: str) -> CallMediaStats | None:
        """Close ``call_id``'s session (idempotent): the counters last heard of (the final
        ones come through :meth:`close_final`)."""
        session = self._sessions.pop(call_id, None)
        if session is None:
            return None
        return session.close()

    def close_final(self, call_id: str) -> asyncio.Future[CallMediaStats] | None:
        """Close ``call_id``'s session; a future of its final counters (for the CDR)."""
        session = self._sessions.pop(call_id, None)
        if session is None:
            return None
        session.close()
        assert session.final is not None
        return session.final

    def _want_counters(self) -> None:
        loop = self._loop
        if loop is None or loop.time() - self._snapshot_at < _SNAPSHOT_EVERY:
            return
        self._snapshot_at = loop.time()
        for w in self.workers:
            w.send(Snapshot(0), lambda reply, w=w: self._counters(w, reply))  # type: ignore[misc]

    def _counters(self, w: _Worker, reply: Reply | None) -> None:
        if not isinstance(reply, Counters):
            return
        for call_id, stats in reply.calls.items():
            session = w.sessions.get(call_id)
            if session is not None:
                session.relay.last = stats

    async def barrier(self) -> None:
        """Until every running worker has carried out the commands sent so far (a stream
        socket keeps order: its answer to a ``Snapshot`` sent now comes after them)."""
        loop = asyncio.get_running_loop()
        answers: list[asyncio.Future[Reply | None]] = []
        for w in self.workers:
            answer: asyncio.Future[Reply | None] = loop.create_future()
            if w.send(Snapshot(0), lambda r, f=answer: f.done() or f.set_result(r)):  # type: ignore[misc]
                answers.append(answer)
        if answers:
            await asyncio.wait(answers)

    def __len__(self) -> int:
        return len(self._sessions)

    def totals(self) -> RelayTotals:
        """As :meth:`RelayManager.totals`, from the workers' last ticks (a second old at most)."""
        t = RelayTotals(
            sessions_active=len(self._sessions),
            sessions_opened=self._opened,
            sessions_refused=self._refused,
            packets=0, bytes=0, malformed=0, foreign=0, unroutable=0, lost=0, send_errors=0,
            ports_free=0,
            ports_capacity=0,
        )  # fmt: skip
        _add(t, self._retired)
        for w in self.workers:
            t.ports_capacity += w.capacity
            if w.totals is not None:
                _add(t, w.totals)
                t.ports_free += w.totals.ports_free
            elif w.ready:
                t.ports_free += w.capacity
        if self.local is not None:
            t.ports_free += self.local.free
            t.ports_capacity += self.local.capacity
        return t

    def start_watchdog(
        self, timeout: float, on_timeout: Callable[[str], object], interval: float = 1.0
    ) -> None:
        """Calls due a media timeout (each worker checks once per tick) go to ``on_timeout``."""
        self._timeout = timeout
        self._on_timeout = on_timeout
        for w in self.workers:
            w.send(Watch(timeout))

    def stop_watchdog(self) -> None:
        self._on_timeout = None
        self._timeout = 0.0
        for w in self.workers:
            w.send(Watch(0.0))

    def close_all(self) -> None:
        """Close every session and stop the workers (shutdown, after the BYEs)."""
        self._closing = True
        self._on_timeout = None
        for task in self._restarting:
            task.cancel()
        for call_id in list(self._sessions):
            self.close_session(call_id)
        for w in self.workers:
            w.send(Shutdown())

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Until every worker has exited (killed after ``timeout`` s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for w in self.workers:
            proc = w.proc
            while proc is not None and proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if proc is not None and proc.poll() is None:
                logger.error("media worker %d did not stop: killed", w.index)
            self._kill(w)


def _add(t: RelayTotals, other: RelayTotals) -> None:
    t.packets += other.packets
    t.bytes += other.bytes
    t.malformed += other.malformed
    t.foreign += other.foreign
    t.unroutable += other.unroutable
    t.lost += other.lost
    t.send_errors += other.send_errors
