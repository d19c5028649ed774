"""The asyncio glue around the sans-IO switch core (aioquic's ``QuicConnectionProtocol``).

Transports call :meth:`SipPump.feed` with each message and ``now=loop.time()``;
:meth:`SipPump.transmit` is the one place that moves the core's output to sockets, carries
out its effects, and re-arms the core's single timer. Effects that must wait (routing with
RTB or Redis caps, opening WebRTC media) run as tasks; most never wait and run inline
(:func:`dce.eager.start_eager`). Their results go back into the core as method calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

from dce.admit import TrunkAdmitter
from dce.aggregates import LiveStats
from dce.bridge import CallBridge
from dce.eager import start_eager
from dce.journal import Confirmed, End, Journal, Start, safe_start, safe_up
from dce.logs import CallLines
from dce.metrics import CallMetrics
from media.anchor import MediaManager
from media.errors import MediaError
from store.cdr import Cdr
from store.cdrtext import clean_cdr
from switch.calllog import CallLog
from switch.core import SwitchCore
from switch.effects import (
    CallAnswered,
    CallConfirmed,
    CallEnded,
    OpenMedia,
    ProbeAnswered,
    RouteCall,
    SendDtmf,
)
from switch.peer import Peer
from switch.record import CallRecord, Outcome
from switch.transport import TcpHub, UdpTransport
from switch.websocket import WsHub

logger = logging.getLogger(__name__)

TIMER_GRID = 100  # core timer resolution: 1/100 s


class ProbeSink(Protocol):
    """Who takes the answers to OPTIONS probes (dce/endpoint_health.py ``Prober``)."""

    def answered(self, uri: str, status: int | None, at: float) -> None: ...


class SipPump:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        core: SwitchCore,
        media: MediaManager,
        submit_cdr: Callable[[Cdr], None],  # takes the output of clean_cdr (see _ended)
    ) -> None:
        self.loop = loop
        self.core = core
        self.media = media
        self.submit_cdr = submit_cdr
        self.bridge: CallBridge | None = None  # set once the database and config are loaded
        # Drops a blocked source's INVITEs unparsed and counts each trunk's live calls.
        self.admitter: TrunkAdmitter | None = None
        self.journal: Journal | None = None  # crash recovery (dce/journal.py)
        self.stats: LiveStats | None = None  # the dashboard's last hour (dce/aggregates.py)
        # Buyer endpoint health (dce/endpoint_health.py Prober): takes ProbeAnswered.
        self.prober: ProbeSink | None = None
        self.udp: UdpTransport | None = None
        self.tcp: TcpHub | None = None
        self.ws: WsHub | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # per-call work that had to wait
        # Routing starts eagerly unless it uses Redis caps: redis-py's connection pool enters
        # asyncio.timeout(), which needs a running Task, before its first await.
        self.route_eagerly = True
        self.rx_bytes = 0
        # Each ended call: counted for /metrics and logged in one line (docs/operations.md).
        self.call_metrics = CallMetrics()
        self.call_lines = CallLines()

    # ------------------------------------------------------------------ inputs

    def feed(self, data: bytes, peer: Peer) -> None:
        now = self.loop.time()
        admitter = self.admitter
        if admitter is not None:
            if admitter.drops(data, peer, now):
                return
            # An unknown source's INVITE: answered without parsing it or keeping a
            # transaction (switch/stateless.py).
            refusal = admitter.refusal(data, peer, now)
            if refusal is not None:
                status, response = refusal
                self.core.stats["calls_forbidden" if status == 403 else "calls_challenged"] += 1
                self.send(response, peer)
                return
        self.core.receive_datagram(data, peer, now)

    def connection_closed(self, peer: Peer) -> None:
        """A browser's socket closed (or it vanished): end its calls."""
        self.core.connection_closed(peer, self.loop.time())

    def media_timeout(self, call_id: str) -> None:
        self.core.end_call(call_id, Outcome.MEDIA_TIMEOUT, self.loop.time())
        self.transmit()

    # ----------------------------------------------------------------- outputs

    def transmit(self) -> None:
        """Send what the core produced, carry out its effects, re-arm its one timer."""
        core = self.core
        for data, peer in core.datagrams_to_send():
            self.send(data, peer)
        journal = self.journal
        while (effect := core.next_effect()) is not None:
            match effect:
                case RouteCall():
                    if self.admitter is not None:
                        self.admitter.call_started(effect.call_id, effect.trunk_id)
                    if self.stats is not None:
                        self.stats.routed(effect.call_id, time.time())
                    if journal is not None:
                        journal.append(
                            safe_start(Start(
                                call_id=effect.call_id,
                                trunk_id=effect.trunk_id,
                                source=effect.source,
                                caller=effect.caller,
                                called=effect.called,
                                received_at=self.wall(effect.at),
                            ))
                        )
                    # Most decisions never wait (no RTB, in-process caps): no Task for those.
                    self._start(self._route(effect), eager=self.route_eagerly)
                case OpenMedia():
                    self._start(self._open_media(effect))
                case CallEnded():
                    # Also for calls refused at once (over a limit): never started, not counted.
                    if self.admitter is not None:
                        self.admitter.call_ended(effect.record.call_id)
                    self._ended(effect)
                case CallAnswered():
                    if self.bridge is not None:
                        up = self.bridge.answered(effect, self.wall)
                        if up is not None and journal is not None:
                            journal.append(safe_up(up))
                        if up is not None and self.stats is not None:
                            self.stats.connected(effect.call_id, up.cdr.buyer_id,
                                                 up.cdr.campaign_id)  # fmt: skip
                case CallConfirmed():
                    if journal is not None:
                        journal.append(Confirmed(call_id=effect.call_id))
                case SendDtmf():
                    self.media.send_dtmf(effect.call_id, effect.digit, effect.duration_ms)
                case ProbeAnswered():
                    if self.prober is not None:
                        self.prober.answered(effect.uri, effect.status, effect.at)
        if self.admitter is not None:
            self.admitter.settled()  # every INVITE fed so far is now a live call or refused
        if journal is not None:
            # Before the next input is read: a kill -9 loses no record written here.
            journal.flush()
        when = core.get_timer()
        if when is None:
            return
        # SIP timers need no sub-10 ms precision: rounding deadlines up to a 10 ms grid lets
        # the many transactions of a busy switch share one wake-up. An armed timer that is
        # due no later than needed is kept (an early wake-up is cheaper than cancelling and
        # re-creating a handle on every message); only an earlier deadline re-arms it.
        when = math.ceil(when * TIMER_GRID) / TIMER_GRID
        if self._timer_at is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def send(self, data: bytes, peer: Peer) -> None:
        """One message to ``peer`` on its transport."""
        transport = peer.transport
        if transport == "udp":
            assert self.udp is not None
            self.udp.send(data, peer.host, peer.port)
        elif transport == "tcp" and self.tcp is not None:
            self.tcp.send(data, peer)
        elif transport in ("ws", "wss") and self.ws is not None:
            self.ws.send(data, peer)
        else:
            logger.warning("no transport for peer", extra={"peer": str(peer)})

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self.loop.time())
        self.transmit()

    def _start(self, coro: Coroutine[Any, Any, None], eager: bool = True) -> None:
        task = start_eager(self.loop, coro) if eager else self.loop.create_task(coro)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def wall(self, mono: float) -> datetime:
        """Wall-clock time of a monotonic instant of the core (CDR timestamps)."""
        # One fromtimestamp: a third cheaper than now() minus a timedelta, same instant.
        return datetime.fromtimestamp(time.time() - (self.loop.time() - mono), UTC)

    # ----------------------------------------------------------------- effects

    async def _route(self, effect: RouteCall) -> None:
        bridge = self.bridge
        assert bridge is not None
        try:
            result = await bridge.route(effect, self.wall(effect.at))
        except Exception:
            CallLog(logger, effect.call_id).exception("routing failed")
            result = bridge.failed(effect.call_id, 500, "routing_error")
        if not self.core.routed(effect.call_id, result, self.loop.time()):
            bridge.abandon(effect.call_id)  # the caller gave up while we were routing
        self.transmit()

    async def _open_media(self, effect: OpenMedia) -> None:
        try:
            session = await self.media.open(
                effect.call_id, effect.offer, effect.source_ip, webrtc=effect.webrtc
            )
        except MediaError as exc:
            # 488 for an offer we cannot anchor, 503 when no RTP ports are free.
            rule = "sdp" if exc.status == 488 else "no_media_ports"
            self.core.media_failed(effect.call_id, exc.status, rule, self.loop.time())
        except Exception:
            CallLog(logger, effect.call_id).exception("opening media failed")
            self.core.media_failed(effect.call_id, 503, "media_error", self.loop.time())
        else:
            if not self.core.media_opened(effect.call_id, session, self.loop.time()):
                self.media.close(effect.call_id)  # the caller gave up meanwhile
        self.transmit()

    def _ended(self, effect: CallEnded) -> None:
        record = effect.record
        media = self.media.close(record.call_id)
        if not isinstance(media, dict):
            # Relayed by a media worker (DCE_MEDIA_WORKERS): the CDR waits for the final
            # counters it sends back (one round trip).
            self._start(self._ended_later(record, media))
            return
        self._write_cdr(record, media)

    async def _ended_later(self, record: CallRecord, media: Awaitable[dict[str, Any]]) -> None:
        self._write_cdr(record, await media)
        if self.journal is not None:
            self.journal.flush()  # as transmit() does after writing an End

    def _write_cdr(self, record: CallRecord, media: dict[str, Any]) -> None:
        if self.bridge is None:  # calls are admitted only once the bridge is set
            CallLog(logger, record.call_id).error("call ended before routing was set up")
            return
        # Cleaned once (store/cdrtext.py) for both the journal and the writer.
        cdr = clean_cdr(self.bridge.ended(record, self.wall, media))
        if self.journal is not None:
            self.journal.append(End(cdr=cdr))
        self.submit_cdr(cdr)
        if self.stats is not None:
            self.stats.ended(cdr)
        self.call_metrics.ended(record, cdr)
        self.call_lines.ended(record, cdr)

    async def wait_tasks(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
